"""The blockwise sigmoid loss: same value and gradients as the dense form, on every backend."""

import keras
import numpy as np
import pytest
from conftest import random_pairs, tiny_siglip
from test_losses import (
    BACKEND,
    RTOL,
    _numpy,
    assert_matches,
    reference_sigmoid,
    random_embeddings,
    relative_error,
    value_and_grads,
)

from keras_siglip import SigmoidLoss, sigmoid_loss
from keras_siglip.losses.chunked import chunked_sigmoid_loss
from keras_siglip.losses.dense import dense_sigmoid_loss
from keras_siglip.losses.plan import LossPlan, plan_blocks
from keras_siglip.losses.sigmoid import plan_sigmoid_loss

T, B = np.float32(np.log(10.0)), np.float32(-5.0)


def _dense(image, text, t, b):
    cast = keras.ops.cast
    return dense_sigmoid_loss(cast(image, "float32"), cast(text, "float32"), cast(t, "float32"), cast(b, "float32"))


@pytest.mark.parametrize(
    "batch,chunk_size",
    [(1, 1), (7, 1), (7, 3), (32, 8), (37, 8), (37, 64), (50, 16), (50, 49)],
)
def test_chunked_equals_dense_and_reference(batch, chunk_size):
    image, text = random_embeddings(batch, 24, seed=batch + chunk_size)
    args = (image, text, T, B)
    assert plan_sigmoid_loss(image, chunk_size=chunk_size).method == "chunked"
    value, grads = value_and_grads(lambda *a: sigmoid_loss(*a, chunk_size=chunk_size), *args)
    dense_value, dense_grads = value_and_grads(_dense, *args)
    assert_matches(value, grads, dense_value, dense_grads)
    assert_matches(value, grads, *reference_sigmoid(*args))


@pytest.mark.parametrize("batch,chunk_size", [(37, 8), (64, 16)])
def test_chunked_compiled_equals_reference(batch, chunk_size):
    """Under jax.jit / tf.function the loop is one traced body."""
    image, text = random_embeddings(batch, 16, seed=3)
    value, grads = value_and_grads(lambda *a: sigmoid_loss(*a, chunk_size=chunk_size), image, text, T, B,
                                   compiled=True)
    assert_matches(value, grads, *reference_sigmoid(image, text, T, B))


@pytest.mark.parametrize(
    "batch,col_chunk,row_chunk,two_pass",
    [(37, 8, 5, False), (37, 8, None, True), (37, 8, 5, True), (40, 10, 10, False), (9, 4, 2, True)],
)
def test_row_blocks_and_two_pass_equal_reference(batch, col_chunk, row_chunk, two_pass):
    """The variants the automatic plan picks for huge batches (rows split too, or a second sweep)."""
    image, text = random_embeddings(batch, 16, seed=batch)
    plan = LossPlan("chunked", col_chunk=col_chunk, row_chunk=row_chunk, two_pass=two_pass)
    value, grads = value_and_grads(lambda *a: chunked_sigmoid_loss(*a, plan), image, text, T, B)
    assert_matches(value, grads, *reference_sigmoid(image, text, T, B))


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_chunked_large_logits_match_reference(chunk_size):
    image, _ = random_embeddings(12, 8, seed=5)
    text = image * np.where(np.arange(12) % 3 == 0, -1.0, 1.0)[:, None].astype("float32")
    t, b = np.float32(np.log(1000.0)), np.float32(-10.0)
    value, grads = value_and_grads(lambda *a: sigmoid_loss(*a, chunk_size=chunk_size), image, text, t, b)
    assert_matches(value, grads, *reference_sigmoid(image, text, t, b))


def test_backward_scales_by_upstream_gradient():
    image, text = random_embeddings(11, 8)
    value, grads = value_and_grads(lambda *a: -3.0 * sigmoid_loss(*a, chunk_size=4), image, text, T, B)
    expected_value, expected_grads = reference_sigmoid(image, text, T, B)
    assert_matches(value, grads, -3.0 * expected_value, [-3.0 * g for g in expected_grads])


