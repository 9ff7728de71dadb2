"""`preprocessing_function`: a TensorFlow preprocessing method that hands back backend tensors.

keras-hub has a decorator of this name, but only under its private `keras_hub.src`
(no public export in keras-hub 0.32); this is the part `SigLIPTokenizer` and
`SigLIPImagePreprocessor` need. Their decorated methods take the raw inputs and
convert them to TensorFlow themselves, and return dense tensors.
"""

import functools
import threading

import keras

from keras_siglip.extras import require

tf = require("tensorflow", purpose="SigLIP's tokenizer and image preprocessor")

_DEPTH = threading.local()


def _to_backend(x):
    if isinstance(x, (tf.Tensor, tf.Variable)):
        return keras.ops.convert_to_tensor(x.numpy(), dtype=keras.backend.standardize_dtype(x.dtype))
    return x


def preprocessing_function(fn):
    """Runs `fn(self, inputs, **kwargs)` on TensorFlow's CPU device.

    Called eagerly, its TensorFlow outputs come back as tensors of the active
    Keras backend; traced (inside `tf.data` or a `tf.function`) or nested in
    another decorated call, they stay TensorFlow tensors.
    """

    @functools.wraps(fn)
    def wrapper(self, inputs, **kwargs):
        _DEPTH.value = getattr(_DEPTH, "value", 0) + 1
        try:
            with tf.device("cpu"):
                outputs = fn(self, inputs, **kwargs)
        finally:
            _DEPTH.value -= 1
        if _DEPTH.value or not tf.executing_eagerly() or keras.backend.backend() == "tensorflow":
            return outputs
        return keras.tree.map_structure(_to_backend, outputs)

    return wrapper
