"""`NaFlexImageEncoder`: SigLIP 2's image tower for images of any size and aspect ratio.

Each image arrives as up to N flattened patches (`NaFlexImagePreprocessor`),
padded to N, with a mask and its `(h, w)` patch grid. The tower is a ViT
whose position grid is resized to each image's `(h, w)`, whose attention and
MAP pooling never look at padding (big_vision's `naflex_vit.py`,
transformers' `Siglip2VisionModel`).
"""

import keras
import numpy as np
from keras import ops

from keras_siglip.models.siglip.layers import MAPPooling, NaFlexPatchEmbedding
from keras_siglip.models.siglip.towers import _Encoder, check_image_pooling, variant_config

INPUT_KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")


def naflex_value_problem(pixel_values, pixel_attention_mask, spatial_shapes):
    """What is wrong with the values of a NaFlex batch (NumPy arrays), or None.

    Every image must cover at least one patch on each side, fit in the padded
    length N, and have a mask that is one on exactly its first `h * w` patches.
    """
    shapes = np.asarray(spatial_shapes)
    mask = np.asarray(pixel_attention_mask)
    tokens = np.asarray(pixel_values).shape[1] if np.ndim(pixel_values) >= 2 else None
    if shapes.ndim != 2 or shapes.shape[-1] != 2:
        return f"spatial_shapes must be (batch, 2); got shape {shapes.shape}"
    if mask.ndim != 2:
        return f"pixel_attention_mask must be (batch, N); got shape {mask.shape}"
    empty = np.flatnonzero((shapes <= 0).any(-1))
    if empty.size:
        return (f"image {int(empty[0])} has spatial shape {shapes[empty[0]].tolist()}: every image needs at "
                "least one patch on each side (a zero-size image?)")
    counts = shapes[:, 0].astype(np.int64) * shapes[:, 1]
    length = mask.shape[1] if tokens is None else tokens
    over = np.flatnonzero(counts > length)
    if over.size:
        i = int(over[0])
        return (f"image {i} has {int(counts[i])} patches ({shapes[i, 0]}x{shapes[i, 1]}), more than the "
                f"{length} the batch holds (max_num_patches)")
    expected = np.arange(mask.shape[1])[None, :] < counts[:, None]
    wrong = np.flatnonzero(((mask != 0) != expected).any(-1))
    if wrong.size:
        i = int(wrong[0])
        return (f"pixel_attention_mask of image {i} marks {int((mask[i] != 0).sum())} patches, not the first "
                f"{int(counts[i])} that spatial_shapes {shapes[i].tolist()} give")
    return None


def naflex_tf_assertions(x, error_mark):
    """TensorFlow assertions of `naflex_value_problem`'s rules, for a `tf.data` pipeline."""
    import tensorflow as tf

    shapes = tf.cast(x["spatial_shapes"], tf.int64)
    mask = x["pixel_attention_mask"]
    counts = shapes[:, 0] * shapes[:, 1]
    length = tf.shape(x["pixel_values"], out_type=tf.int64)[1]
    expected = tf.range(tf.shape(mask, out_type=tf.int64)[1])[None, :] < counts[:, None]
    return [
        tf.debugging.assert_equal(tf.reduce_all(shapes > 0), True,
                                  message=f"{error_mark}every image needs at least one patch on each side "
                                          "(spatial_shapes holds a zero; a zero-size image?)."),
        tf.debugging.assert_equal(tf.reduce_all(counts <= length), True,
                                  message=f"{error_mark}an image has more patches than the batch holds "
                                          "(max_num_patches)."),
        tf.debugging.assert_equal(tf.reduce_all(tf.equal(tf.not_equal(mask, 0), expected)), True,
                                  message=f"{error_mark}pixel_attention_mask does not mark exactly the first "
                                          "h * w patches that spatial_shapes give."),
    ]


def _is_host_array(value):
    return isinstance(value, np.ndarray)


