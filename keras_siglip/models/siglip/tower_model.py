"""`TowerModel`: one tower of a `SigLIP` as a model of its own, for encoding and serving.

Serving runtimes take one tower at a time (images are embedded once and indexed,
queries are embedded as they come), so each tower exports on its own, and its
input signature is read from the tower: `export` needs none from the user.
"""

import warnings

import keras

from keras_siglip import backend
from keras_siglip.models.siglip.siglip_model import SigLIP

TOWERS = ("image", "text")

@keras.saving.register_keras_serializable(package="keras_siglip")
class TowerModel(keras.Model):
    """`model.encode_images` or `model.encode_texts` as a `keras.Model`.

    The call returns the tower's L2-normalised float32 embeddings `(B, dim)`,
    exactly what `SigLIP.encode_images` / `encode_texts` return. The SigLIP is
    an attribute, so its variables are this model's: `predict` and `export`
    read their current values, and fine-tuning the SigLIP afterwards changes
    what this model computes.

    Args:
        siglip: the `SigLIP` whose tower this is.
        tower: `"image"` or `"text"`.
        **kwargs: standard `keras.Model` arguments (`name`).

    Example:
    >>> import numpy as np
    >>> model = SigLIP.from_variant("tiny", image_size=32, patch_size=8,
    ...                             vocabulary_size=100, sequence_length=8)
    >>> text_model = TowerModel(model, "text")
    >>> text_model.input_signature()
    InputSpec(dtype=int32, shape=(None, 8), ndim=2)
    >>> tuple(text_model.predict(np.ones((3, 8), "int32"), verbose=0).shape)
    (3, 32)
    """

    def __init__(self, siglip, tower, **kwargs):
        if not isinstance(siglip, SigLIP):
            raise ValueError(f"TowerModel needs a SigLIP; got {type(siglip).__name__}.")
        if tower not in TOWERS:
            raise ValueError(f"tower must be 'image' or 'text'; got {tower!r}.")
        kwargs.setdefault("name", f"{tower}_tower")
        super().__init__(**kwargs)
        self.siglip = siglip
        self.tower = tower
        # The SigLIP's towers are built when constructed. Calling this model to
        # build it would record float input shapes, from which TensorFlow's
        # SavedModel writer traces a default signature: int token ids would not fit.
        self.built = True

    def call(self, inputs):
        if self.tower == "image":
            return self.siglip.encode_images(inputs, training=False)
        return self.siglip.encode_texts(inputs, training=False)

    def input_signature(self, batch_size=None, num_patches=None):
        """The tower's inputs as a `keras.InputSpec` (or a dict of them), batch `batch_size` (None: any).

        Images are float32 `(batch, height, width, 3)` scaled to [-1, 1];
        token ids int32 `(batch, sequence_length)`. A tower with inputs of
        another kind says so with an `input_signature` method of its own: a
        NaFlex tower's dict, with `num_patches` patches (None: any).
        """
        tower = self.siglip.image_encoder if self.tower == "image" else self.siglip.text_encoder
        if hasattr(tower, "input_signature"):
            return tower.input_signature(batch_size, num_patches=num_patches)
        if num_patches is not None:
            raise ValueError(f"num_patches is for NaFlex image towers; this is a {type(tower).__name__}.")
        if self.tower == "image":
            return keras.InputSpec(shape=(batch_size, *tower.image_size, 3), dtype="float32")
        return keras.InputSpec(shape=(batch_size, tower.sequence_length), dtype="int32")

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, batch_size=None,
               num_patches=None, **kwargs):
        """Exports the tower for serving with Keras's `Model.export`; the input signature is the tower's.

        Args:
            filepath: where to write: a folder for `"tf_saved_model"`; a file
                ending in `.onnx`, `.tflite` (`"litert"`) or `.pt2` (`"torch"`).
            format: any format of `keras.Model.export` the backend supports:
                `"tf_saved_model"` (TensorFlow, JAX), `"onnx"` (TensorFlow with
                `tf2onnx`, PyTorch with `onnxscript`, JAX with `jax2onnx`),
                `"litert"` (TensorFlow; PyTorch with `litert-torch`),
                `"torch"` (PyTorch).
            verbose: as in `keras.Model.export`.
            input_signature: None for `input_signature(batch_size)`.
            batch_size: int or None. A fixed batch size for the artifact; None
                for any batch size, except where the format cannot trace one on
                this backend (ONNX and LiteRT on PyTorch), which then fixes it
                to 1 and warns.
            num_patches: int or None. For a NaFlex image tower: the patch count
                N of its inputs (the preprocessor's `max_num_patches`). Only a
                SavedModel written on TensorFlow takes any N; elsewhere it is
                required.
            **kwargs: passed to `keras.Model.export`.

        Example:
        >>> import tempfile
        >>> model = SigLIP.from_variant("tiny", image_size=32, patch_size=8,
        ...                             vocabulary_size=100, sequence_length=8)
        >>> folder = tempfile.mkdtemp()
        >>> if keras.backend.backend() == "torch":  # a SavedModel from torch needs torch_xla
        ...     TowerModel(model, "text").export(folder + "/text.pt2", format="torch", verbose=False)
        ... else:
        ...     TowerModel(model, "text").export(folder + "/text", verbose=False)
        """
        if input_signature is None:
            batch_size = self.static_batch_size(format, batch_size)
            self.check_patch_count(format, num_patches)
            input_signature = [self.input_signature(batch_size, num_patches=num_patches)]
            if batch_size is None:
                kwargs = {**backend.dynamic_batch_export_kwargs(format, input_signature), **kwargs}
        return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature,
                              **kwargs)

    def check_patch_count(self, format, num_patches):
        """Raises `ValueError` where a NaFlex image tower's export needs `num_patches` and has none."""
        takes_patches = self.tower == "image" and "pixel_values" in getattr(self.siglip.image_encoder,
                                                                            "input_keys", ())
        any_patch_count = keras.backend.backend() == "tensorflow" and format == "tf_saved_model"
        if takes_patches and num_patches is None and not any_patch_count:
            raise ValueError(
                f"Exporting a NaFlex image tower as {format!r} on the {keras.backend.backend()} backend needs a "
                "fixed patch count: pass num_patches= (the preprocessor's max_num_patches)."
            )

    @staticmethod
    def static_batch_size(format, batch_size):
        """`batch_size`, or 1 (with a warning) where `format` cannot export a dynamic batch on this backend."""
        if batch_size is None and format in backend.STATIC_BATCH_EXPORTS:
            warnings.warn(
                f"format={format!r} on the {keras.backend.backend()} backend cannot export a dynamic "
                "batch size: the artifact takes batches of exactly 1. Pass batch_size=N for another.",
                stacklevel=3,
            )
            return 1
        return batch_size

    def get_config(self):
        return {
            "name": self.name,
            "siglip": keras.saving.serialize_keras_object(self.siglip),
            "tower": self.tower,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["siglip"] = keras.saving.deserialize_keras_object(config["siglip"])
        return cls(**config)