@pytest.mark.parametrize("log_temperature", [0.0, np.log(100.0), np.log(1000.0)])
@pytest.mark.parametrize("variant", ["dense", "chunked", "rows", "two_pass"])
def test_bfloat16_embeddings_give_finite_loss_and_gradients(log_temperature, variant):
    image, text = random_embeddings(24, 16, seed=7, match=0.05)
    text[::5] *= -1.0  # some positives far off, some negatives near +t
    image = keras.ops.cast(image, "bfloat16")
    text = keras.ops.cast(text, "bfloat16")
    fn = {
        "dense": lambda *a: sigmoid_loss(*a),
        "chunked": lambda *a: sigmoid_loss(*a, chunk_size=5),
        "rows": lambda *a: chunked_sigmoid_loss(*a, LossPlan("chunked", col_chunk=5, row_chunk=7)),
        "two_pass": lambda *a: chunked_sigmoid_loss(*a, LossPlan("chunked", col_chunk=5, two_pass=True)),
    }[variant]
    if variant in ("rows", "two_pass"):
        fn = _float32_unless_jax(fn)
    t, b = np.float32(log_temperature), np.float32(-10.0)
    if BACKEND == "torch":  # torch.tensor() cannot take a NumPy bfloat16 array: make torch tensors directly
        value, grads = _torch_value_and_grads(fn, image, text, t, b)
    else:
        value, grads = value_and_grads(fn, image, text, t, b)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    rounded = [_numpy(x) for x in (image, text)]
    expected_value, expected_grads = reference_sigmoid(*rounded, t, b)
    assert relative_error(value, expected_value) < 1e-5  # the loss is float32 from bf16 inputs
    for grad, expected in zip(grads, expected_grads):
        assert relative_error(grad, expected) < 2e-2  # bf16 gradients (and, on JAX, bf16 G in the matmuls)


def _float32_unless_jax(fn):
    """The private entry point takes float32 on TensorFlow and PyTorch (sigmoid_loss casts for them)."""
    if BACKEND == "jax":
        return fn
    cast = keras.ops.cast
    return lambda a, b, t, c: fn(cast(a, "float32"), cast(b, "float32"), t, c)


def _torch_value_and_grads(fn, *arrays):
    import torch

    tensors = [keras.ops.convert_to_tensor(a).detach().clone().requires_grad_(True) for a in arrays]
    value = fn(*tensors)
    value.backward()
    return _numpy(value.detach()), tuple(_numpy(t.grad) for t in tensors)


def test_bfloat16_gradients_keep_the_embedding_dtype():
    image, text = (keras.ops.cast(x, "bfloat16") for x in random_embeddings(16, 8))
    if BACKEND == "jax":
        import jax

        grads = jax.grad(lambda a, b: sigmoid_loss(a, b, T, B, chunk_size=4), argnums=(0, 1))(image, text)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch([image, text])
            loss = sigmoid_loss(image, text, T, B, chunk_size=4)
        grads = tape.gradient(loss, [image, text])
    else:
        image, text = (x.detach().clone().requires_grad_(True) for x in (image, text))
        sigmoid_loss(image, text, T, B, chunk_size=4).backward()
        grads = (image.grad, text.grad)
    assert [keras.backend.standardize_dtype(g.dtype) for g in grads] == ["bfloat16", "bfloat16"]


# -- the automatic plan ----------------------------------------------------------


