"""SigLIP under keras.distribution on 8 simulated CPU devices (JAX).

Training under DataParallel and ModelParallel on (2, 4) and (4, 2) meshes must
follow one device step for step; every weight must sit where the layout map
says; the sigmoid loss of a sharded batch must be the global-batch loss; and
two processes joined by `keras.distribution.initialize` must train like one.
"""

import contextlib
import importlib.util
import json
import os
import pathlib
import sys

import keras
import numpy as np
import pytest

from keras_siglip import SigLIP, backend, distribution, sigmoid_loss
from keras_siglip.losses import sigmoid as sigmoid_module
from local_processes import free_port, run_together

pytestmark = pytest.mark.multi_device

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_distributed.py"
TINY = dict(image_size=16, patch_size=4, vocabulary_size=64, sequence_length=8)  # the example's defaults
BATCH, STEPS, LEARNING_RATE = 16, 3, 1e-3
FLAGS = ["--steps", str(STEPS), "--batch-size", str(BATCH), "--learning-rate", str(LEARNING_RATE), "--seed", "5"]
# A key bias has no gradient at all (softmax ignores a shift shared by all
# keys), so AdamW turns float noise into +-learning-rate steps there: the one
# weight compared by size rather than relative error.
ZERO_GRADIENT = "attention/key/bias"


def tiny_siglip():
    return SigLIP.from_variant("tiny", **TINY)


def random_pairs(count, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.uniform(-1, 1, (count, TINY["image_size"], TINY["image_size"], 3)).astype("float32"),
        "token_ids": rng.integers(0, TINY["vocabulary_size"], (count, TINY["sequence_length"])).astype("int32"),
    }


