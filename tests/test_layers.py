"""The building blocks: shapes, initialisation, numerics against NumPy, config round trips."""

import math

import keras
import numpy as np
import pytest

from keras_siglip import ImageEncoder, TextEncoder
from keras_siglip.models.siglip.layers import (
    EncoderBlock,
    MAPPooling,
    MlpBlock,
    MultiHeadAttention,
    PatchEmbedding,
    sincos_2d_position_embedding,
)


def numpy_attention(query_input, kv_input, layer, num_heads):
    def dense(x, dense_layer):
        return x @ keras.ops.convert_to_numpy(dense_layer.kernel) + keras.ops.convert_to_numpy(dense_layer.bias)

    q, k, v = dense(query_input, layer.query), dense(kv_input, layer.key), dense(kv_input, layer.value)
    batch, length, width = q.shape
    head_dim = width // num_heads
    split = lambda x: x.reshape(x.shape[0], x.shape[1], num_heads, head_dim).transpose(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, width)
    return dense(out, layer.output_projection)


def test_attention_matches_numpy_reference_for_self_and_cross_attention():
    rng = np.random.default_rng(0)
    layer = MultiHeadAttention(num_heads=4)
    query, tokens = rng.normal(size=(2, 1, 16)).astype("float32"), rng.normal(size=(2, 7, 16)).astype("float32")
    cross = keras.ops.convert_to_numpy(layer(query, tokens))
    np.testing.assert_allclose(cross, numpy_attention(query, tokens, layer, 4), atol=1e-5)
    self_attention = keras.ops.convert_to_numpy(layer(tokens))
    np.testing.assert_allclose(self_attention, numpy_attention(tokens, tokens, layer, 4), atol=1e-5)


def test_attention_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        MultiHeadAttention(num_heads=3)(np.zeros((1, 2, 8), "float32"))


def test_mlp_uses_tanh_gelu():
    x = np.random.default_rng(1).normal(size=(3, 8)).astype("float32")
    mlp = MlpBlock(mlp_dim=16)
    out = keras.ops.convert_to_numpy(mlp(x))
    hidden = x @ keras.ops.convert_to_numpy(mlp.hidden.kernel) + keras.ops.convert_to_numpy(mlp.hidden.bias)
    gelu = 0.5 * hidden * (1 + np.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden**3)))
    expected = gelu @ keras.ops.convert_to_numpy(mlp.output_projection.kernel) + keras.ops.convert_to_numpy(
        mlp.output_projection.bias
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_encoder_block_is_pre_layernorm_with_residuals():
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype("float32")
    block = EncoderBlock(num_heads=2, mlp_dim=16)
    out = keras.ops.convert_to_numpy(block(x))
    y = x + keras.ops.convert_to_numpy(block.attention(block.attention_norm(x)))
    y = y + keras.ops.convert_to_numpy(block.mlp(block.mlp_norm(y)))
    np.testing.assert_allclose(out, y, atol=1e-5)
    assert block.attention_norm.epsilon == 1e-6 and block.mlp_norm.epsilon == 1e-6


def test_one_token_outputs_of_the_last_block_equal_the_full_blocks_and_pool_the_text_tower():
    x = np.random.default_rng(3).normal(size=(2, 5, 8)).astype("float32")
    block = EncoderBlock(num_heads=2, mlp_dim=16)
    full = keras.ops.convert_to_numpy(block(x))
    for position in (-1, 0, 2):
        one_block = EncoderBlock(num_heads=2, mlp_dim=16, output_position=position)
        one_block.build(x.shape)
        one_block.set_weights(block.get_weights())
        one = keras.ops.convert_to_numpy(one_block(x))
        assert one.shape == (2, 1, 8)
        np.testing.assert_allclose(one[:, 0], full[:, position], atol=1e-5)
    token_ids = np.random.default_rng(4).integers(0, 10, (3, 6)).astype("int32")
    for pooling, position in (("last", -1), ("first", 0)):
        encoder = TextEncoder.from_variant("tiny", vocabulary_size=10, sequence_length=6, pooling=pooling)
        assert encoder.blocks[-1].output_position == position and encoder.blocks[0].output_position is None
        tokens = encoder.token_embedding(token_ids) + encoder.position_embedding[:, :6]
        for each in encoder.blocks[:-1]:
            tokens = each(tokens)
        full_block = EncoderBlock(num_heads=2, mlp_dim=64)
        full_block.build(tokens.shape)
        full_block.set_weights(encoder.blocks[-1].get_weights())
        tokens = full_block(tokens)
        expected = encoder.head(encoder.encoder_norm(tokens)[:, position])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(encoder(token_ids)),
                                   keras.ops.convert_to_numpy(expected), atol=1e-5)
    with pytest.raises(ValueError, match="depth"):
        TextEncoder(vocabulary_size=10, sequence_length=6, width=8, depth=0, num_heads=2, mlp_dim=8)


