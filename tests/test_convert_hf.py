"""transformers `SiglipModel` checkpoints -> SigLIP, checked against transformers itself (torch, CPU)."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from keras_siglip import SigLIP  # noqa: E402


def tiny_hf_model(tmp_path, image_size=16, patch_size=4, seed=0, **text_overrides):
    """A random transformers SiglipModel saved to `tmp_path`; every weight perturbed away from its init."""
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(tower, vocab_size=64, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                **text_overrides)
    config = transformers.SiglipConfig(
        text_config=text, vision_config=dict(tower, image_size=image_size, patch_size=patch_size)
    )
    torch.manual_seed(seed)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    return model


def hf_outputs(model, images, token_ids):
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(token_ids).long(),
                    pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def our_outputs(model, images, token_ids):
    out = model({"images": images, "token_ids": token_ids})
    logits = model.similarity(out["image_embeddings"], out["text_embeddings"])
    return tuple(keras.ops.convert_to_numpy(x) for x in (out["image_embeddings"], out["text_embeddings"], logits))


def random_inputs(image_size, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (3, image_size, image_size, 3)).astype("float32")
    return images, rng.integers(0, 64, (3, 8)).astype("int32")


def assert_same(ours, theirs):
    for name, mine, reference in zip(("image embeddings", "text embeddings", "logits"), ours, theirs):
        np.testing.assert_allclose(mine, reference, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("image_size,patch_size", [(16, 4), (28, 14)])
def test_matches_transformers(tmp_path, image_size, patch_size):
    reference = tiny_hf_model(tmp_path, image_size, patch_size)
    model = SigLIP.from_preset(str(tmp_path))
    assert model.image_encoder.patch_size == patch_size and model.text_encoder.output_dim == 32
    images, token_ids = random_inputs(image_size)
    assert_same(our_outputs(model, images, token_ids), hf_outputs(reference, images, token_ids))


def test_sharded_checkpoint_and_config_defaults(tmp_path):
    reference = tiny_hf_model(tmp_path)
    arrays = safetensors_numpy.load_file(tmp_path / "model.safetensors")
    os.remove(tmp_path / "model.safetensors")
    keys = sorted(arrays)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for shard, shard_keys in shards.items():
        safetensors_numpy.save_file({key: arrays[key] for key in shard_keys}, tmp_path / shard)
        weight_map.update({key: shard for key in shard_keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    # Released configs omit fields equal to transformers' defaults.
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"].pop("hidden_act"), config["vision_config"].pop("layer_norm_eps")
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = SigLIP.from_preset(str(tmp_path))
    images, token_ids = random_inputs(16)
    assert_same(our_outputs(model, images, token_ids), hf_outputs(reference, images, token_ids))


def edit_checkpoint(folder, edit):
    arrays = safetensors_numpy.load_file(folder / "model.safetensors")
    edit(arrays)
    safetensors_numpy.save_file(arrays, folder / "model.safetensors")


def test_bad_checkpoints_name_the_problem(tmp_path):
    tiny_hf_model(tmp_path)
    edit_checkpoint(tmp_path, lambda a: a.pop("vision_model.head.attention.in_proj_bias"))
    with pytest.raises(ValueError, match="lacks 1 expected key.*vision_model.head.attention.in_proj_bias"):
        SigLIP.from_preset(str(tmp_path))

    tiny_hf_model(tmp_path)
    edit_checkpoint(tmp_path, lambda a: a.update({"text_model.surprise.weight": np.zeros(2, "float32")}))
    with pytest.raises(ValueError, match="unexpected key.*text_model.surprise.weight"):
        SigLIP.from_preset(str(tmp_path))

    tiny_hf_model(tmp_path)
    edit_checkpoint(tmp_path, lambda a: a.update({"text_model.head.bias": np.zeros(30, "float32")}))
    with pytest.raises(ValueError, match=r"text_model.head.bias.*\(30,\).*text_encoder/head/bias.*\(32,\)"):
        SigLIP.from_preset(str(tmp_path))

    tiny_hf_model(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SigLIP.from_preset(str(tmp_path))

    os.remove(tmp_path / "model.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="only safetensors"):
        SigLIP.from_preset(str(tmp_path))

    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_act is 'relu'"):
        SigLIP.from_preset(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "siglip", "text_con')
    with pytest.raises(ValueError, match="not valid JSON"):
        SigLIP.from_preset(str(tmp_path))


def test_convert_hf_tool(tmp_path, capsys, monkeypatch):
    """The tool writes a preset, checks it against transformers, and raises, naming the worst output, when off."""
    reference = tiny_hf_model(tmp_path / "hf")
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "convert_hf.py")
    spec = importlib.util.spec_from_file_location("convert_hf", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    errors = tool.convert_and_check(str(tmp_path / "hf"), str(tmp_path / "preset"))
    assert list(errors) == ["image embeddings", "text embeddings", "logits"]
    assert all(error <= 1e-4 for error, _ in errors.values())
    assert capsys.readouterr().out.count(" ok") == 3
    images, token_ids = random_inputs(16)
    assert_same(our_outputs(SigLIP.from_preset(str(tmp_path / "preset")), images, token_ids),
                hf_outputs(reference, images, token_ids))

    # An image embedding off by 1e-3 (as a conversion bug would make it) fails the check.
    transformers_outputs = tool.transformers_outputs

    def off(*args):
        image_embeddings, text_embeddings, logits = transformers_outputs(*args)
        image_embeddings = image_embeddings.copy()
        image_embeddings[1, 5] += 1e-3
        return image_embeddings, text_embeddings, logits

    monkeypatch.setattr(tool, "transformers_outputs", off)
    with pytest.raises(tool.ConversionMismatch, match=r"image embeddings differ by up to 1\.00e-03 at \[1, 5\], "
                                                      r"above the tolerance 0\.0001"):
        tool.convert_and_check(str(tmp_path / "hf"), str(tmp_path / "preset"))
    assert "image embeddings  max abs error 1.00e-03  MISMATCH" in capsys.readouterr().out
    assert tool.exit_status(tool.convert_and_check, str(tmp_path / "hf"), str(tmp_path / "preset")) == 1
    assert "Conversion check failed:" in capsys.readouterr().err


def test_preprocessing_and_identity_text_head(tmp_path):
    """load_preset builds the tokenizer on spiece.model; an identity text head (HF's So400m i18n) is dropped."""
    from test_presets import tiny_sentencepiece

    from keras_siglip.presets import load_preset, loader

    reference = tiny_hf_model(tmp_path)
    with torch.no_grad():
        reference.text_model.head.weight.copy_(torch.eye(32))
        reference.text_model.head.bias.zero_()
    reference.save_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(tiny_sentencepiece())
    loaded = load_preset(str(tmp_path))
    assert loaded.tokenizer.sequence_length == 8 and loaded.image_converter.image_size == (16, 16)

    tower = dict(width=32, depth=2, num_heads=2, mlp_dim=64)
    headless_config = {"image": dict(image_size=16, patch_size=4, **tower),
                       "text": dict(vocabulary_size=64, sequence_length=8, output_dim=None, **tower)}
    model = loader._fit_registry("test", headless_config, loaded.model)
    assert model.text_encoder.head is None
    images, token_ids = random_inputs(16)
    assert_same(our_outputs(model, images, token_ids), hf_outputs(reference, images, token_ids))
