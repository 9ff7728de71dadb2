"""The one place where keras_siglip asks which Keras backend is active.

Everything else is written with `keras.ops`. Two things cannot be: checking the
*values* of an input (a token id outside the vocabulary would otherwise be clamped
silently by JAX and GPU gathers) and turning such a failure into a `ValueError`
inside a compiled training step. Each backend gets that here:

- eager tensors (PyTorch, eager TensorFlow, NumPy, concrete JAX arrays) are
  checked on the host, directly;
- TensorFlow graphs get an assertion op whose failure `guard_step_function`
  turns back into a `ValueError`;
- JAX traces cannot raise on values, so `guard_step_function` checks each batch
  on the host before it enters the jitted step.
"""

import re

import keras
import numpy as np

BACKEND = keras.backend.backend()
_ERROR_MARK = "keras_siglip input error: "


def is_concrete(x):
    """True when `x`'s values can be read now (not a trace or a graph tensor)."""
    if isinstance(x, (np.ndarray, np.generic, int, float)):
        return True
    if isinstance(x, keras.KerasTensor):
        return False
    if BACKEND == "jax":
        import jax

        return not isinstance(x, jax.core.Tracer)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and hasattr(x, "numpy")
    if BACKEND == "torch":
        import torch

        if torch.compiler.is_compiling():
            return False
        return not (isinstance(x, torch.Tensor) and x.device.type == "meta")
    return True


def check(condition, message, *tensors):
    """Raise `ValueError(message)` when `condition` (a bool or a scalar tensor) fails.

    Returns `tensors` unchanged; in a TensorFlow graph they come back tied to
    an assertion so the check runs before anything that consumes them.
    """
    if isinstance(condition, (bool, np.bool_)):
        if not condition:
            raise ValueError(message)
        return tensors
    if is_concrete(condition):
        if not bool(keras.ops.convert_to_numpy(condition)):
            raise ValueError(message)
        return tensors
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.control_dependencies([tf.debugging.Assert(condition, [_ERROR_MARK + message])]):
            return tuple(tf.identity(t) for t in tensors)
    # A JAX trace: the host-side check in `guard_step_function` covers it.
    return tensors


class _CheckedIterator:
    def __init__(self, iterator, check_batch):
        self._iterator = iterator
        self._check_batch = check_batch

    def __iter__(self):
        return self

    def __next__(self):
        data = next(self._iterator)
        self._check_batch(data)
        return data


def guard_step_function(step_function, check_batch):
    """Wraps a Keras train/test/predict function so bad inputs raise `ValueError`.

    Args:
        step_function: what `Model.make_*_function` stored.
        check_batch: `check_batch(data)` validates one batch `(x, y, sample_weight)`
            whose values are on the host.
    """
    if step_function is None or getattr(step_function, "_keras_siglip_guarded", False):
        return step_function
    if BACKEND == "jax":

        def guarded(state, iterator):
            return step_function(state, _CheckedIterator(iter(iterator), check_batch))

    elif BACKEND == "tensorflow":
        import tensorflow as tf

        def guarded(*args, **kwargs):
            try:
                return step_function(*args, **kwargs)
            except tf.errors.InvalidArgumentError as error:
                found = re.search(re.escape(_ERROR_MARK) + r"(.*?)(?:\]|\n|$)", error.message)
                if found is None:
                    raise
                raise ValueError(found.group(1).strip()) from None

    else:  # PyTorch and NumPy run the step eagerly: the model's own checks raise.
        return step_function
    guarded._keras_siglip_guarded = True
    return guarded