def test_patch_embedding_learned_position_init_scale():
    layer = PatchEmbedding(patch_size=4, width=256)
    out = layer(np.zeros((2, 64, 64, 3), "float32"))
    assert tuple(out.shape) == (2, 256, 256)
    std = float(np.std(keras.ops.convert_to_numpy(layer.position_embedding)))
    assert abs(std - 1 / math.sqrt(256)) < 0.1 / math.sqrt(256)


def test_patch_embedding_matches_patch_matmul():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(1, 8, 8, 3)).astype("float32")
    layer = PatchEmbedding(patch_size=4, width=6)
    out = keras.ops.convert_to_numpy(layer(images))
    kernel = keras.ops.convert_to_numpy(layer.patch_projection.kernel)  # (p, p, 3, D)
    patches = images.reshape(1, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 4, 48)
    expected = patches @ kernel.reshape(48, 6) + keras.ops.convert_to_numpy(layer.patch_projection.bias)
    expected += keras.ops.convert_to_numpy(layer.position_embedding)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_sincos_position_embedding_is_fixed_and_matches_big_vision_formula():
    layer = PatchEmbedding(patch_size=4, width=8, position_embedding="sincos2d")
    layer(np.zeros((1, 8, 8, 3), "float32"))
    assert not layer.trainable_weights[2:]  # only the conv kernel and bias train
    embedding = sincos_2d_position_embedding(2, 2, 8)
    omega = 1.0 / 10_000.0 ** (np.arange(2) / 1)
    y, x = np.mgrid[:2, :2]
    row = 3  # position (y=1, x=1)
    expected = np.concatenate([np.sin(omega), np.cos(omega), np.sin(omega), np.cos(omega)])
    np.testing.assert_allclose(embedding[0, row], expected, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_position_embedding(2, 2, 6)


def test_map_pooling_returns_one_vector_per_example():
    layer = MAPPooling(num_heads=2, mlp_dim=16)
    tokens = np.random.default_rng(4).normal(size=(3, 5, 8)).astype("float32")
    out = keras.ops.convert_to_numpy(layer(tokens))
    assert out.shape == (3, 8)
    probe = np.broadcast_to(keras.ops.convert_to_numpy(layer.probe), (3, 1, 8))
    x = numpy_attention(probe, tokens, layer.attention, 2)
    x = x + keras.ops.convert_to_numpy(layer.mlp(layer.layer_norm(x)))
    np.testing.assert_allclose(out, x[:, 0], atol=1e-5)


@pytest.mark.parametrize(
    "layer, inputs",
    [
        (MultiHeadAttention(num_heads=2), (2, 3, 8)),
        (MlpBlock(mlp_dim=16), (2, 3, 8)),
        (EncoderBlock(num_heads=2, mlp_dim=16), (2, 3, 8)),
        (EncoderBlock(num_heads=2, mlp_dim=16, output_position=-1), (2, 3, 8)),
        (MAPPooling(num_heads=2, mlp_dim=16), (2, 3, 8)),
        (PatchEmbedding(patch_size=4, width=8, position_embedding="sincos2d"), (2, 8, 8, 3)),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, tuple) else "",
)
def test_layer_config_round_trip(layer, inputs):
    x = np.random.default_rng(5).normal(size=inputs).astype("float32")
    expected = keras.ops.convert_to_numpy(layer(x))
    clone = type(layer).from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), expected, atol=1e-6)


def test_towers_work_alone_and_round_trip_their_config():
    image_encoder = ImageEncoder.from_variant("tiny", image_size=(16, 24), patch_size=8, output_dim=5, pooling="gap")
    images = np.zeros((2, 16, 24, 3), "float32")
    assert tuple(image_encoder(images).shape) == (2, 5)
    text_encoder = TextEncoder.from_variant("tiny", vocabulary_size=10, sequence_length=6, output_dim=None)
    assert text_encoder.head is None
    assert tuple(text_encoder(np.ones((3, 6), "int32")).shape) == (3, 32)
    assert tuple(text_encoder(np.ones((3, 4), "int32")).shape) == (3, 32)  # shorter texts are fine
    for encoder in (image_encoder, text_encoder):
        clone = type(encoder).from_config(encoder.get_config())
        assert clone.get_config() == encoder.get_config()
        assert [w.shape for w in clone.weights] == [w.shape for w in encoder.weights]


def test_named_variants_have_the_reference_sizes():
    from keras_siglip.models.siglip.towers import variant_config

    assert variant_config("B") == dict(width=768, depth=12, mlp_dim=3072, num_heads=12)
    assert variant_config("L") == dict(width=1024, depth=24, mlp_dim=4096, num_heads=16)
    assert variant_config("So400m") == dict(width=1152, depth=27, mlp_dim=4304, num_heads=16)
    with pytest.raises(ValueError, match="Unknown variant 'XL'"):
        variant_config("XL")


def test_weight_paths_say_where_weights_live():
    encoder = ImageEncoder.from_variant("tiny", image_size=16, patch_size=4)
    paths = {w.path for w in encoder.weights}
    assert "image_encoder/block_1/attention/query/kernel" in paths
    assert "image_encoder/map_pooling/probe" in paths
    assert "image_encoder/patch_embedding/patch_projection/kernel" in paths
