"""The contrastive losses against float64 NumPy references, on the active backend.

tools/test_all.sh runs this file once per backend; every backend is compared
with the same NumPy reference, so passing on all three means they agree with
each other too. Gradients are taken with the backend's own autodiff
(`value_and_grads`), wrt both embeddings, t' and b.
"""

import keras
import numpy as np
import pytest

from keras_siglip import SigmoidLoss, SoftmaxLoss, sigmoid_loss, softmax_loss

BACKEND = keras.backend.backend()
RTOL = 1e-5


# -- references (float64) ----------------------------------------------------


def reference_sigmoid(image, text, log_temperature, bias):
    """Loss and (d image, d text, d t', d b) of the sigmoid loss, in float64."""
    image = np.asarray(image, np.float64)
    text = np.asarray(text, np.float64)
    batch = image.shape[0]
    temperature = np.exp(np.float64(log_temperature))
    similarity = image @ text.T
    logits = temperature * similarity + np.float64(bias)
    labels = 2.0 * np.eye(batch) - 1.0
    loss = np.sum(np.logaddexp(0.0, -labels * logits)) / batch  # -log_sigmoid, stably
    g = (_sigmoid(logits) - np.eye(batch)) / batch
    return loss, (temperature * g @ text, temperature * g.T @ image, temperature * np.sum(g * similarity), np.sum(g))


def reference_softmax(image, text, log_temperature):
    """Loss and (d image, d text, d t') of the CLIP loss, in float64."""
    image = np.asarray(image, np.float64)
    text = np.asarray(text, np.float64)
    batch = image.shape[0]
    temperature = np.exp(np.float64(log_temperature))
    similarity = image @ text.T
    logits = temperature * similarity

    def log_softmax(x, axis):
        x = x - x.max(axis=axis, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))

    loss = -(np.trace(log_softmax(logits, 1)) + np.trace(log_softmax(logits, 0))) / (2 * batch)
    rows = np.exp(log_softmax(logits, 1))
    cols = np.exp(log_softmax(logits, 0))
    g = (rows - np.eye(batch) + cols - np.eye(batch)) / (2 * batch)
    return loss, (temperature * g @ text, temperature * g.T @ image, temperature * np.sum(g * similarity))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def random_embeddings(batch, dim, seed=0, dtype="float32", match=0.5):
    """Unit-norm image and text embeddings; text i is a noisy copy of image i."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, dim))
    text = image + match * rng.normal(size=(batch, dim))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return image.astype(dtype), text.astype(dtype)


# -- autodiff on the active backend --------------------------------------------


def value_and_grads(fn, *arrays, compiled=False):
    """`fn(*arrays)` and its gradient wrt every array, as NumPy float64.

    `compiled=True` runs under the backend's compiler: `jax.jit` or
    `tf.function`; PyTorch runs eagerly either way.
    """
    if BACKEND == "jax":
        import jax

        step = jax.value_and_grad(fn, argnums=tuple(range(len(arrays))))
        if compiled:
            step = jax.jit(step)
        value, grads = step(*[jax.numpy.asarray(a) for a in arrays])
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        def step(*tensors):
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                value = fn(*tensors)
            return value, tape.gradient(value, tensors)

        if compiled:
            step = tf.function(step)
        value, grads = step(*[tf.constant(a) for a in arrays])
    elif BACKEND == "torch":
        import torch

        tensors = [torch.tensor(np.asarray(a), requires_grad=True) for a in arrays]
        value = fn(*tensors)
        value.backward()
        value = value.detach()
        grads = [t.grad for t in tensors]
    else:
        pytest.skip(f"no autodiff on the {BACKEND} backend")
    return _numpy(value), tuple(_numpy(g) for g in grads)


def _numpy(x):
    x = keras.ops.convert_to_numpy(x)
    return np.asarray(x.astype(np.float32) if x.dtype.name == "bfloat16" else x, np.float64)


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (a norm-wise relative error)."""
    expected = np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-30)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / scale)


def assert_matches(value, grads, expected_value, expected_grads, rtol=RTOL, rtols=None):
    """Value and each gradient within `rtol` (`rtols` overrides it per gradient name)."""
    assert relative_error(value, expected_value) < rtol, (value, expected_value)
    names = ("image", "text", "log_temperature", "bias")
    for name, grad, expected in zip(names, grads, expected_grads):
        tolerance = (rtols or {}).get(name, rtol)
        assert relative_error(grad, expected) < tolerance, f"d loss / d {name}: {relative_error(grad, expected):.2e}"


# -- the sigmoid loss ----------------------------------------------------------


@pytest.mark.parametrize(
    "batch,log_temperature,bias",
    [(1, 0.0, 0.0), (8, np.log(10.0), -10.0), (33, 1.3, -2.5), (64, np.log(100.0), 3.0)],
)
@pytest.mark.parametrize("compiled", [False, True])
def test_sigmoid_loss_matches_float64_reference(batch, log_temperature, bias, compiled):
    image, text = random_embeddings(batch, 16, seed=batch)
    t, b = np.float32(log_temperature), np.float32(bias)
    value, grads = value_and_grads(sigmoid_loss, image, text, t, b, compiled=compiled)
    expected_value, expected_grads = reference_sigmoid(image, text, t, b)
    assert_matches(value, grads, expected_value, expected_grads)


