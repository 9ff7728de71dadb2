"""big_vision `.npz` -> SigLIP, checked against a NumPy forward pass over the raw checkpoint.

The oracle, `tools/big_vision_reference.py`, is our own NumPy re-implementation
of big_vision's model (big_vision itself is not installable from PyPI); it
shares no code with keras_siglip and lives with the tools, outside the package.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_siglip import SigLIP
from keras_siglip.presets import big_vision_format

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools")


def load_tool(name):
    """A module under tools/ (a script's flags are only defined when it runs as a script)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


big_vision_reference = load_tool("big_vision_reference")

TOWER = dict(width=32, depth=2, mlp_dim=64, num_heads=2)  # the "tiny" presets' towers


def random_big_vision_params(seed=0, image_size=16, patch_size=4, vocabulary_size=64, sequence_length=8,
                             text_head=True):
    """A SigLIP checkpoint in big_vision's flat key layout, random values (float32)."""
    rng = np.random.default_rng(seed)
    width, depth, mlp_dim, heads = TOWER["width"], TOWER["depth"], TOWER["mlp_dim"], TOWER["num_heads"]

    def normal(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype("float32")

    def attention(prefix):
        p = {}
        for name in ("query", "key", "value"):
            p[f"{prefix}/{name}/kernel"] = normal(width, heads, width // heads)
            p[f"{prefix}/{name}/bias"] = normal(heads, width // heads)
        p[f"{prefix}/out/kernel"] = normal(heads, width // heads, width)
        p[f"{prefix}/out/bias"] = normal(width)
        return p

    def layer_norm(prefix):
        return {f"{prefix}/scale": 1 + normal(width, scale=0.1), f"{prefix}/bias": normal(width, scale=0.1)}

    def mlp(prefix):
        return {f"{prefix}/Dense_0/kernel": normal(width, mlp_dim), f"{prefix}/Dense_0/bias": normal(mlp_dim),
                f"{prefix}/Dense_1/kernel": normal(mlp_dim, width), f"{prefix}/Dense_1/bias": normal(width)}

    def encoder(prefix):
        p = {}
        for i in range(depth):
            block = f"{prefix}/encoderblock_{i}"
            p.update(layer_norm(f"{block}/LayerNorm_0"), **layer_norm(f"{block}/LayerNorm_1"))
            p.update(attention(f"{block}/MultiHeadDotProductAttention_0"), **mlp(f"{block}/MlpBlock_0"))
        p.update(layer_norm(f"{prefix}/encoder_norm"))
        return p

    patches = (image_size // patch_size) ** 2
    params = {
        "img/embedding/kernel": normal(patch_size, patch_size, 3, width, scale=0.1),
        "img/embedding/bias": normal(width),
        "img/pos_embedding": normal(1, patches, width),
        "img/MAPHead_0/probe": normal(1, 1, width),
        **attention("img/MAPHead_0/MultiHeadDotProductAttention_0"),
        **layer_norm("img/MAPHead_0/LayerNorm_0"),
        **mlp("img/MAPHead_0/MlpBlock_0"),
        **encoder("img/Transformer"),
        "txt/Embed_0/embedding": normal(vocabulary_size, width),
        "txt/pos_embedding": normal(1, sequence_length, width),
        **encoder("txt/Encoder_0"),
        "t": np.array([np.log(10.0)], "float32"),
        "b": np.array([-10.0], "float32"),
    }
    if text_head:  # big_vision's text head maps to the image embedding width
        params.update({"txt/head/kernel": normal(width, width), "txt/head/bias": normal(width)})
    return params


def to_scan_layout(params):
    """big_vision's `scan=True` layout: one `encoderblock` with the layers stacked on axis 0."""
    stacked, out = {}, {}
    for key, value in params.items():
        parts = key.split("/")
        block = next((i for i, part in enumerate(parts) if part.startswith("encoderblock_")), None)
        if block is None:
            out[key] = value
            continue
        layer = int(parts[block].split("_")[1])
        scan_key = "/".join(parts[:block] + ["encoderblock"] + parts[block + 1 :])
        stacked.setdefault(scan_key, {})[layer] = value
    for key, layers in stacked.items():
        out[key] = np.stack([layers[i] for i in sorted(layers)])
    return out


def to_bf16_void(array):
    """bf16 as `np.savez` stores it from JAX: the top 16 bits of float32, dtype V2."""
    rounded = (array.astype("float32").view(np.uint32) + 0x8000) >> 16  # round to nearest
    return rounded.astype(np.uint16).view("V2")


def save_npz(path, params):
    np.savez(path, **{f"params/{key}": value for key, value in params.items()})
    return str(path)


def model_outputs(model, images, token_ids):
    out = model({"images": images, "token_ids": token_ids})
    logits = model.similarity(out["image_embeddings"], out["text_embeddings"])
    return tuple(keras.ops.convert_to_numpy(x) for x in (out["image_embeddings"], out["text_embeddings"], logits))


def inputs(image_size=16, vocabulary_size=64, sequence_length=8, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (3, image_size, image_size, 3)).astype("float32")
    return images, rng.integers(0, vocabulary_size, (3, sequence_length)).astype("int32")


def assert_matches_reference(model, params, image_size=16):
    images, token_ids = inputs(image_size)
    ours = model_outputs(model, images, token_ids)
    reference = big_vision_reference.forward(params, images, token_ids)
    for name, mine, theirs in zip(("image embeddings", "text embeddings", "logits"), ours, reference):
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("layout", ["per_layer", "scan"])
def test_npz_matches_numpy_forward(tmp_path, layout):
    params = random_big_vision_params()
    stored = to_scan_layout(params) if layout == "scan" else params
    model = SigLIP.from_preset(save_npz(tmp_path / "ckpt.npz", stored))
    assert model.text_encoder.output_dim == 32 and model.text_encoder.depth == 2
    assert_matches_reference(model, params)


def test_headless_text_tower_and_patch_14(tmp_path):
    params = random_big_vision_params(image_size=28, patch_size=14, text_head=False)
    model = SigLIP.from_preset(save_npz(tmp_path / "ckpt.npz", to_scan_layout(params)))
    assert model.text_encoder.head is None and model.image_encoder.patch_size == 14
    assert_matches_reference(model, params, image_size=28)


def test_bf16_stored_as_void(tmp_path):
    params = random_big_vision_params(seed=3)
    stored = {key: to_bf16_void(value) for key, value in params.items()}
    assert stored["t"].dtype.kind == "V"
    model = SigLIP.from_preset(save_npz(tmp_path / "bf16.npz", stored))
    # The reference reads the same bf16 values, so the match stays exact in float32.
    assert_matches_reference(model, stored)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(model.log_temperature)), np.log(10.0), atol=1e-2)


def test_missing_unexpected_and_misshaped_keys(tmp_path):
    params = random_big_vision_params()
    missing = dict(params)
    missing.pop("txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_1/bias")
    with pytest.raises(ValueError, match="lacks 1 expected key.*encoderblock_1/MlpBlock_0/Dense_1/bias"):
        SigLIP.from_preset(save_npz(tmp_path / "missing.npz", missing))
    extra = dict(params, **{"img/extra_thing": np.zeros(3, "float32")})
    with pytest.raises(ValueError, match="unexpected key.*img/extra_thing"):
        SigLIP.from_preset(save_npz(tmp_path / "extra.npz", extra))
    misshaped = dict(params)
    misshaped["img/MAPHead_0/LayerNorm_0/scale"] = np.ones(31, "float32")
    with pytest.raises(ValueError, match=r"img/MAPHead_0/LayerNorm_0/scale.*\(31,\).*layer_norm/gamma.*\(32,\)"):
        SigLIP.from_preset(save_npz(tmp_path / "shape.npz", misshaped))


def test_truncated_and_pickled_files_are_refused(tmp_path):
    path = save_npz(tmp_path / "ckpt.npz", random_big_vision_params())
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SigLIP.from_preset(str(truncated))
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"params/t": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="(?i)pickle"):
        SigLIP.from_preset(str(pickled))


def test_scan_layout_is_unstacked():
    params = random_big_vision_params()
    normalised = big_vision_format.normalize_keys(
        {f"params/{key}": value for key, value in to_scan_layout(params).items()}
    )
    assert sorted(normalised) == sorted(params)
    for key in params:
        np.testing.assert_array_equal(normalised[key], params[key])


def test_convert_big_vision_tool(tmp_path, capsys, monkeypatch):
    """The tool writes a preset, checks it numerically, and raises, naming the worst output, when it is off."""
    params = random_big_vision_params()
    source = save_npz(tmp_path / "ckpt.npz", to_scan_layout(params))
    tool = load_tool("convert_big_vision")
    errors = tool.convert_and_check(source, str(tmp_path / "preset"))
    assert list(errors) == ["image embeddings", "text embeddings", "logits"]
    assert all(error <= 1e-4 for error, _ in errors.values())
    assert capsys.readouterr().out.count(" ok") == 3
    assert_matches_reference(SigLIP.from_preset(str(tmp_path / "preset")), params)

    # One logit off by 2e-4 (as a conversion bug would make it) fails the check.
    forward = tool.big_vision_reference.forward

    def off_by_one_logit(*args):
        image_embeddings, text_embeddings, logits = forward(*args)
        logits = logits.copy()
        logits[0, 1] += 2e-4
        return image_embeddings, text_embeddings, logits

    monkeypatch.setattr(tool.big_vision_reference, "forward", off_by_one_logit)
    message = r"does not reproduce ckpt\.npz: logits differ by up to 2\.0\de-04 at \[0, 1\], above the tolerance 0\.0001"
    with pytest.raises(tool.ConversionMismatch, match=message):
        tool.convert_and_check(source, str(tmp_path / "preset"))
    assert "logits            max abs error 2.0" in capsys.readouterr().out
    assert tool.exit_status(tool.convert_and_check, source, str(tmp_path / "preset")) == 1
    assert "Conversion check failed: the converted model does not reproduce" in capsys.readouterr().err
    assert tool.exit_status(tool.convert_and_check, source, str(tmp_path / "preset"), tolerance=1e-3) == 0


def test_conversion_check_names_the_worst_output():
    check = load_tool("conversion_check")
    ours = [np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 2))]
    errors = check.differences(ours, [ours[0] + 1e-5, ours[1] - 3e-3, ours[2]])
    assert errors["text embeddings"] == (pytest.approx(3e-3), (0, 0)) and errors["logits"] == (0.0, (0, 0))
    with pytest.raises(check.ConversionMismatch, match=r"text embeddings differ by up to 3\.00e-03.*tolerance 0\.001"):
        check.assert_reproduces(errors, tolerance=1e-3)
    check.assert_reproduces(errors, tolerance=3e-3)
    nan = np.array([[0.0, np.nan], [0.0, 0.0]])
    with pytest.raises(check.ConversionMismatch, match=r"logits differ by up to inf at \[0, 1\]"):
        check.assert_reproduces(check.differences(ours, [ours[0], ours[1], nan]), tolerance=1.0)
    with pytest.raises(check.ConversionMismatch, match=r"logits: converted shape \(2, 2\), source shape \(2,\)"):
        check.differences(ours, [ours[0], ours[1], np.zeros(2)])


def test_convert_big_vision_script_exit_status(tmp_path):
    """Run as a script: flags parsed, exit 0 when the preset reproduces the checkpoint."""
    source = save_npz(tmp_path / "ckpt.npz", random_big_vision_params())
    root = os.path.dirname(os.path.abspath(TOOLS))  # the checkout under test, installed or not
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    command = [sys.executable, os.path.join(TOOLS, "convert_big_vision.py"), f"--checkpoint={source}",
               f"--output={tmp_path / 'preset'}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count(" ok") == 3 and (tmp_path / "preset" / "config.json").exists()
