"""The preset registry, this library's preset format, keras-hub presets and SigLiT presets."""

import io
import json
import re

import keras
import numpy as np
import pytest

import keras_siglip
from keras_siglip import SigLIP
from keras_siglip.presets import PRESETS, build_model, count_parameters, load_preset, siglit

# SigLIP 1 (SigLIP 2 presets: tests/test_siglip2_fixres.py, tests/test_naflex.py; keras-hub miscounts two of them).
RELEASED = [name for name, entry in PRESETS.items() if entry["sources"] and not name.startswith("siglip2_")]


def perturb(model, seed=0):
    """Moves every float weight away from its initial value, so a wrong mapping cannot hide."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "float" in str(variable.dtype) and "position_ids" not in variable.path:
            value = keras.ops.convert_to_numpy(variable)
            variable.assign(value + rng.normal(0, 0.2, value.shape).astype(value.dtype))
    return model


def outputs(model, seed=1):
    rng = np.random.default_rng(seed)
    height, width = model.image_encoder.image_size
    images = rng.uniform(-1, 1, (3, height, width, 3)).astype("float32")
    token_ids = rng.integers(0, model.text_encoder.vocabulary_size, (3, model.text_encoder.sequence_length))
    out = model({"images": images, "token_ids": token_ids.astype("int32")})
    logits = model.similarity(out["image_embeddings"], out["text_embeddings"])
    return [keras.ops.convert_to_numpy(x) for x in (out["image_embeddings"], out["text_embeddings"], logits)]


# -- registry ----------------------------------------------------------------------------------------


def test_parameter_counts_match_the_released_models():
    counts = keras_siglip.list_presets(print_table=False)
    approximately = {"siglip_base_patch16_224": 203e6, "siglip_large_patch16_256": 652e6,
                     "siglip_so400m_patch14_384": 878e6, "siglip_base_patch16_256_multilingual": 371e6}
    for name, expected in approximately.items():
        assert abs(counts[name]["parameters"] - expected) < 0.5e6, name
    # keras-hub's metadata counts the same weights plus its stored position ids.
    from keras_hub.models import SigLIPBackbone

    backbone_presets = SigLIPBackbone.presets
    for name in RELEASED:
        if name in backbone_presets:
            config = PRESETS[name]["config"]
            position_ids = (config["image"]["image_size"] // config["image"]["patch_size"]) ** 2
            position_ids += config["text"]["sequence_length"]
            assert counts[name]["parameters"] == backbone_presets[name]["metadata"]["params"] - position_ids, name


def test_configs_of_the_released_models():
    so400m_224 = PRESETS["siglip_so400m_patch14_224"]["config"]
    assert so400m_224["text"]["sequence_length"] == 16 and so400m_224["image"]["patch_size"] == 14
    assert so400m_224["image"]["width"] == 1152 and so400m_224["image"]["depth"] == 27
    i18n = PRESETS["siglip_so400m_patch16_256_multilingual"]["config"]
    assert i18n["text"]["vocabulary_size"] == 250_000 and i18n["text"]["output_dim"] is None
    assert PRESETS["siglip_base_patch16_256_multilingual"]["config"]["text"]["vocabulary_size"] == 250_000
    assert PRESETS["siglip_large_patch16_384"]["config"]["image"]["image_size"] == 384
    for name in RELEASED:
        sources = PRESETS[name]["sources"]
        assert any(s.startswith("hf://google/siglip-") for s in sources), name
        assert any(s.startswith("gs://big_vision/siglip/") and s.endswith(".npz") for s in sources), name
    siglit_config = PRESETS["siglit_so400m_patch14_384"]["config"]
    assert siglit_config["image"] == PRESETS["siglip_so400m_patch14_384"]["config"]["image"]
    assert siglit_config["text"]["output_dim"] == 1152 and siglit_config["text"]["width"] == 768


def test_counting_without_building_agrees_with_keras():
    for name in ("siglip_tiny_patch4_16", "siglip_tiny_patch14_28", "siglit_tiny_patch4_16"):
        assert SigLIP.from_preset(name).count_params() == count_parameters(PRESETS[name]["config"]), name
    tiny = PRESETS["siglip_tiny_patch4_16"]["config"]
    config = {"image": dict(tiny["image"], image_size=(8, 12), pooling="gap", output_dim=8),
              "text": dict(tiny["text"], output_dim=8)}
    assert build_model(config).count_params() == count_parameters(config)


def test_list_presets_prints_a_table(capsys):
    table = keras_siglip.list_presets()
    printed = capsys.readouterr().out
    assert set(table) == set(PRESETS)
    assert "siglip_so400m_patch14_384" in printed and "877.96M" in printed


def test_unknown_names_and_handles_are_refused():
    with pytest.raises(ValueError, match="Unknown preset 'siglip_huge'.*siglip_base_patch16_224.*siglip_tiny"):
        SigLIP.from_preset("siglip_huge")
    with pytest.raises(ValueError, match="must be a string"):
        SigLIP.from_preset(3)


def test_not_a_siglip_folder(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        SigLIP.from_preset(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="describes 'bert', which is not a SigLIP"):
        SigLIP.from_preset(str(tmp_path))


# -- this library's format ------------------------------------------------------------------------


def tiny_sentencepiece():
    sentencepiece = pytest.importorskip("sentencepiece")
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a photo of a cat", "a photo of a dog", "two birds"] * 50),
        model_writer=proto, vocab_size=18, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return proto.getvalue()


def test_save_and_load_round_trip_with_preprocessing(tmp_path):
    model = perturb(SigLIP.from_preset("siglip_tiny_patch14_28"))
    tokenizer = keras_siglip.SigLIPTokenizer(tiny_sentencepiece(), sequence_length=8)
    image_converter = keras_siglip.SigLIPImagePreprocessor(image_size=28)
    model.save_to_preset(str(tmp_path), tokenizer=tokenizer, image_converter=image_converter)
    assert {"config.json", "metadata.json", "model.weights.h5", "tokenizer.json",
            "image_converter.json"} <= {p.name for p in tmp_path.iterdir()}

    loaded = load_preset(str(tmp_path))
    assert loaded.model.text_encoder.head is None
    for mine, theirs in zip(outputs(loaded.model), outputs(model)):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.tokenizer(["A photo of a dog"])),
                                  keras.ops.convert_to_numpy(tokenizer(["A photo of a dog"])))
    assert loaded.image_converter.image_size == image_converter.image_size
    # The preprocessing classes read the same folder through keras-hub's own from_preset.
    assert keras_siglip.SigLIPTokenizer.from_preset(str(tmp_path)).sequence_length == 8


def test_dtype_and_architecture_only(tmp_path):
    model = perturb(SigLIP.from_preset("siglip_tiny_patch4_16"))
    model.save_to_preset(str(tmp_path))
    mixed = SigLIP.from_preset(str(tmp_path), dtype="mixed_bfloat16")
    for layer in (mixed, mixed.image_encoder, mixed.text_encoder.blocks[1].mlp):
        assert layer.dtype_policy.name == "mixed_bfloat16", layer.name
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mixed.text_encoder.position_embedding),
                                  keras.ops.convert_to_numpy(model.text_encoder.position_embedding))
    fresh = SigLIP.from_preset(str(tmp_path), load_weights=False)
    assert fresh.count_params() == model.count_params()
    assert not np.array_equal(keras.ops.convert_to_numpy(fresh.text_encoder.position_embedding),
                              keras.ops.convert_to_numpy(model.text_encoder.position_embedding))


def test_damaged_native_presets(tmp_path):
    SigLIP.from_preset("siglip_tiny_patch4_16").save_to_preset(str(tmp_path))
    weights = tmp_path / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SigLIP.from_preset(str(tmp_path))
    weights.unlink()
    with pytest.raises((ValueError, FileNotFoundError), match="model.weights.h5"):
        SigLIP.from_preset(str(tmp_path))
    # A config and weights of different shapes: the weights file is named.
    SigLIP.from_preset("siglip_tiny_patch14_28").save_to_preset(str(tmp_path / "other"))
    (tmp_path / "model.weights.h5").write_bytes((tmp_path / "other" / "model.weights.h5").read_bytes())
    with pytest.raises(ValueError, match="model.weights.h5"):
        SigLIP.from_preset(str(tmp_path))


# -- keras-hub presets and SigLiT -------------------------------------------------------------------


def test_keras_hub_preset_matches_keras_hub(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    vision = keras_hub.models.SigLIPVisionEncoder(patch_size=4, hidden_dim=32, num_layers=2, num_heads=2,
                                                  intermediate_dim=64, image_shape=(16, 16, 3))
    text = keras_hub.models.SigLIPTextEncoder(vocabulary_size=64, embedding_dim=32, hidden_dim=32, num_layers=2,
                                              num_heads=2, intermediate_dim=64, max_sequence_length=8)
    backbone = perturb(keras_hub.models.SigLIPBackbone(vision, text))
    backbone.save_to_preset(str(tmp_path))

    model = SigLIP.from_preset(str(tmp_path))
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (3, 16, 16, 3)).astype("float32")
    token_ids = rng.integers(0, 64, (3, 8)).astype("int32")
    out = model({"images": images, "token_ids": token_ids})

    def normalize(x):
        x = keras.ops.convert_to_numpy(x)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["image_embeddings"]),
                               normalize(backbone.get_vision_embeddings(images)), atol=1e-5, rtol=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["text_embeddings"]),
                               normalize(backbone.get_text_embeddings(token_ids)), atol=1e-5, rtol=0)
    reference_logits = keras.ops.convert_to_numpy(backbone({"images": images, "token_ids": token_ids})["vision_logits"])
    logits = model.similarity(out["image_embeddings"], out["text_embeddings"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits),
                               reference_logits, atol=1e-5, rtol=0)


def test_siglit_locks_a_pretrained_image_tower(tmp_path):
    source = perturb(SigLIP.from_preset("siglip_tiny_patch4_16"))
    source.save_to_preset(str(tmp_path))
    model = siglit(str(tmp_path), PRESETS["siglit_tiny_patch4_16"]["config"])
    assert model.lock_image_tower and not model.image_encoder.trainable and model.text_encoder.trainable
    for mine, theirs in zip(model.image_encoder.weights, source.image_encoder.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs))
    assert not np.allclose(keras.ops.convert_to_numpy(model.text_encoder.head.kernel),
                           keras.ops.convert_to_numpy(source.text_encoder.head.kernel))
    assert all(not v.trainable for v in model.image_encoder.weights)
    with pytest.raises(ValueError, match="does not match the SigLiT config"):
        siglit(str(tmp_path), PRESETS["siglip_tiny_patch14_28"]["config"])
    assert not SigLIP.from_preset("siglit_tiny_patch4_16").image_encoder.trainable


# -- no network: said so, at once, in the library's summary of the sources tried -----------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every connection fails as it does offline (no DNS); nothing can be downloaded."""
    import socket

    pytest.importorskip("keras_hub")
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("kagglehub")
    from keras_hub.src.utils import preset_utils  # noqa: F401 (imported before the clock starts)

    def unreachable(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hf-cache")  # nothing cached to fall back to


@pytest.mark.parametrize("handle", ["hf://google/siglip-base-patch16-224",
                                    "kaggle://keras/siglip/keras/siglip_base_patch16_224/1"])
def test_offline_handle_says_no_network_at_once(no_network, handle):
    import time

    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        SigLIP.from_preset(handle)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert message.startswith(f"Could not load preset {handle!r} from any of its sources:\n  {handle}: "), message
    assert "Name or service not known" in message and message.endswith("(a network error: no network?)"), message
    assert "config.json" not in message  # the network error is not passed off as a missing file
    assert elapsed < 5, elapsed  # no half-minute of retries


def test_offline_builtin_name_says_no_network_for_every_source(no_network, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    import time

    real_exists = tf.io.gfile.exists

    def gcs_offline(path):  # TensorFlow's own gs:// client is C++ (curl), beyond Python's socket
        if str(path).startswith("gs://"):
            raise tf.errors.FailedPreconditionError(
                None, None, "libcurl code 6 meaning 'Could not resolve hostname', error details: Could not resolve "
                            "host: storage.googleapis.com")
        return real_exists(path)

    monkeypatch.setattr(tf.io.gfile, "exists", gcs_offline)
    start = time.monotonic()
    with pytest.raises(ValueError, match="Could not load preset 'siglip_base_patch16_224' from any") as info:
        SigLIP.from_preset("siglip_base_patch16_224")
    assert time.monotonic() - start < 10
    lines = str(info.value).splitlines()[1:]
    assert [line.split(": ")[0].strip() for line in lines] == PRESETS["siglip_base_patch16_224"]["sources"]
    assert all(line.endswith("(a network error: no network?)") for line in lines), lines


def test_a_download_failing_midway_is_reported_as_a_network_error(monkeypatch):
    """The connection check passes, then the download client fails (here kagglehub's requests)."""
    pytest.importorskip("kagglehub")
    requests = pytest.importorskip("requests")
    import kagglehub

    def dropped(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Connection aborted: RemoteDisconnected")

    monkeypatch.setattr(kagglehub, "model_download", dropped)
    handle = "kaggle://keras/siglip/keras/siglip_base_patch16_224/1"
    with pytest.raises(ValueError, match=r"(?s)from any of its sources:\n  kaggle://keras/siglip/keras/"
                                         r"siglip_base_patch16_224/1: ConnectionError: Connection aborted.*no network"):
        SigLIP.from_preset(handle)
    # Not every failure is the network's: a missing file is still reported as one.
    monkeypatch.setattr(kagglehub, "model_download", lambda *a, **k: (_ for _ in ()).throw(
        ValueError("'config.json' is not present in the model files")))
    with pytest.raises(ValueError, match="has no config.json"):
        SigLIP.from_preset(handle)


# -- a config that disagrees with the weights: refused before the model is built -----------------------


def edit_config(folder, **towers):
    """Rewrites the towers' entries of a saved preset's config.json, e.g. image_encoder={"depth": 3}."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for tower, changes in towers.items():
        config["config"][tower]["config"].update(changes)
    path.write_text(json.dumps(config))


def test_native_config_that_disagrees_with_the_weights_is_refused(tmp_path, monkeypatch):
    import time

    from keras_siglip.presets import registry

    SigLIP.from_preset("siglip_tiny_patch4_16").save_to_preset(str(tmp_path))  # two 2-block, width-32 towers
    original = (tmp_path / "config.json").read_text()

    def no_building(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(keras.saving, "deserialize_keras_object", no_building)
    monkeypatch.setattr(registry, "build_model", no_building)
    edit_config(tmp_path, image_encoder={"width": 8192, "depth": 48, "mlp_dim": 32768, "num_heads": 64},
                text_encoder={"width": 8192, "depth": 48})
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"config\.json disagrees with .*model\.weights\.h5: image_encoder depth 48 "
                                         r"in the config, 2 blocks in the weights; image_encoder width 8192 in the "
                                         r"config, 32 in the weights; image_encoder mlp_dim 32768 .*Refused before"):
        SigLIP.from_preset(str(tmp_path))
    assert time.monotonic() - start < 5

    for changes, problem in [({"depth": 3}, "text_encoder depth 3 in the config, 2 blocks in the weights"),
                             ({"num_heads": 3}, "text_encoder num_heads 3 does not divide its width 32"),
                             ({"vocabulary_size": 65}, "text_encoder vocabulary_size 65 in the config, 64 in")]:
        (tmp_path / "config.json").write_text(original)
        edit_config(tmp_path, text_encoder=changes)
        with pytest.raises(ValueError, match=f"disagrees with .*{re.escape(problem)}"):
            SigLIP.from_preset(str(tmp_path))
    monkeypatch.undo()
    # Another head count that divides the width leaves the shapes as they are: the config decides, and it is kept.
    (tmp_path / "config.json").write_text(original)
    edit_config(tmp_path, image_encoder={"num_heads": 4})
    assert SigLIP.from_preset(str(tmp_path)).image_encoder.num_heads == 4
    # Architecture only: there are no weights to disagree with.
    (tmp_path / "config.json").write_text(original)
    edit_config(tmp_path, text_encoder={"depth": 3})
    assert len(SigLIP.from_preset(str(tmp_path), load_weights=False).text_encoder.blocks) == 3


def test_transformers_config_that_disagrees_with_the_weights_is_refused(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from keras_siglip.presets import registry

    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=8)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                  patch_size=4)
    transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(
        str(tmp_path), safe_serialization=True)
    assert SigLIP.from_preset(str(tmp_path)).count_params() > 0  # as written, it loads
    original = (tmp_path / "config.json").read_text()

    def no_building(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(registry, "build_model", no_building)
    for changes, problem in [
        ({"hidden_size": 8192, "num_hidden_layers": 48, "intermediate_size": 32768, "num_attention_heads": 64},
         r"lacks 736 expected key\(s\): vision_model\.encoder\.layers\.10\."),  # keys first: layers 2-47, 16 each
        ({"hidden_size": 8192, "intermediate_size": 32768, "num_attention_heads": 64},
         r"its config describes [\d,]+ parameters \(image tower width 8192, depth 2; .*its weights hold [\d,]+\. "
         "Refused before building"),
        ({"num_hidden_layers": 3}, r"lacks 16 expected key\(s\): vision_model\.encoder\.layers\.2\."),
    ]:
        config = json.loads(original)
        config["vision_config"].update(changes)
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=problem):
            SigLIP.from_preset(str(tmp_path))