def relative_error(actual, expected):
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def load_example():
    spec = importlib.util.spec_from_file_location("train_distributed", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fit_steps(strategy, initial_weights, data, **compile_kwargs):
    """Losses of each step and the final weights (by path) of a tiny SigLIP."""
    example = load_example()
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = tiny_siglip()
        for variable in model.weights:
            variable.assign(initial_weights[variable.path])
        model.compile(learning_rate=LEARNING_RATE, **compile_kwargs)
        recorder = example.StepLosses()
        model.fit(data, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[recorder])
    return recorder.losses, {v.path: np.asarray(v.value) for v in model.weights}, model


@pytest.fixture(scope="module")
def reference():
    """Initial weights, the example's data, and the one-device run every distributed run must reproduce."""
    keras.utils.clear_session()
    keras.utils.set_random_seed(1)
    initial = {v.path: np.asarray(v.value) for v in tiny_siglip().weights}
    data = load_example().make_data(load_example().parse_args(FLAGS))
    losses, weights, _ = fit_steps(None, initial, data)
    return initial, data, losses, weights


def expected_spec(layout_map, variable):
    layout = layout_map[variable.path]
    axes = tuple(layout.axes) if layout is not None else ()
    return axes + (None,) * (len(variable.shape) - len(axes))


def assert_matches_reference(reference, losses, weights):
    _, _, expected_losses, expected_weights = reference
    assert len(losses) == STEPS
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
    assert losses[-1] < losses[0]  # it trained
    for path, expected in expected_weights.items():
        if path.endswith(ZERO_GRADIENT):
            assert np.abs(weights[path]).max() <= STEPS * LEARNING_RATE * 1.01, path
        else:
            assert relative_error(weights[path], expected) < 1e-4, path


# -- the layout map --------------------------------------------------------------


def test_layout_map_splits_every_large_weight_along_model():
    mesh = distribution.device_mesh((2, 4))
    layout_map = SigLIP.get_layout_map(mesh)
    with keras.StatelessScope(initialize_variables=False):  # shapes and paths only
        model = SigLIP.from_variant("B", image_size=64, patch_size=16, vocabulary_size=1000)
    large = [v for v in model.weights if np.prod(v.shape) >= 768 * 768]
    assert {v.path.split("/")[-2] for v in large} >= {"query", "key", "value", "output", "hidden",
                                                       "patch_projection", "token_embedding", "head"}
    for variable in large:
        layout = layout_map[variable.path]  # Keras raises if two rules matched
        assert layout is not None and "model" in layout.axes, variable.path
    assert layout_map["text_encoder/token_embedding/embeddings"].axes == ("model", "batch")
    assert layout_map["image_encoder/map_pooling/mlp/hidden/kernel"].axes == ("batch", "model")
    for path in ("siglip/log_temperature", "siglip/bias", "image_encoder/map_pooling/probe",
                 "image_encoder/block_1/attention/output/bias", "text_encoder/encoder_norm/gamma"):
        assert layout_map[path] is None, path
    # Patterns match whole paths, and still match under an outer name scope.
    assert layout_map["my_model/image_encoder/block_0/attention/query/kernel"].axes == ("batch", "model")
    assert layout_map["image_encoder/block_0/attention/query/kernel_extra"] is None


def test_layout_map_rejects_meshes_without_its_axes():
    mesh = distribution.device_mesh((2, 4), axis_names=("data", "tensor"))
    with pytest.raises(ValueError, match="model_dim='model' is not an axis"):
        SigLIP.get_layout_map(mesh)
    assert SigLIP.get_layout_map(mesh, model_dim="tensor", batch_dim="data")[
        "text_encoder/head/kernel"].axes == ("data", "tensor")
    with pytest.raises(ValueError, match="must be different"):
        SigLIP.get_layout_map(mesh, model_dim="data", batch_dim="data")
    with pytest.raises(ValueError, match="DeviceMesh"):
        SigLIP.get_layout_map((2, 4))


# -- training matches one device ---------------------------------------------------


@pytest.mark.parametrize("mesh_shape", [(2, 4), (4, 2)])
def test_model_parallel_fit_matches_one_device(reference, mesh_shape):
    strategy = distribution.model_parallel(mesh_shape)
    losses, weights, model = fit_steps(strategy, reference[0], reference[1])
    assert_matches_reference(reference, losses, weights)
    layout_map = SigLIP.get_layout_map(strategy.device_mesh)
    sharded = 0
    for variable in model.weights:
        spec = tuple(variable.value.sharding.spec)
        expected = expected_spec(layout_map, variable)
        assert spec + (None,) * (len(expected) - len(spec)) == expected, variable.path
        sharded += "model" in expected
    assert sharded >= 40  # q/k/v/out, MLP, patch, MAP, token table, head, position embeddings
    # Optimizer slots live where their weights do.
    slots = [v for v in model.optimizer.variables if "attention_query_kernel" in v.path]
    assert len(slots) == 2 * 5  # (m, v) of 2 + 2 block query kernels and the MAP head's
    for variable in slots:
        assert tuple(variable.value.sharding.spec) == ("batch", "model"), variable.path


def test_data_parallel_fit_matches_one_device(reference):
    strategy = distribution.data_parallel()
    assert strategy.device_mesh.shape == (8,)
    losses, weights, model = fit_steps(strategy, reference[0], reference[1])
    assert_matches_reference(reference, losses, weights)
    for variable in model.weights:
        assert variable.value.sharding.is_fully_replicated, variable.path


def test_data_parallel_fit_with_micro_batches_and_the_ring_matches_one_device(reference):
    import jax

    strategy = distribution.data_parallel()
    # Micro-batches of 8 on 8 devices: each device runs one pair of each micro-batch.
    losses, weights, model = fit_steps(strategy, reference[0], reference[1], micro_batch_size=8)
    assert_matches_reference(reference, losses, weights)
    with strategy.scope():
        y_pred = model(random_pairs(BATCH))
        compute = jax.jit(lambda y: model.compute_loss(y_pred=y))
        assert "collective_permute" in compute.lower(y_pred).as_text()  # the loss ran round the ring


@pytest.mark.parametrize("make_strategy", [distribution.data_parallel, lambda: distribution.model_parallel((2, 4))],
                         ids=["data", "model_2x4"])
def test_sigmoid_loss_under_distribution_is_the_global_batch_loss(make_strategy):
    import jax

    rng = np.random.default_rng(3)
    images = rng.normal(size=(32, 16)).astype("float32")
    texts = (images + 0.5 * rng.normal(size=(32, 16))).astype("float32")
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    log_temperature, bias = np.float32(np.log(10.0)), np.float32(-10.0)
    logits = np.exp(np.float64(log_temperature)) * images.astype("float64") @ texts.T.astype("float64") + bias
    labels = 2 * np.eye(32) - 1
    expected = np.sum(np.logaddexp(0, -labels * logits)) / 32

    loss_and_grads = jax.jit(jax.value_and_grad(sigmoid_loss, argnums=(0, 1)))
    dense_loss, dense_grads = loss_and_grads(images, texts, log_temperature, bias)
    strategy = make_strategy()
    with strategy.scope():
        layout = strategy.get_data_layout(images.shape).backend_layout
        sharded = [jax.device_put(x, layout) for x in (images, texts)]
        loss, grads = loss_and_grads(*sharded, log_temperature, bias)
    assert sharded[0].sharding.spec[0] == "batch"
    plan = getattr(sigmoid_module, "plan_sigmoid_loss", None)  # the ring of issue 3, once it exists
    if plan is not None:
        with strategy.scope():
            assert plan(sharded[0]).method == "ring"
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(dense_loss), rtol=1e-5)
    for grad, dense in zip(grads, dense_grads):
        assert relative_error(np.asarray(grad), np.asarray(dense)) < 1e-5