def test_automatic_plan():
    budget = 2**20  # as if the block budget were 4 MiB of float32
    plan = plan_blocks
    assert plan(1024, 768, "float32", block_budget=budget).method == "dense"
    big = plan(4096, 768, "float32", block_budget=budget)
    assert big.method == "chunked" and big.col_chunk * 4096 <= budget and big.row_chunk is None
    huge = plan(2**16, 768, "float32", block_budget=budget)
    assert huge.method == "chunked" and huge.row_chunk is not None
    assert huge.row_chunk * huge.col_chunk <= max(budget, huge.col_chunk**2)
    forced = plan(100, 768, "float32", chunk_size=7, block_budget=budget)
    assert (forced.method, forced.col_chunk, forced.row_chunk) == ("chunked", 7, None)
    assert plan(100, 8, "float32", chunk_size=1000).col_chunk == 100
    assert plan(None, 768, "float32").method == "chunked"  # unknown batch (a TF graph): never B x B
    # The second sweep only pays off for 16-bit embeddings with a big float32 accumulator.
    assert not plan(2**16, 768, "bfloat16").two_pass
    assert plan(2**20, 768, "bfloat16").two_pass == (BACKEND == "jax")
    assert not plan(2**20, 768, "float32").two_pass


def test_default_is_dense_for_small_and_chunked_for_large_batches():
    assert plan_sigmoid_loss(np.zeros((256, 8), "float32")).method == "dense"
    plan = plan_sigmoid_loss(np.zeros((16384, 8), "float32"))
    assert plan.method == "chunked" and plan.col_chunk < 16384



# -- the explicit method ---------------------------------------------------------


@pytest.mark.parametrize(
    "method,chunk_size",
    [("dense", None), ("chunked", None), ("chunked", 8), ("chunked", 37), ("auto", None), ("auto", 5)],
)
@pytest.mark.parametrize("compiled", [False, True])
def test_every_method_equals_dense(method, chunk_size, compiled):
    image, text = random_embeddings(37, 16, seed=11)
    args = (image, text, T, B)
    value, grads = value_and_grads(lambda *a: sigmoid_loss(*a, method=method, chunk_size=chunk_size), *args,
                                   compiled=compiled)
    assert_matches(value, grads, *value_and_grads(_dense, *args))
    assert_matches(value, grads, *reference_sigmoid(*args))


def test_auto_picks_what_it_picked_before():
    small, large = np.zeros((256, 8), "float32"), np.zeros((16384, 8), "float32")
    assert plan_sigmoid_loss(small).method == "dense"  # no distribution, B x B small
    assert plan_sigmoid_loss(small, chunk_size=16).method == "chunked"  # a chunk size forces blocks
    assert plan_sigmoid_loss(large).method == "chunked"
    for embeddings in (small, large):
        auto = plan_sigmoid_loss(embeddings)
        expected = plan_blocks(*embeddings.shape, "float32")
        assert (auto.method, auto.col_chunk, auto.row_chunk) == (expected.method, expected.col_chunk,
                                                                 expected.row_chunk)
    # "chunked" on a small batch takes the blocks "auto" would use, were it not dense.
    chunked = plan_sigmoid_loss(small, "chunked")
    assert (chunked.method, chunked.col_chunk) == ("chunked", 256)
    assert plan_sigmoid_loss(large, "dense").method == "dense"


@pytest.mark.parametrize("method", ["fast", "", None, "Dense"])
def test_unknown_method_is_rejected(method):
    z = np.ones((4, 8), "float32")
    with pytest.raises(ValueError, match="method must be one of"):
        sigmoid_loss(z, z, 0.0, 0.0, method=method)
    with pytest.raises(ValueError, match="method must be one of"):
        SigmoidLoss(method=method)


def test_dense_takes_no_chunk_size():
    z = np.ones((4, 8), "float32")
    with pytest.raises(ValueError, match="method='dense'.*no chunk_size"):
        sigmoid_loss(z, z, 0.0, 0.0, method="dense", chunk_size=2)
    with pytest.raises(ValueError, match="method='dense'.*no chunk_size"):
        SigmoidLoss(method="dense", chunk_size=2)


