"""Serving exports of each tower (and of the two-tower call) through Keras's `Model.export`.

Each artifact is loaded by its own runtime (TensorFlow's SavedModel loader,
onnxruntime, the TFLite interpreter, `torch.export.load`) and must reproduce
the Keras embeddings; nobody writes an input signature.
"""

import warnings

import keras
import numpy as np
import pytest

from keras_siglip import SigLIP
from keras_siglip.models.siglip.tower_model import TowerModel

BACKEND = keras.backend.backend()

# What Keras's `Model.export` can write on each backend with the test extra's packages.
FORMATS = {
    "tensorflow": ["tf_saved_model", "onnx", "litert"],
    "jax": ["tf_saved_model"],
    "torch": ["torch", "onnx"],
}[BACKEND]
SUFFIX = {"tf_saved_model": "", "onnx": ".onnx", "litert": ".tflite", "torch": ".pt2"}


@pytest.fixture(scope="module")
def model():
    model = SigLIP.from_variant("tiny", image_size=16, patch_size=8, vocabulary_size=50, sequence_length=6)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.uniform(-1, 1, (4, 16, 16, 3)).astype("float32"),
        "token_ids": rng.integers(0, 50, (4, 6)).astype("int32"),
    }
    model.fit(batch, epochs=2, batch_size=4, verbose=0)  # weights other than the initial ones
    return model


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(1)
    return {
        "image": rng.uniform(-1, 1, (3, 16, 16, 3)).astype("float32"),
        "text": rng.integers(0, 50, (3, 6)).astype("int32"),
    }


def run_artifact(format, path, x):
    """The exported artifact's output on `x` (an array), computed by the format's own runtime."""
    if format == "tf_saved_model":
        import tensorflow as tf

        artifact = tf.saved_model.load(path)  # kept alive: `serve` reads its variables
        return np.asarray(artifact.serve(x))
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        (input_,) = session.get_inputs()
        return session.run(None, {input_.name: x})[0]
    if format == "litert":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=path)
        (input_,) = interpreter.get_input_details()
        interpreter.resize_tensor_input(input_["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    import torch

    with torch.no_grad():
        return torch.export.load(path).module()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("tower", ["image", "text"])
def test_each_tower_exports_without_a_signature_and_serves_equal_embeddings(model, inputs, tmp_path, tower,
                                                                            format):
    tower_model = model.tower_model(tower)
    path = str(tmp_path / f"{tower}{SUFFIX[format]}")
    static = (format, BACKEND) in {("onnx", "torch")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tower_model.export(path, format=format, verbose=False, batch_size=3 if static else None)
    assert not [w for w in caught if "dynamic batch" in str(w.message)]
    x = inputs[tower]
    expected = keras.ops.convert_to_numpy(
        model.encode_images(x) if tower == "image" else model.encode_texts(x)
    )
    np.testing.assert_allclose(run_artifact(format, path, x), expected, atol=1e-5)
    if not static:  # any batch size: serve a single example too
        np.testing.assert_allclose(run_artifact(format, path, x[:1]), expected[:1], atol=1e-5)


@pytest.mark.skipif(BACKEND != "torch", reason="the static-batch fallback is torch's ONNX exporter's")
def test_a_format_without_dynamic_batch_fixes_it_to_one_and_says_so(model, inputs, tmp_path):
    path = str(tmp_path / "text.onnx")
    with pytest.warns(UserWarning, match="batches of exactly 1"):
        model.tower_model("text").export(path, format="onnx", verbose=False)
    expected = keras.ops.convert_to_numpy(model.encode_texts(inputs["text"][:1]))
    np.testing.assert_allclose(run_artifact("onnx", path, inputs["text"][:1]), expected, atol=1e-5)


def test_the_two_tower_model_exports_without_a_signature(model, inputs, tmp_path):
    format = "torch" if BACKEND == "torch" else "tf_saved_model"
    path = str(tmp_path / f"siglip{SUFFIX[format]}")
    model.export(path, format=format, verbose=False)
    x = {"images": inputs["image"], "token_ids": inputs["text"]}
    expected = {k: keras.ops.convert_to_numpy(v) for k, v in model(x).items()}
    if format == "torch":
        import torch

        with torch.no_grad():
            got = torch.export.load(path).module()({k: torch.from_numpy(v) for k, v in x.items()})
        got = {k: v.numpy() for k, v in got.items()}
    else:
        import tensorflow as tf

        artifact = tf.saved_model.load(path)
        got = {k: np.asarray(v) for k, v in artifact.serve(x).items()}
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


def test_a_tower_model_saves_and_loads_and_follows_its_siglip(model, inputs, tmp_path):
    tower_model = TowerModel(model, "image")
    path = str(tmp_path / "image_tower.keras")
    tower_model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, TowerModel) and loaded.tower == "image"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(inputs["image"])),
        keras.ops.convert_to_numpy(model.encode_images(inputs["image"])),
        atol=1e-6,
    )


def test_bad_tower_arguments_are_refused(model):
    with pytest.raises(ValueError, match="'image' or 'text'"):
        model.tower_model("audio")
    with pytest.raises(ValueError, match="needs a SigLIP"):
        TowerModel(keras.Sequential([keras.layers.Dense(2)]), "image")


def test_a_naflex_tower_exports_and_serves_mixed_image_sizes(tmp_path):
    from keras_siglip import NaFlexImageEncoder, NaFlexImagePreprocessor, TextEncoder

    model = SigLIP(NaFlexImageEncoder.from_variant("tiny", patch_size=4, position_grid_size=4),
                   TextEncoder.from_variant("tiny", vocabulary_size=50, sequence_length=6))
    preprocessor = NaFlexImagePreprocessor(patch_size=4, max_num_patches=16)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20, 12, 3), dtype=np.uint8), rng.integers(0, 256, (9, 30, 3), dtype=np.uint8)]
    x = {k: np.asarray(v) for k, v in preprocessor(images).items()}
    expected = keras.ops.convert_to_numpy(model.encode_images(x))
    tower_model = model.tower_model("image")
    format = "torch" if BACKEND == "torch" else "tf_saved_model"
    path = str(tmp_path / f"naflex{SUFFIX[format]}")
    if BACKEND != "tensorflow":
        with pytest.raises(ValueError, match="num_patches"):
            tower_model.export(path, format=format, verbose=False)
    tower_model.export(path, format=format, verbose=False, num_patches=16)
    if format == "torch":
        import torch

        with torch.no_grad():
            got = torch.export.load(path).module()({k: torch.from_numpy(v) for k, v in x.items()}).numpy()
    else:
        import tensorflow as tf

        artifact = tf.saved_model.load(path)
        got = np.asarray(artifact.serve(x))
    np.testing.assert_allclose(got, expected, atol=1e-5)
