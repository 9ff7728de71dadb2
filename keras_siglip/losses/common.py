"""Input handling shared by the contrastive losses."""

import keras
from keras import ops

from keras_siglip import backend


def prepare_embeddings(image_embeddings, text_embeddings, log_temperature, bias, cast=True):
    """Validates shapes and casts everything to float32 scalars and matrices.

    The loss is always computed in float32, whatever the embeddings' dtype
    (under `mixed_bfloat16` they arrive as bfloat16). With `cast=False` the
    embeddings keep a floating dtype of their own (the blockwise loss on JAX
    multiplies bfloat16 directly, accumulating in float32); the scalars are
    still cast.
    """
    image_shape = tuple(image_embeddings.shape)
    text_shape = tuple(text_embeddings.shape)
    if len(image_shape) != 2 or len(text_shape) != 2:
        raise ValueError(
            "Contrastive losses take embeddings of shape (batch, dim); got image embeddings "
            f"{image_shape} and text embeddings {text_shape}."
        )
    if None not in (image_shape[0], text_shape[0]) and image_shape[0] != text_shape[0]:
        raise ValueError(
            "Image and text embeddings must have the same batch size (pair i is image i "
            f"with text i); got {image_shape[0]} images and {text_shape[0]} texts."
        )
    if None not in (image_shape[1], text_shape[1]) and image_shape[1] != text_shape[1]:
        raise ValueError(
            f"Image and text embeddings must have the same width; got {image_shape[1]} "
            f"and {text_shape[1]}."
        )
    image_embeddings = ops.convert_to_tensor(image_embeddings)
    text_embeddings = ops.convert_to_tensor(text_embeddings)
    dtype = keras.backend.standardize_dtype(image_embeddings.dtype)
    if cast or dtype != keras.backend.standardize_dtype(text_embeddings.dtype) or dtype not in _KEPT_DTYPES:
        image_embeddings = ops.cast(image_embeddings, "float32")
        text_embeddings = ops.cast(text_embeddings, "float32")
    log_temperature = _scalar(log_temperature, "log_temperature")
    bias = _scalar(bias, "bias")
    return image_embeddings, text_embeddings, log_temperature, bias


_KEPT_DTYPES = ("bfloat16", "float16", "float32")


def _scalar(value, name):
    value = ops.cast(value, "float32")
    if len(value.shape) > 1 or (len(value.shape) == 1 and value.shape[0] != 1):
        raise ValueError(f"{name} must be a scalar or have shape (1,); got shape {tuple(value.shape)}.")
    return ops.reshape(value, ())


class ContrastiveLoss(keras.losses.Loss):
    """Base for losses whose `y_pred` is the dict `SigLIP` produces.

    `y_pred` holds `"image_embeddings"`, `"text_embeddings"`, `"log_temperature"`
    and `"bias"`; `y_true` is ignored (pair i is image i with text i).
    """

    loss_function = None

    def __init__(self, name=None, **kwargs):
        super().__init__(name=name, **kwargs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} does not take sample weights.")
        required = ("image_embeddings", "text_embeddings", "log_temperature", "bias")
        if not isinstance(y_pred, dict) or any(key not in y_pred for key in required):
            got = sorted(y_pred) if isinstance(y_pred, dict) else type(y_pred).__name__
            raise ValueError(f"{type(self).__name__} expects y_pred to be a dict with keys {required}; got {got}.")
        with keras.name_scope(self.name):
            return self.call(y_true, y_pred)

    def call(self, y_true, y_pred):
        return type(self).loss_function(
            y_pred["image_embeddings"],
            y_pred["text_embeddings"],
            y_pred["log_temperature"],
            y_pred["bias"],
            **self.loss_options(),
        )

    def loss_options(self):
        """The keyword arguments `call` passes to `loss_function`."""
        return {}