def test_ring_without_a_distribution_says_why():
    z = np.ones((4, 8), "float32")
    problem = "no keras.distribution is active" if BACKEND == "jax" else "it runs only on the JAX backend"
    with pytest.raises(ValueError, match=f"method='ring' cannot be used: {problem}"):
        sigmoid_loss(z, z, 0.0, 0.0, method="ring")
    loss = SigmoidLoss(method="ring")  # the distribution may come later: checked when called
    y_pred = {"image_embeddings": z, "text_embeddings": z, "log_temperature": 0.0, "bias": 0.0}
    with pytest.raises(ValueError, match="method='ring' cannot be used"):
        loss(None, y_pred)


@pytest.mark.parametrize("method,chunk_size", [("auto", None), ("dense", None), ("chunked", 3), ("ring", 4)])
def test_config_round_trip_keeps_method_and_chunk_size(method, chunk_size):
    loss = SigmoidLoss(method=method, chunk_size=chunk_size)
    config = loss.get_config()
    assert (config["method"], config["chunk_size"]) == (method, chunk_size)
    for restored in (SigmoidLoss.from_config(config),
                     keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))):
        assert isinstance(restored, SigmoidLoss)
        assert (restored.method, restored.chunk_size, restored.name) == (method, chunk_size, "sigmoid_loss")


def test_saved_model_keeps_the_loss_method(tmp_path):
    data = random_pairs(6, seed=2)
    model = tiny_siglip()
    model.compile(optimizer="sgd", loss=SigmoidLoss(method="chunked", chunk_size=4))
    model.fit(data, batch_size=6, epochs=1, verbose=0)
    path = str(tmp_path / "chunked.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, SigmoidLoss)
    assert (loaded.loss.method, loaded.loss.chunk_size) == ("chunked", 4)
    y_pred = loaded(data)
    assert abs(_numpy(loaded.compute_loss(y_pred=y_pred)) - _numpy(model.compute_loss(y_pred=model(data)))) < 1e-5

@pytest.mark.skipif(BACKEND != "jax", reason="reads XLA's compiled memory analysis")
def test_chunked_never_holds_the_full_logits():
    """XLA's own account of temporary memory: forward+backward stays at O(B*c + B*d), far below B*B."""
    import jax

    batch, dim, chunk = 2048, 32, 128
    image, text = random_embeddings(batch, dim)
    args = [jax.numpy.asarray(x) for x in (image, text, T, B)]

    def temp_bytes(fn):
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
        return step.lower(*args).compile().memory_analysis().temp_size_in_bytes

    full_logits = batch * batch * 4
    chunked_bytes = temp_bytes(lambda *a: sigmoid_loss(*a, chunk_size=chunk))
    dense_bytes = temp_bytes(dense_sigmoid_loss)
    assert dense_bytes >= full_logits
    assert chunked_bytes < full_logits / 4, (chunked_bytes, full_logits)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="only TensorFlow traces with an unknown batch size")
@pytest.mark.parametrize("chunk_size", [None, 8])
def test_tensorflow_graph_with_unknown_batch_size(chunk_size):
    import tensorflow as tf

    spec = [tf.TensorSpec([None, 16]), tf.TensorSpec([None, 16]), tf.TensorSpec([]), tf.TensorSpec([])]

    @tf.function(input_signature=spec)
    def step(*tensors):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = sigmoid_loss(*tensors, chunk_size=chunk_size)
        return loss, tape.gradient(loss, tensors)

    for batch in (5, 37):
        image, text = random_embeddings(batch, 16, seed=batch)
        value, grads = step(image, text, T, B)
        assert_matches(_numpy(value), [_numpy(g) for g in grads], *reference_sigmoid(image, text, T, B))


# -- in the model ----------------------------------------------------------------


def test_siglip_trains_with_chunked_loss_and_matches_dense():
    data = random_pairs(12, seed=4)
    model = tiny_siglip()
    y_pred = model(data)
    dense = _numpy(model.compute_loss(y_pred=y_pred))
    model.compile(optimizer="sgd", loss=SigmoidLoss(chunk_size=5))
    chunked_loss = _numpy(model.compute_loss(y_pred=y_pred))
    assert abs(chunked_loss - dense) <= RTOL * abs(dense)
    history = model.fit(data, batch_size=6, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
