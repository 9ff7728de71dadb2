"""KerasHubImageEncoder: a tiny random keras-hub ViT / DINOv2 as SigLIP's (locked) image tower."""

import keras
import keras_hub
import numpy as np
import pytest
from conftest import TINY, random_pairs

from keras_siglip import KerasHubImageEncoder, SigLIP, TextEncoder
from keras_siglip.models.siglip.keras_hub_image_encoder import IMAGENET_MEAN, IMAGENET_STD

SIZE = TINY["image_size"]  # 16x16 images, 4x4 patches: 16 patch tokens


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def tiny_vit(hidden_dim=32, use_class_token=True):
    return keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=4, num_layers=1, num_heads=2,
        hidden_dim=hidden_dim, mlp_dim=2 * hidden_dim, use_class_token=use_class_token,
    )


def images(batch=3, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype("float32")


def test_each_pooling_equals_a_manual_computation_from_the_backbone_tokens():
    backbone = tiny_vit()
    x = images()
    scale, offset = [2.0, 1.0, 0.5], [0.1, -0.2, 0.3]
    tokens = to_numpy(backbone(x * np.array(scale, "float32") + np.array(offset, "float32")))
    assert tokens.shape == (3, 1 + 16, 32)
    first = KerasHubImageEncoder(backbone, pooling="first", input_scale=scale, input_offset=offset)
    gap = KerasHubImageEncoder(backbone, pooling="gap", input_scale=scale, input_offset=offset, output_dim=24)
    attention = KerasHubImageEncoder(backbone, pooling="map", input_scale=scale, input_offset=offset)
    np.testing.assert_allclose(to_numpy(first(x)), tokens[:, 0], rtol=1e-5, atol=1e-6)
    head = gap.head
    expected = tokens[:, 1:].mean(axis=1) @ to_numpy(head.kernel) + to_numpy(head.bias)
    gap_output, map_output = to_numpy(gap(x)), to_numpy(attention(x))
    assert gap_output.shape == (3, 24) and gap.embedding_dim == 24
    np.testing.assert_allclose(gap_output, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        map_output, to_numpy(attention.map_pooling(tokens[:, 1:])), rtol=1e-5, atol=1e-5
    )
    assert map_output.shape == (3, 32) and attention.image_size == (SIZE, SIZE)
    # The MAP head is new and trainable; the default ViT normalisation is the identity on [-1, 1].
    assert {v.path.split("/")[-1] for v in attention.map_pooling.trainable_variables} >= {"probe"}
    default = KerasHubImageEncoder(backbone)
    np.testing.assert_allclose(to_numpy(default(x)), to_numpy(backbone(x))[:, 0], rtol=1e-5, atol=1e-6)


def test_dinov2_gets_imagenet_normalisation_and_gap_skips_class_and_register_tokens():
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=4, num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
        image_shape=(SIZE, SIZE, 3), position_embedding_shape=(SIZE, SIZE, 3), num_register_tokens=2,
    )
    encoder = KerasHubImageEncoder(backbone, pooling="gap")
    assert encoder.num_prefix_tokens == 3
    x = images()
    pixels01 = (x + 1) / 2
    normalised = ((pixels01 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype("float32")
    tokens = to_numpy(backbone({"images": normalised}))
    np.testing.assert_allclose(to_numpy(encoder(x)), tokens[:, 3:].mean(axis=1), rtol=1e-4, atol=1e-5)


def test_locked_siglip_trains_the_text_tower_and_keeps_the_backbone_bit_identical():
    image_encoder = KerasHubImageEncoder(tiny_vit(), pooling="gap")
    text_encoder = TextEncoder.from_variant(
        "tiny", vocabulary_size=TINY["vocabulary_size"], sequence_length=TINY["sequence_length"]
    )
    model = SigLIP(image_encoder, text_encoder, lock_image_tower=True)
    model.compile(learning_rate=1e-2)
    backbone_before = [to_numpy(v).copy() for v in image_encoder.backbone.weights]
    text_before = [to_numpy(v).copy() for v in text_encoder.weights]
    assert not image_encoder.trainable_variables
    model.fit(random_pairs(16), batch_size=8, epochs=1, verbose=0)
    for variable, before in zip(image_encoder.backbone.weights, backbone_before):
        np.testing.assert_array_equal(to_numpy(variable), before, err_msg=variable.path)
    for variable, before in zip(text_encoder.weights, text_before):
        assert not np.array_equal(to_numpy(variable), before), f"{variable.path} did not train"


def test_freeze_backbone_trains_only_the_new_head():
    encoder = KerasHubImageEncoder(tiny_vit(), pooling="map", output_dim=16, freeze_backbone=True)
    trainable = {v.path for v in encoder.trainable_variables}
    assert trainable and all("map_pooling" in p or "/head/" in p for p in trainable), trainable
    assert not encoder.backbone.trainable_variables


def test_siglip_with_a_keras_hub_tower_saves_and_loads_with_identical_outputs(tmp_path):
    image_encoder = KerasHubImageEncoder(tiny_vit(hidden_dim=16), pooling="map", output_dim=32)
    text_encoder = TextEncoder.from_variant(
        "tiny", vocabulary_size=TINY["vocabulary_size"], sequence_length=TINY["sequence_length"]
    )
    model = SigLIP(image_encoder, text_encoder, lock_image_tower=True)
    data = random_pairs(4)
    path = str(tmp_path / "keras_hub_lit.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.image_encoder, KerasHubImageEncoder)
    assert loaded.lock_image_tower and not loaded.image_encoder.trainable_variables
    ours, theirs = model.predict(data, verbose=0), loaded.predict(data, verbose=0)
    for key in ours:
        np.testing.assert_array_equal(to_numpy(theirs[key]), to_numpy(ours[key]), err_msg=key)


def test_a_preset_handle_loads_the_backbone(tmp_path):
    backbone = tiny_vit()
    backbone.save_to_preset(str(tmp_path / "tiny_vit"))
    encoder = KerasHubImageEncoder(str(tmp_path / "tiny_vit"), pooling="first")
    x = images()
    np.testing.assert_allclose(to_numpy(encoder(x)), to_numpy(backbone(x))[:, 0], rtol=1e-5, atol=1e-6)


def test_bad_inputs_and_backbones_raise_clear_errors():
    encoder = KerasHubImageEncoder(tiny_vit())
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 16, 16, 3\); got \(2, 8, 8, 3\)"):
        encoder(np.zeros((2, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="got rank 3"):
        encoder(np.zeros((16, 16, 3), "float32"))
    with pytest.raises(ValueError, match="expects float images"):
        encoder(np.zeros((2, 16, 16, 3), "uint8"))
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=8,
    )
    with pytest.raises(ValueError, match="BertBackbone is not a vision backbone"):
        KerasHubImageEncoder(bert)
    with pytest.raises(ValueError, match="needs a keras_hub.models.Backbone or a preset handle; got Dense"):
        KerasHubImageEncoder(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="pooling='first' needs a class token"):
        KerasHubImageEncoder(tiny_vit(use_class_token=False), pooling="first")
    with pytest.raises(ValueError, match="pooling must be one of"):
        KerasHubImageEncoder(tiny_vit(), pooling="cls")
    with pytest.raises(ValueError, match="both input_scale and input_offset"):
        KerasHubImageEncoder(tiny_vit(), input_scale=1.0)
