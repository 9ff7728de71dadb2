"""Shared fixtures. The backend is chosen by KERAS_BACKEND before pytest starts."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # The tests compile the same tiny programs many times: with XLA's persistent
    # cache each is compiled once per run (also in the subprocesses tests start).
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="keras_siglip_tests_xla_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    # Most of XLA:CPU's compile time for a tiny model goes to LLVM's code optimisation,
    # which buys nothing at this size (the tiny model's first training step: 9.7 s
    # instead of 13.6 s). The HLO and float semantics are those of the default level.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import keras
import numpy as np
import pytest

from keras_siglip import SigLIP

TINY = dict(image_size=16, patch_size=4, vocabulary_size=64, sequence_length=8)


def pytest_collection_modifyitems(config, items):
    # tools/test_all.sh runs the suite once per backend: what does not depend on it runs once.
    if keras.backend.backend() == "jax":
        return
    skip = pytest.mark.skip(reason="backend-independent: runs in the KERAS_BACKEND=jax run")
    for item in items:
        if item.get_closest_marker("backend_independent"):
            item.add_marker(skip)


def _tensorflow_gradient_registry():
    if keras.backend.backend() != "tensorflow":
        return None
    from tensorflow.python.framework import ops

    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Without Python's full garbage collection, which costs seconds per test on
    # TensorFlow once many traced functions are alive.
    keras.utils.clear_session(free_memory=False)
    keras.config.set_dtype_policy("float32")
    gradient_registry = _tensorflow_gradient_registry()
    registered_before = set(gradient_registry) if gradient_registry is not None else None
    yield
    keras.config.set_dtype_policy("float32")
    if gradient_registry is not None:
        # Every traced tf.custom_gradient (Keras's optimizer all-reduces its gradients
        # through one) registers its gradient function in TensorFlow's global registry
        # for good, and with it the whole traced train step: ~55,000 objects per `fit`
        # that no model uses once its test is over, but that every later full
        # garbage collection walks again. A gradient is looked up only while a graph
        # is traced, so the entries of a finished test are dead weight.
        for name in set(gradient_registry) - registered_before:
            if name.startswith("CustomGradient-"):
                del gradient_registry[name]


def tiny_siglip(**kwargs):
    """A SigLIP with 2-block, width-32 towers on 16x16 images and 8 tokens."""
    config = dict(TINY)
    config.update(kwargs)
    return SigLIP.from_variant("tiny", **config)


def random_pairs(batch_size, seed=0, image_size=TINY["image_size"], sequence_length=TINY["sequence_length"],
                 vocabulary_size=TINY["vocabulary_size"]):
    rng = np.random.default_rng(seed)
    return {
        "images": rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype("float32"),
        "token_ids": rng.integers(0, vocabulary_size, (batch_size, sequence_length)).astype("int32"),
    }
