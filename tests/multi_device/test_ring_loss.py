"""The ring sigmoid loss on 8 simulated CPU devices (JAX, XLA_FLAGS set before import).

Under a distribution with a batch axis, `sigmoid_loss` (and so
`SigLIP.compute_loss`) computes the loss round a ring of devices: same value
and gradients as the dense loss of the global batch, each device holding only
(B/D)^2 logits.
"""

import keras
import numpy as np
import pytest

from keras_siglip import SigLIP, SigmoidLoss, backend, sigmoid_loss
from keras_siglip.losses.sigmoid import dense_sigmoid_loss, plan_sigmoid_loss

pytestmark = pytest.mark.multi_device

T, BIAS = np.float32(np.log(10.0)), np.float32(-5.0)


def embeddings(batch, dim=16, seed=0, match=0.5):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch, dim))
    text = image + match * rng.normal(size=(batch, dim))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return image.astype("float32"), text.astype("float32")


def relative_error(actual, expected):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def loss_and_grads(fn, *args):
    import jax

    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(*args)


def data_parallel():
    return keras.distribution.DataParallel(devices=keras.distribution.list_devices())


def model_parallel(shape=(4, 2)):
    mesh = keras.distribution.DeviceMesh(shape, ("batch", "model"), keras.distribution.list_devices())
    return keras.distribution.ModelParallel(layout_map=keras.distribution.LayoutMap(mesh), batch_dim_name="batch")


def sharded(strategy, *arrays):
    import jax

    layout = strategy.get_data_layout(arrays[0].shape).backend_layout
    return [jax.device_put(a, layout) for a in arrays]


def assert_same(actual, expected, rtol=1e-5):
    (value, grads), (expected_value, expected_grads) = actual, expected
    assert relative_error(value, expected_value) < rtol
    for name, grad, reference in zip(("image", "text", "log_temperature", "bias"), grads, expected_grads):
        assert relative_error(grad, reference) < rtol, name


def test_eight_simulated_devices():
    import jax

    assert jax.device_count() == 8


@pytest.mark.parametrize("make_strategy,devices", [(data_parallel, 8), (model_parallel, 4),
                                                   (lambda: model_parallel((2, 4)), 2)],
                         ids=["data_parallel", "model_parallel_4x2", "model_parallel_2x4"])
@pytest.mark.parametrize("batch,chunk_size", [(64, None), (64, 3), (40, 2)])
def test_ring_equals_dense_global_batch(make_strategy, devices, batch, chunk_size):
    image, text = embeddings(batch, seed=batch)
    expected = loss_and_grads(dense_sigmoid_loss, image, text, T, BIAS)
    strategy = make_strategy()
    with strategy.scope():
        for method in ("auto", "ring"):
            plan = plan_sigmoid_loss(image, method, chunk_size)
            assert (plan.method, plan.devices) == ("ring", devices)
            assert plan.col_chunk == (chunk_size or batch // devices)
            got = loss_and_grads(lambda *a: sigmoid_loss(*a, method=method, chunk_size=chunk_size),
                                 *sharded(strategy, image, text), T, BIAS)
            assert_same(got, expected)


def test_ring_uses_collective_permutes_and_shards_the_gradients():
    import jax

    image, text = embeddings(64)
    strategy = data_parallel()
    with strategy.scope():
        step = jax.jit(jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3)))
        args = (*sharded(strategy, image, text), T, BIAS)
        hlo = step.lower(*args).as_text()
        _, grads = step(*args)
    # Inside the loop: texts and their gradient travel; after it, the gradient goes home.
    assert hlo.count("collective_permute") == 3
    assert grads[0].sharding.spec[0] == "batch" and grads[1].sharding.spec[0] == "batch"


def test_bfloat16_ring_is_finite_at_large_temperature():
    import jax.numpy as jnp

    image, text = embeddings(64, match=0.05)
    text[::3] *= -1
    t = np.float32(np.log(1000.0))
    strategy = data_parallel()
    with strategy.scope():
        args = [jnp.asarray(x, jnp.bfloat16) for x in sharded(strategy, image, text)]
        value, grads = loss_and_grads(sigmoid_loss, *args, t, BIAS)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
    assert grads[0].dtype == jnp.bfloat16
    expected, _ = loss_and_grads(dense_sigmoid_loss, *[np.asarray(a, np.float32) for a in args], t, BIAS)
    assert relative_error(value, expected) < 1e-5


