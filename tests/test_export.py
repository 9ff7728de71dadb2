"""`keras_siglip.export` and `keras-siglip-convert`: a trained model out to transformers, keras-hub, big_vision.

Each round trip is judged by the target's own code: transformers' SiglipModel /
SiglipProcessor, keras-hub's SigLIPBackbone / tokenizer / image converter /
preprocessor, and for big_vision the NumPy oracle over big_vision's parameter
tree (tools/big_vision_reference.py, which shares no code with the package).
"""

import io
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import random_pairs, tiny_siglip

import keras_siglip
from keras_siglip import SigLIP
from keras_siglip.presets import from_big_vision

TEXTS = ["a photo of a cat", "Two DOGS, running!", "a photo of a dog next to two birds", "", "cat cat cat cat"]
PLAIN_TEXTS = ["a photo of a cat", "two dogs", "a dog next to two birds"]  # no punctuation or capitals


@pytest.fixture(scope="module")
def trained_weights():
    """A tiny model's weights after a few `fit` steps (every weight moved off its init)."""
    model = tiny_siglip()
    model.compile()
    model.fit(random_pairs(32), batch_size=8, epochs=1, verbose=0)
    return model.get_weights()


def trained(weights, **kwargs):
    model = tiny_siglip(**kwargs)
    model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def spm_proto():
    """A 30-piece SentencePiece model with big_vision's special ids (pad 0, EOS 1, unk 2)."""
    import sentencepiece

    proto = io.BytesIO()
    words = "a photo of the cat dog bird birds two next to running".split()
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, size=rng.integers(2, 8))) for _ in range(200)]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=proto, vocab_size=30, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, minloglevel=2)
    return proto.getvalue()


def ours(model, x):
    out = model.predict(x, verbose=0)
    logits = keras.ops.convert_to_numpy(model.similarity(out["image_embeddings"], out["text_embeddings"]))
    return out["image_embeddings"], out["text_embeddings"], logits


def ids(tokenizer, texts):
    return keras.ops.convert_to_numpy(tokenizer(texts))


def assert_close(mine, theirs, atol=1e-5):
    for name, a, b in zip(("image embeddings", "text embeddings", "logits"), mine, theirs):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=name)


# -- transformers ---------------------------------------------------------------