# -- set-ups and their errors --------------------------------------------------------


def test_tpu_v4_meshes():
    import jax

    devices = jax.devices()
    assert distribution.tpu_v4_mesh(8, model_size=2).shape == (4, 2)
    assert distribution.tpu_v4_mesh(4, model_size=4, devices=devices[:4]).shape == (1, 4)
    assert sorted(distribution.TPU_V4_SLICES) == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="v4-32 slice has 16 chips but 8 devices"):
        distribution.tpu_v4_mesh(16, model_size=4)
    with pytest.raises(ValueError, match=r"\[4, 8, 16, 32\] chips"):
        distribution.tpu_v4_mesh(12)
    with pytest.raises(ValueError, match="positive divisor of 8"):
        distribution.tpu_v4_mesh(8, model_size=3)


def test_mesh_larger_than_device_count_is_rejected():
    with pytest.raises(ValueError, match="needs 16 devices but only 8 are available"):
        distribution.model_parallel((4, 4))
    with pytest.raises(ValueError, match=r"\(2, 4\) needs 8 devices; 4 were given"):
        distribution.device_mesh((2, 4), devices=keras.distribution.list_devices()[:4])


def test_batch_not_divisible_by_batch_axis_is_rejected():
    strategy = distribution.data_parallel()
    with strategy.scope():
        model = tiny_siglip()
        model.compile()
        with pytest.raises(ValueError, match="Cannot split a batch of 12 examples .* 8 devices of the mesh's 'batch'"):
            model.fit(random_pairs(12), batch_size=12, verbose=0)


def test_weight_that_mesh_cannot_split_is_named():
    with distribution.model_parallel((1, 8)).scope():
        with pytest.raises(ValueError, match=r"'text_encoder/token_embedding/embeddings' of shape \(60, 32\)"):
            SigLIP.from_variant("tiny", **dict(TINY, vocabulary_size=60))


def test_other_backends_are_told_to_use_one_device(monkeypatch):
    monkeypatch.setattr(backend, "BACKEND", "tensorflow")
    for make in (distribution.data_parallel, lambda: distribution.model_parallel((2, 4)),
                 distribution.initialize_multi_host):
        with pytest.raises(ValueError, match="needs the JAX backend.*'tensorflow'.*one device"):
            make()


# -- two processes on one machine ---------------------------------------------------------


def test_two_processes_train_like_one(reference, tmp_path):
    """Two processes x 4 CPU devices, joined over 127.0.0.1, on a (2, 4) mesh across both.

    Each runs examples/train_distributed.py from the reference's initial weights
    on the same data; together they must reproduce the one-device run.
    """
    np.savez(tmp_path / "initial.npz", **reference[0])
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    command = [sys.executable, str(EXAMPLE), "--strategy", "model", "--mesh", "2,4", *FLAGS,
               "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2",
               "--load-weights", str(tmp_path / "initial.npz"),
               "--save-weights", str(tmp_path / "trained.npz"), "--losses-out", str(tmp_path / "losses.json")]
    run_together([command + ["--process-id", str(i)] for i in range(2)], [env, env], ROOT)
    trained = np.load(tmp_path / "trained.npz")
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert_matches_reference(reference, losses, {path: trained[path] for path in trained.files})