@keras.saving.register_keras_serializable(package="keras_siglip")
class NaFlexImageEncoder(_Encoder):
    """SigLIP 2's NaFlex image tower: any image size and aspect ratio, padding masked.

    Patches -> Dense embedding + resized position grid -> encoder blocks
    (attention masked to the real patches) -> LayerNorm -> masked MAP pooling
    (or a masked mean) -> optional Dense head.

    Args:
        patch_size: int. Patch side in pixels.
        width: int. Token width.
        depth: int. Number of encoder blocks.
        num_heads: int. Attention heads.
        mlp_dim: int. Hidden width of each MLP.
        position_grid_size: int. Side of the learned position grid
            (transformers' `num_patches` is its square; 16 as released).
        pooling: `"map"` (SigLIP 2) or `"gap"` (mean over real patches).
        output_dim: int or None. Width of a Dense head after pooling.
        layer_norm_epsilon: float.
        remat: bool. Rematerialise each encoder block in training.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Inputs are a dict (what `NaFlexImagePreprocessor` returns):
    `"pixel_values"` `(batch, N, patch_size**2 * 3)` floats in [-1, 1],
    `"pixel_attention_mask"` `(batch, N)` (1 for the first `h * w` patches),
    `"spatial_shapes"` `(batch, 2)` ints `(h, w)`. N is chosen when
    preprocessing (`max_num_patches`), not here.

    Example:
    >>> import numpy as np
    >>> encoder = NaFlexImageEncoder.from_variant("tiny", patch_size=4, position_grid_size=4)
    >>> inputs = {"pixel_values": np.zeros((2, 6, 48), "float32"),
    ...           "pixel_attention_mask": np.array([[1] * 6, [1] * 4 + [0] * 2]),
    ...           "spatial_shapes": np.array([[2, 3], [4, 1]])}
    >>> tuple(encoder(inputs).shape)
    (2, 32)
    """

    input_keys = INPUT_KEYS

    def __init__(
        self,
        patch_size,
        width,
        depth,
        num_heads,
        mlp_dim,
        position_grid_size=16,
        pooling="map",
        output_dim=None,
        layer_norm_epsilon=1e-6,
        remat=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "image_encoder")
        super().__init__(width, depth, num_heads, mlp_dim, output_dim, layer_norm_epsilon, remat, **kwargs)
        self.patch_size = patch_size
        self.position_grid_size = position_grid_size
        self.pooling = check_image_pooling(pooling)
        self.build()

    @classmethod
    def from_variant(cls, variant, *, patch_size=16, **kwargs):
        """An encoder of a named size (`"B"`, `"So400m"`, `"tiny"`...)."""
        return cls(patch_size=patch_size, **variant_config(variant), **kwargs)

    def build(self, input_shape=None):
        self.patch_embedding = NaFlexPatchEmbedding(
            self.patch_size, self.width, self.position_grid_size, dtype=self.dtype_policy, name="patch_embedding"
        )
        self.patch_embedding.build()
        token_shape = (None, None, self.width)
        if self.pooling == "map":
            self.map_pooling = MAPPooling(
                self.num_heads, self.mlp_dim, self.layer_norm_epsilon, dtype=self.dtype_policy, name="map_pooling"
            )
            self.map_pooling.build(token_shape)
        self._build_blocks_and_head(token_shape, (None, self.width))

    def validate_inputs(self, inputs):
        """Checks the keys, shapes and dtypes of a NaFlex batch (and its values when they are NumPy arrays).

        Returns `(pixel_values, pixel_attention_mask, spatial_shapes)`; raises
        `ValueError` naming the problem.
        """
        if not isinstance(inputs, dict) or set(inputs) != set(INPUT_KEYS):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"{self.name} takes a dict with keys {list(INPUT_KEYS)}; got {got}.")
        pixels, mask, shapes = (inputs[key] for key in INPUT_KEYS)
        patch_dim = self.patch_embedding.patch_dim
        pixel_shape, mask_shape, shapes_shape = (tuple(x.shape) for x in (pixels, mask, shapes))
        if len(pixel_shape) != 3 or pixel_shape[-1] != patch_dim:
            raise ValueError(
                f"{self.name} expects pixel_values of shape (batch, N, {patch_dim}) (patches of "
                f"{self.patch_size}x{self.patch_size}x3); got {pixel_shape}."
            )
        if "float" not in keras.backend.standardize_dtype(pixels.dtype):
            raise ValueError(f"{self.name} expects float pixel_values in [-1, 1]; got dtype {pixels.dtype}.")
        if len(mask_shape) != 2 or None not in (mask_shape[1], pixel_shape[1]) and mask_shape[1] != pixel_shape[1]:
            raise ValueError(
                f"pixel_attention_mask must be (batch, N) with the N of pixel_values {pixel_shape}; got {mask_shape}."
            )
        if len(shapes_shape) != 2 or shapes_shape[1] != 2:
            raise ValueError(f"spatial_shapes must be (batch, 2) ints (h, w); got shape {shapes_shape}.")
        if "int" not in keras.backend.standardize_dtype(shapes.dtype):
            raise ValueError(f"spatial_shapes must be ints (patches per side); got dtype {shapes.dtype}.")
        # A list, not a set: traced batch sizes (torch.export's SymInts) are not hashable.
        batches = [s[0] for s in (pixel_shape, mask_shape, shapes_shape) if s[0] is not None]
        if any(batch != batches[0] for batch in batches[1:]):
            raise ValueError(
                f"pixel_values {pixel_shape}, pixel_attention_mask {mask_shape} and spatial_shapes "
                f"{shapes_shape} disagree on the batch size."
            )
        if all(_is_host_array(x) for x in (pixels, mask, shapes)):
            problem = naflex_value_problem(pixels, mask, shapes)
            if problem:
                raise ValueError(problem + ".")
        return pixels, mask, shapes

    def input_signature(self, batch_size=None, num_patches=None):
        """The inputs as a dict of `keras.InputSpec`s, for `TowerModel.export`.

        Args:
            batch_size: int or None (any).
            num_patches: int or None (any). N, the preprocessor's
                `max_num_patches`; a SavedModel written on TensorFlow takes any
                N, the other backends' exports need it fixed.
        """
        return {
            "pixel_values": keras.InputSpec(
                shape=(batch_size, num_patches, self.patch_embedding.patch_dim), dtype="float32"
            ),
            "pixel_attention_mask": keras.InputSpec(shape=(batch_size, num_patches), dtype="int32"),
            "spatial_shapes": keras.InputSpec(shape=(batch_size, 2), dtype="int32"),
        }

    def call(self, inputs, training=None):
        pixels, mask, shapes = self.validate_inputs(inputs)
        mask = ops.cast(mask, "bool")
        tokens = self._encode(self.patch_embedding(pixels, shapes), attention_mask=mask)
        if self.pooling == "map":
            pooled = self.map_pooling(tokens, attention_mask=mask)
        else:
            weights = ops.cast(mask, tokens.dtype)[..., None]
            pooled = ops.sum(tokens * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
        return self._project(pooled)

    def compute_output_shape(self, input_shape):
        batch = input_shape["pixel_values"][0] if isinstance(input_shape, dict) else None
        return (batch, self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"patch_size": self.patch_size, "position_grid_size": self.position_grid_size, "pooling": self.pooling}
        )
        return config