def transformers_outputs(folder, x):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, info = transformers.SiglipModel.from_pretrained(folder, output_loading_info=True)
    assert {key: value for key, value in info.items() if value} == {}  # nothing missing, unused or misshaped
    with torch.no_grad():
        out = model.eval()(input_ids=torch.from_numpy(x["token_ids"]).long(),
                           pixel_values=torch.from_numpy(x["images"].transpose(0, 3, 1, 2).copy()))
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def test_transformers_round_trip(tmp_path, trained_weights, spm_proto):
    transformers = pytest.importorskip("transformers")
    model = trained(trained_weights)
    tokenizer = keras_siglip.SigLIPTokenizer(spm_proto, sequence_length=8, lowercase="unicode", canonicalize=True)
    preprocessor = keras_siglip.SigLIPImagePreprocessor(image_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # transformers' own rules: no warning
        keras_siglip.export(model, tmp_path, format="transformers", tokenizer=tokenizer, image_converter=preprocessor)
    x = random_pairs(3, seed=7)
    assert_close(ours(model, x), transformers_outputs(tmp_path, x))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "siglip" and config["text_config"]["projection_size"] == 32
    assert config["vision_config"]["layer_norm_eps"] == 1e-6
    assert config["vision_config"]["hidden_act"] == config["text_config"]["hidden_act"] == "gelu_pytorch_tanh"

    processor = transformers.SiglipProcessor.from_pretrained(tmp_path)
    encoded = processor(text=TEXTS, padding="max_length", truncation=True, max_length=8)["input_ids"]
    np.testing.assert_array_equal(np.array(encoded), ids(tokenizer, TEXTS))
    image_processor = processor.image_processor
    assert image_processor.size == {"height": 16, "width": 16} and image_processor.do_rescale
    assert list(image_processor.image_mean) == [0.5] * 3 and list(image_processor.image_std) == [0.5] * 3
    pixels = processor(images=np.full((16, 16, 3), 255, np.uint8), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(pixels, 1.0, atol=1e-6)  # [0, 255] -> [-1, 1], as the model was trained
    # This library reads its own export back exactly.
    assert_close(ours(SigLIP.from_preset(str(tmp_path)), x), ours(model, x), atol=0)


def test_transformers_headless_text_tower_gets_identity_head(tmp_path):
    image = keras_siglip.ImageEncoder(image_size=16, patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64)
    text = keras_siglip.TextEncoder(vocabulary_size=64, sequence_length=8, width=32, depth=2, num_heads=2,
                                    mlp_dim=64, output_dim=None)
    model = SigLIP(image, text)
    keras_siglip.export(model, tmp_path, format="transformers")
    x = random_pairs(2, seed=3)
    assert_close(ours(model, x), transformers_outputs(tmp_path, x))


def test_default_tokenizer_rules_warn_and_agree_on_plain_text(tmp_path, spm_proto):
    transformers = pytest.importorskip("transformers")
    model = tiny_siglip()
    tokenizer = keras_siglip.SigLIPTokenizer(spm_proto, sequence_length=8)  # big_vision's rules
    with pytest.warns(UserWarning, match="transformers's tokenizer strips punctuation"):
        keras_siglip.export(model, tmp_path, format="transformers", tokenizer=tokenizer)
    hf = transformers.SiglipTokenizer.from_pretrained(tmp_path)
    encoded = hf(PLAIN_TEXTS, padding="max_length", truncation=True, max_length=8)["input_ids"]
    np.testing.assert_array_equal(np.array(encoded), ids(tokenizer, PLAIN_TEXTS))


# -- keras-hub ------------------------------------------------------------------


def test_keras_hub_round_trip(tmp_path, trained_weights, spm_proto):
    keras_hub = pytest.importorskip("keras_hub")
    model = trained(trained_weights)
    tokenizer = keras_siglip.SigLIPTokenizer(spm_proto, sequence_length=8, canonicalize=True)
    preprocessor = keras_siglip.SigLIPImagePreprocessor(image_size=16)
    keras_siglip.export(model, tmp_path, format="keras_hub", tokenizer=tokenizer, image_converter=preprocessor)

    backbone = keras_hub.models.SigLIPBackbone.from_preset(str(tmp_path))
    x = random_pairs(3, seed=7)
    vision = keras.ops.convert_to_numpy(backbone.get_vision_embeddings(x["images"]))
    text = keras.ops.convert_to_numpy(backbone.get_text_embeddings(x["token_ids"]))
    logits = keras.ops.convert_to_numpy(backbone.predict(x, verbose=0)["vision_logits"])
    normalized = [v / np.linalg.norm(v, axis=-1, keepdims=True) for v in (vision, text)]
    assert_close(ours(model, x), (*normalized, logits))

    hub_preprocessor = keras_hub.models.SigLIPPreprocessor.from_preset(str(tmp_path))
    assert isinstance(hub_preprocessor.tokenizer, keras_hub.models.SigLIPTokenizer)
    images = np.random.default_rng(0).integers(0, 256, (len(TEXTS), 16, 16, 3)).astype("float32")
    packed = hub_preprocessor({"prompts": TEXTS, "images": images})
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(packed["token_ids"]), ids(tokenizer, TEXTS))
    converter = keras_hub.layers.SigLIPImageConverter.from_preset(str(tmp_path))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(converter(images)),
                               keras.ops.convert_to_numpy(preprocessor(images)), atol=1e-6)
    assert_close(ours(SigLIP.from_preset(str(tmp_path)), x), ours(model, x), atol=0)


# -- big_vision -----------------------------------------------------------------


