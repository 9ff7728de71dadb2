"""Light install and light import: what `import keras_siglip` loads, what each extra is for."""

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

import keras_siglip
from keras_siglip import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "tensorflow_text", "keras_hub", "torch")


def _run(code, backend="jax", timeout=300):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


_LIGHT = """
import sys
import numpy as np
import keras_siglip
from keras_siglip import data
model = keras_siglip.SigLIP.from_variant("tiny", image_size=16, patch_size=4, vocabulary_size=64, sequence_length=8)
model.compile()
rng = np.random.default_rng(0)
batch = {"images": rng.uniform(-1, 1, (4, 16, 16, 3)).astype("float32"),
         "token_ids": rng.integers(0, 64, (4, 8)).astype("int32")}
model.fit(batch, batch_size=4, epochs=1, verbose=0)
assert keras_siglip.list_presets()
data.load_shapes("test", image_size=16)
print("HEAVY", sorted(m for m in %r if m in sys.modules))
""" % (HEAVY,)


@pytest.mark.backend_independent
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs the jax extra")
def test_jax_import_build_and_fit_leave_tensorflow_keras_hub_and_torch_out():
    out = _run(_LIGHT)
    assert "HEAVY []" in out, out


def test_every_public_name_resolves():
    for module in (keras_siglip, data):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"
        assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError):
        keras_siglip.not_a_name  # noqa: B018


_BLOCKED = """
import sys
for module in %r:
    sys.modules[module] = None  # `import module` now raises ImportError, as if not installed
import keras_siglip
from keras_siglip import data
for name in %r:
    owner, attribute = name.rsplit(".", 1)
    try:
        getattr({"keras_siglip": keras_siglip, "data": data}[owner], attribute)
    except ImportError as error:
        print("ImportError", name, "|", error)
    else:
        print("imported", name)
# The model and the embedded data sets do not need them.
keras_siglip.SigLIP.from_variant("tiny", image_size=16, patch_size=4, vocabulary_size=64, sequence_length=8)
data.load_shapes("test", image_size=16)
print("model and embedded data: fine")
"""


@pytest.mark.backend_independent
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs the jax extra")
@pytest.mark.parametrize(
    "blocked, names, package",
    [
        (("tensorflow",),
         ("keras_siglip.SigLIPTokenizer", "keras_siglip.SigLIPImagePreprocessor", "data.read_manifest",
          "data.read_tar_shards", "data.read_tfrecords", "data.make_pipeline"), "tensorflow"),
        (("tensorflow_text",), ("keras_siglip.SigLIPTokenizer",), "tensorflow-text"),
        (("keras_hub",), ("keras_siglip.SigLIPTokenizer", "keras_siglip.KerasHubImageEncoder"), "keras-hub"),
    ],
)
def test_missing_tensorflow_or_keras_hub_raises_an_import_error_naming_the_extra(blocked, names, package):
    out = _run(_BLOCKED % (blocked, names))
    for name in names:
        line = next((line for line in out.splitlines() if line.split()[1:2] == [name]), "")
        assert line.startswith("ImportError"), out
        assert f"needs {package}, which is not installed" in line, line
        assert 'pip install "keras-siglip[tensorflow]"' in line, line
    assert "model and embedded data: fine" in out, out


# -- pyproject.toml: extras, and no dependency that nothing imports ------------

# Distribution -> module, for the distributions whose module name differs.
_MODULE_OF = {"tensorflow-text": "tensorflow_text", "keras-hub": "keras_hub", "absl-py": "absl",
              "scikit-learn": "sklearn", "huggingface-hub": "huggingface_hub", "pillow": "PIL"}
# Declared though no file of ours imports them, and why.
_NOT_IMPORTED = {
    "tensorboard": "the `tensorboard` command reads the main job's logs (README)",
    "huggingface-hub": "keras-hub's get_file downloads hf:// handles with it",
    "onnx": "keras.Model.export(format='onnx') writes the model with it (TowerModel.export)",
    "onnxscript": "torch's ONNX exporter, which Keras calls on the PyTorch backend, needs it",
    "tf2onnx": "keras.Model.export(format='onnx') converts with it on TensorFlow",
}


def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement):
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def _imported_modules():
    """Top-level modules imported anywhere in the package, tools, tests and examples (also via `require`)."""
    found = set()
    for folder in ("keras_siglip", "tools", "tests", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
                elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require"):
                    found.update(arg.value for arg in node.args if isinstance(arg, ast.Constant))
    return found


def test_the_core_install_is_keras_and_numpy_and_backends_are_extras():
    project = _pyproject()
    assert sorted(_name(r) for r in project["dependencies"]) == ["keras", "numpy"]
    extras = {extra: [_name(r) for r in requirements] for extra, requirements in project["optional-dependencies"].items()}
    assert extras["jax"] == ["jax"] and extras["torch"] == ["torch"]
    assert {"tensorflow", "tensorflow-text", "keras-hub"} <= set(extras["tensorflow"])
    # torch appears only where asked for (PyPI's Linux wheels are CUDA builds).
    assert [extra for extra, names in extras.items() if "torch" in names] == ["torch"]
    # The test extra pulls in every other extra.
    test = " ".join(project["optional-dependencies"]["test"])
    assert all(extra in test for extra in extras if extra != "test"), test


def test_every_declared_dependency_is_imported_somewhere():
    project = _pyproject()
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    declared = {_name(r) for r in requirements} - {"keras-siglip", "pytest"}
    imported = _imported_modules()
    unused = sorted(d for d in declared if _MODULE_OF.get(d, d) not in imported and d not in _NOT_IMPORTED)
    assert not unused, f"declared but imported by nothing: {unused}"
    assert "tf-keras" not in declared