@pytest.mark.parametrize("log_temperature", [np.log(1000.0), np.log(10000.0)])
@pytest.mark.parametrize("bias", [-10.0, 0.0, 50.0])
def test_sigmoid_loss_stable_for_large_logits(log_temperature, bias):
    # Identical and opposite pairs: logits near +-t (1e3, 1e4) on and off the diagonal.
    rng = np.random.default_rng(1)
    image, _ = random_embeddings(16, 8, seed=2)
    text = image * rng.choice([-1.0, 1.0], size=(16, 1)).astype("float32")
    t, b = np.float32(log_temperature), np.float32(bias)
    value, grads = value_and_grads(sigmoid_loss, image, text, t, b)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    expected_value, expected_grads = reference_sigmoid(image, text, t, b)
    assert_matches(value, grads, expected_value, expected_grads)


def test_sigmoid_loss_known_values():
    # Perfect pairs at t = 10, b = -10: positives have logit 0, negatives -10.
    z = np.eye(4, dtype="float32")
    expected = (4 * np.log(2.0) + 12 * np.log1p(np.exp(-10.0))) / 4
    assert abs(float(sigmoid_loss(z, z, np.log(10.0), -10.0)) - expected) < 1e-6
    # All logits 0: every pair costs log 2.
    assert abs(float(sigmoid_loss(z, z, -100.0, 0.0)) - 4 * np.log(2.0)) < 1e-5


def test_sigmoid_loss_accepts_shape_1_scalars_and_float64():
    image, text = random_embeddings(6, 4, dtype="float64")
    expected, _ = reference_sigmoid(image, text, 0.5, -1.0)
    value = sigmoid_loss(image, text, np.array([0.5]), np.array([-1.0]))
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert relative_error(_numpy(value), expected) < RTOL


def test_sigmoid_loss_bfloat16_is_computed_in_float32():
    image, text = random_embeddings(8, 16)
    value = sigmoid_loss(keras.ops.cast(image, "bfloat16"), keras.ops.cast(text, "bfloat16"), np.log(10.0), -10.0)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    rounded = [np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32")))
               for x in (image, text)]
    expected, _ = reference_sigmoid(*rounded, np.log(10.0), -10.0)
    assert relative_error(_numpy(value), expected) < RTOL


@pytest.mark.parametrize(
    "image_shape,text_shape,match",
    [((4, 8), (5, 8), "same batch size"), ((4, 8), (4, 6), "same width"), ((4,), (4,), "shape")],
)
def test_sigmoid_loss_rejects_mismatched_embeddings(image_shape, text_shape, match):
    with pytest.raises(ValueError, match=match):
        sigmoid_loss(np.ones(image_shape, "float32"), np.ones(text_shape, "float32"), 0.0, 0.0)


def test_sigmoid_loss_rejects_non_scalar_temperature():
    z = np.ones((4, 8), "float32")
    with pytest.raises(ValueError, match="log_temperature must be a scalar"):
        sigmoid_loss(z, z, np.zeros(3, "float32"), 0.0)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True, "auto"])
def test_sigmoid_loss_rejects_bad_chunk_size(chunk_size):
    z = np.ones((4, 8), "float32")
    with pytest.raises(ValueError, match="chunk_size"):
        sigmoid_loss(z, z, 0.0, 0.0, chunk_size=chunk_size)
    with pytest.raises(ValueError, match="chunk_size"):
        SigmoidLoss(chunk_size=chunk_size)


def test_sigmoid_loss_class_matches_function_and_round_trips():
    image, text = random_embeddings(10, 8)
    y_pred = {"image_embeddings": image, "text_embeddings": text, "log_temperature": 1.0, "bias": -2.0}
    expected = _numpy(sigmoid_loss(image, text, 1.0, -2.0))
    for method, chunk_size in (("auto", None), ("auto", 3), ("dense", None), ("chunked", 3)):
        loss = SigmoidLoss(method=method, chunk_size=chunk_size)
        assert abs(_numpy(loss(None, y_pred)) - expected) < 1e-5
        restored = SigmoidLoss.from_config(loss.get_config())
        assert (restored.method, restored.chunk_size, restored.name) == (method, chunk_size, "sigmoid_loss")
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert isinstance(restored, SigmoidLoss) and (restored.method, restored.chunk_size) == (method, chunk_size)
    with pytest.raises(ValueError, match="sample weights"):
        SigmoidLoss()(None, y_pred, sample_weight=np.ones(10))
    with pytest.raises(ValueError, match="dict"):
        SigmoidLoss()(None, image)


# -- the softmax (CLIP) baseline ---------------------------------------------


@pytest.mark.parametrize("batch,log_temperature", [(1, 0.0), (8, np.log(10.0)), (33, np.log(100.0))])
def test_softmax_loss_matches_float64_reference(batch, log_temperature):
    image, text = random_embeddings(batch, 16, seed=batch)
    t = np.float32(log_temperature)
    value, grads = value_and_grads(lambda a, b, c: softmax_loss(a, b, c), image, text, t)
    expected_value, expected_grads = reference_softmax(image, text, t)
    # dL/dt' of the softmax loss is a sum of terms that cancel (each row of
    # softmax - I sums to zero), so float32 reaches ~1e-5 of it, not better.
    assert_matches(value, grads, expected_value, expected_grads, rtols={"log_temperature": 1e-4})


def test_softmax_loss_ignores_bias_and_is_stable():
    image, _ = random_embeddings(8, 8, seed=3)
    text = -image
    value = _numpy(softmax_loss(image, text, np.log(1e4), 123.0))
    assert np.isfinite(value)
    assert relative_error(value, reference_softmax(image, text, np.log(1e4))[0]) < RTOL
    y_pred = {"image_embeddings": image, "text_embeddings": image, "log_temperature": 1.0, "bias": 5.0}
    assert abs(_numpy(SoftmaxLoss()(None, y_pred)) - _numpy(softmax_loss(image, image, 1.0))) < 1e-6