def test_big_vision_round_trip(tmp_path, trained_weights, spm_proto):
    from test_convert_big_vision import big_vision_reference, random_big_vision_params

    from keras_siglip.presets import big_vision_format

    model = trained(trained_weights)
    tokenizer = keras_siglip.SigLIPTokenizer(spm_proto, sequence_length=8)
    path = keras_siglip.export(model, tmp_path / "siglip.npz", format="big_vision", tokenizer=tokenizer)
    with np.load(path) as archive:
        stored = {key: archive[key] for key in archive.files}
    # big_vision's two_towers tree, per layer, every key and shape as big_vision itself lays them out.
    expected = random_big_vision_params()
    assert {key: value.shape for key, value in stored.items()} == {
        f"params/{key}": value.shape for key, value in expected.items()}
    params = big_vision_format.normalize_keys(stored)
    x = random_pairs(3, seed=7)
    assert_close(ours(model, x), big_vision_reference.forward(params, x["images"], x["token_ids"]))
    assert_close(ours(SigLIP.from_preset(str(path)), x), ours(model, x), atol=0)
    assert (tmp_path / "siglip.model").read_bytes() == spm_proto


def test_big_vision_text_pool_type(tmp_path):
    text = keras_siglip.TextEncoder(vocabulary_size=64, sequence_length=8, width=32, depth=2, num_heads=2,
                                    mlp_dim=64, output_dim=32, pooling="first")
    image = keras_siglip.ImageEncoder(image_size=16, patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64)
    model = SigLIP(image, text)
    path = str(tmp_path / "first.npz")
    with pytest.warns(UserWarning, match="pool_type='first'"):
        keras_siglip.export(model, path, format="big_vision")
    x = random_pairs(2, seed=1)
    read = from_big_vision(path, text_pool_type="first")
    assert read.text_encoder.pooling == "first"
    assert_close(ours(read, x), ours(model, x), atol=0)
    with pytest.raises(ValueError, match="pool_type 'gmp' is not supported"):
        from_big_vision(path, text_pool_type="gmp")
    # A text MAP head (pool_type='map') leaves keys behind: refused by name, never read wrongly.
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["params/txt/MAPHead_0/probe"] = np.zeros((1, 1, 32), "float32")
    np.savez(tmp_path / "map.npz", **arrays)
    with pytest.raises(ValueError, match=r"MAP head \(txt/MAPHead_0, big_vision pool_type='map'\)"):
        SigLIP.from_preset(str(tmp_path / "map.npz"))


# -- refusals -------------------------------------------------------------------


def test_what_cannot_be_exported_is_refused(tmp_path, spm_proto):
    model = tiny_siglip()
    with pytest.raises(ValueError, match="Unknown export format 'onnx'"):
        keras_siglip.export(model, tmp_path, format="onnx")
    with pytest.raises(ValueError, match="takes a keras_siglip SigLIP model; got Dense"):
        keras_siglip.export(keras.layers.Dense(2), tmp_path)
    with pytest.raises(ValueError, match=r"one \.npz file; got .*folder"):
        keras_siglip.export(model, str(tmp_path / "folder"), format="big_vision")
    with pytest.raises(ValueError, match="export without image_converter"):
        keras_siglip.export(model, str(tmp_path / "m.npz"), format="big_vision",
                            image_converter=keras_siglip.SigLIPImagePreprocessor(image_size=16))
    with pytest.raises(ValueError, match=r"resizes to \(32, 32\); the image tower reads \(16, 16\)"):
        keras_siglip.export(model, tmp_path / "hf", image_converter=keras_siglip.SigLIPImagePreprocessor(32))
    big_vocabulary = tiny_siglip(vocabulary_size=20)
    with pytest.raises(ValueError, match="30 pieces but the text tower embeds 20 ids"):
        keras_siglip.export(big_vocabulary, tmp_path / "hf", tokenizer=keras_siglip.SigLIPTokenizer(spm_proto))

    gap = SigLIP(keras_siglip.ImageEncoder(image_size=16, patch_size=4, width=32, depth=1, num_heads=2, mlp_dim=64,
                                           pooling="gap", output_dim=16),
                 keras_siglip.TextEncoder(vocabulary_size=64, sequence_length=8, width=32, depth=1, num_heads=2,
                                          mlp_dim=64, output_dim=16, pooling="first"))
    with pytest.raises(ValueError, match="Cannot export to transformers: the image tower pools with 'gap'.*"
                                         "16-wide head.*pools the 'first' token"):
        keras_siglip.export(gap, tmp_path / "hf")
    with pytest.raises(ValueError, match="Cannot export to keras-hub: the image tower pools with 'gap'"):
        keras_siglip.export(gap, tmp_path / "kh", format="keras_hub")
    with pytest.raises(ValueError, match="Cannot export to big_vision: the image tower pools with 'gap'"):
        keras_siglip.export(gap, str(tmp_path / "gap.npz"), format="big_vision")


