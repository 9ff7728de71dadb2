"""A transformers checkpoint is checked against its config from the safetensors header alone."""

import json

import pytest

from keras_siglip import SigLIP
from keras_siglip.presets import loader


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf")
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=8)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                  patch_size=4)
    transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(
        str(folder), safe_serialization=True)
    return folder


@pytest.mark.backend_independent
def test_header_shapes_are_those_safetensors_reads(hf_folder):
    from safetensors import safe_open

    path = str(hf_folder / "model.safetensors")
    with safe_open(path, framework="numpy") as file:
        expected = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    assert loader.safetensors_shapes([path]) == expected and len(expected) > 30


@pytest.mark.backend_independent
def test_a_config_of_another_depth_is_refused_before_any_array_is_loaded(hf_folder, tmp_path, monkeypatch):
    for name in ("model.safetensors", "config.json"):
        (tmp_path / name).write_bytes((hf_folder / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))

    def no_loading(paths):
        raise AssertionError("the arrays were loaded before the config was checked")

    monkeypatch.setattr(loader, "load_safetensors", no_loading)
    with pytest.raises(ValueError, match=r"lacks 16 expected key\(s\): vision_model\.encoder\.layers\.2\."):
        SigLIP.from_preset(str(tmp_path))


@pytest.mark.backend_independent
def test_a_truncated_header_is_named(hf_folder, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes((hf_folder / "model.safetensors").read_bytes()[:200])
    with pytest.raises(ValueError, match="Cannot read .*model.safetensors as a safetensors checkpoint"):
        loader.safetensors_shapes([str(path)])