def test_no_ring_without_a_usable_batch_axis():
    image, _ = embeddings(36)  # 36 does not split over 8 devices
    with data_parallel().scope():
        assert plan_sigmoid_loss(image).method == "dense"
        assert plan_sigmoid_loss(image, chunk_size=4).method == "chunked"
        with pytest.raises(ValueError, match="batch of 36 does not split evenly over the 8 devices of axis 'batch'"):
            sigmoid_loss(image, image, T, BIAS, method="ring")
    one_device = keras.distribution.DataParallel(devices=keras.distribution.list_devices()[:1])
    with one_device.scope():
        assert backend.ring_batch_axis() is None
        with pytest.raises(ValueError, match="DataParallel has no batch axis spanning more than one device"):
            plan_sigmoid_loss(embeddings(64)[0], "ring")
    assert plan_sigmoid_loss(embeddings(64)[0]).method == "dense"  # no distribution
    with pytest.raises(ValueError, match="no keras.distribution is active"):
        plan_sigmoid_loss(embeddings(64)[0], "ring")


@pytest.mark.parametrize("method,chunk_size", [("dense", None), ("chunked", None), ("chunked", 5)])
def test_other_methods_under_a_distribution_stay_off_the_ring(method, chunk_size):
    import jax

    image, text = embeddings(64, seed=3)
    expected = loss_and_grads(dense_sigmoid_loss, image, text, T, BIAS)
    strategy = data_parallel()
    with strategy.scope():
        assert plan_sigmoid_loss(image, method, chunk_size).method == method
        fn = lambda *a: sigmoid_loss(*a, method=method, chunk_size=chunk_size)  # noqa: E731
        args = (*sharded(strategy, image, text), T, BIAS)
        assert "collective_permute" not in jax.jit(fn).lower(*args).as_text()
        got = loss_and_grads(fn, *args)
    assert_same(got, expected)


@pytest.mark.parametrize("loss", [None, SigmoidLoss(chunk_size=2), SigmoidLoss(method="ring")],
                         ids=["default", "chunk_2", "ring"])
def test_siglip_compute_loss_uses_the_ring(loss):
    import jax

    rng = np.random.default_rng(0)
    data = {
        "images": rng.uniform(-1, 1, (16, 16, 16, 3)).astype("float32"),
        "token_ids": rng.integers(0, 64, (16, 8)).astype("int32"),
    }
    strategy = data_parallel()
    with strategy.scope():
        model = SigLIP.from_variant("tiny", image_size=16, patch_size=4, vocabulary_size=64, sequence_length=8)
        model.compile(optimizer="sgd", **({} if loss is None else {"loss": loss}))
        y_pred = model(data)
        assert plan_sigmoid_loss(y_pred["image_embeddings"]).method == "ring"
        compute = jax.jit(lambda y: model.compute_loss(y_pred=y))
        assert "collective_permute" in compute.lower(y_pred).as_text()
        ring_loss = float(compute(y_pred))
        dense = float(dense_sigmoid_loss(y_pred["image_embeddings"], y_pred["text_embeddings"],
                                         model.log_temperature.value, model.bias.value))
        if loss is None:  # one training step under the distribution, through the ring
            history = model.fit(data, batch_size=16, epochs=1, verbose=0)
            assert np.isfinite(history.history["loss"]).all()
    assert relative_error(ring_loss, dense) < 1e-5


def test_per_device_memory_falls_as_local_batch_squared():
    """XLA's compiled per-device temporary memory: ring ~ (B/8)^2, the dense loss ~ B^2/8."""
    import jax

    dim = 8
    strategy = data_parallel()
    temp = {}
    with strategy.scope():
        for batch in (1024, 2048):
            image, text = embeddings(batch, dim)
            args = (*sharded(strategy, image, text), T, BIAS)
            for name, fn in (("ring", sigmoid_loss), ("dense", dense_sigmoid_loss)):
                step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
                temp[name, batch] = step.lower(*args).compile().memory_analysis().temp_size_in_bytes
    local_logits = (2048 // 8) ** 2 * 4
    assert temp["ring", 2048] < 4 * local_logits  # a few (B/8)^2 blocks, not B^2/8
    assert temp["dense", 2048] >= 2048 * 2048 * 4 / 8
    assert temp["ring", 2048] < temp["dense", 2048] / 4