def test_keras_hub_image_tower_is_refused(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    vit = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2,
                                       hidden_dim=32, mlp_dim=64)
    image = keras_siglip.KerasHubImageEncoder(vit, pooling="first")
    text = keras_siglip.TextEncoder(vocabulary_size=64, sequence_length=8, width=32, depth=1, num_heads=2,
                                    mlp_dim=64, output_dim=32)
    model = SigLIP(image, text)
    with pytest.raises(ValueError, match="is a KerasHubImageEncoder, not keras_siglip's ImageEncoder"):
        keras_siglip.export(model, str(tmp_path / "m.npz"), format="big_vision")


def test_offline_builtin_preset_lists_every_source(monkeypatch):
    """No network: each source fails its own way (TensorFlow's for gs://); the library's message lists them."""
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("keras_hub")
    from keras_hub.src.utils import preset_utils

    def offline(preset, path, *args, **kwargs):
        if str(preset).startswith("gs://"):
            raise tf.errors.FailedPreconditionError(None, None, f"{preset}/{path}: DNS resolution failed")
        raise ConnectionError(f"{preset}: network is unreachable")

    monkeypatch.setattr(preset_utils, "get_file", offline)
    with pytest.raises(ValueError, match="Could not load preset 'siglip_base_patch16_224' from any of its sources") as info:
        SigLIP.from_preset("siglip_base_patch16_224")
    message = str(info.value)
    assert "hf://google/siglip-base-patch16-224: ConnectionError" in message
    assert "kaggle://keras/siglip/keras/siglip_base_patch16_224/1: ConnectionError" in message
    assert "webli_en_b16_224_63724782.npz: FailedPreconditionError" in message


# -- the console script -----------------------------------------------------------


def test_convert_checks_and_fails_on_a_mismatch(tmp_path, trained_weights, monkeypatch, capsys):
    from keras_siglip import convert

    trained(trained_weights).save_to_preset(str(tmp_path / "source"))
    assert convert.main([str(tmp_path / "source"), str(tmp_path / "kh"), "--format", "keras_hub"]) == 0
    out = capsys.readouterr().out
    assert "Read back" in out and "keras-hub's SigLIPBackbone" in out and out.count(" ok") == 3

    written = convert.written_outputs

    def off(*args):  # the written model's text embeddings off by 1e-4, as a conversion bug would make them
        outputs, reader = written(*args)
        text = outputs[1].copy()
        text[0, 3] += 1e-4
        return (outputs[0], text, outputs[2]), reader

    monkeypatch.setattr(convert, "written_outputs", off)
    assert convert.main([str(tmp_path / "source"), str(tmp_path / "bv.npz"), "--format", "big_vision"]) == 1
    assert "text embeddings differ by up to 1.00e-04 at [0, 3]" in capsys.readouterr().err
    assert convert.main([str(tmp_path / "missing"), str(tmp_path / "x"), "--format", "transformers"]) == 2


@pytest.mark.backend_independent
def test_console_script(tmp_path):
    """Installed with the package; a transformers folder to keras-hub and on to big_vision, each checked."""
    from test_convert_hf import tiny_hf_model

    tiny_hf_model(tmp_path / "hf")
    script = os.path.join(os.path.dirname(sys.executable), "keras-siglip-convert")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "keras_siglip.convert"]
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command + [str(tmp_path / "hf"), str(tmp_path / "kh"), "--format", "keras_hub",
                                       "--progress", "always"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count(" ok") == 3 and "Writing weights" in result.stdout
    bad = subprocess.run(command + [str(tmp_path / "hf"), str(tmp_path / "x"), "--format", "onnx"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "invalid choice: 'onnx'" in bad.stderr
    assert os.path.exists(script), "keras-siglip-convert is not installed: pip install -e ."
