"""NaFlex patches -> tokens: a Dense patch embedding plus a position grid resized to each image."""

import math

import keras
from keras import ops


def position_resize_weights(spatial_shapes, num_tokens, grid_size):
    """The `(batch, num_tokens, grid_size**2)` weights that resize a position grid to each image.

    Row `n` of image `b` holds the weights that antialiased bilinear resizing
    (torch's `F.interpolate(mode="bilinear", align_corners=False,
    antialias=True)`, JAX's `scale_and_translate(method="bilinear",
    antialias=True)`) of a `(grid_size, grid_size)` grid to that image's
    `(h, w)` patch grid gives patch `n` (row-major); rows past `h * w`
    (padding) take patch 0's. The resize is separable and linear, so each
    weight is a row weight times a column weight: a triangle filter widened by
    the scale when shrinking, normalised to sum to one. Computed from the
    spatial shapes inside the step, one matrix product per batch, the same on
    every backend and differentiable in the grid.

    Args:
        spatial_shapes: int tensor `(batch, 2)`, each image's `(h, w)` in patches.
        num_tokens: int. The padded token count N.
        grid_size: int. The side of the learned position grid.

    Example:
    >>> import numpy as np
    >>> weights = np.asarray(position_resize_weights(np.array([[2, 2]]), 4, 4))
    >>> weights.shape, weights.sum(-1).round(6).tolist()
    ((1, 4, 16), [[1.0, 1.0, 1.0, 1.0]])
    """
    shapes = ops.cast(spatial_shapes, "int32")
    positions = ops.arange(num_tokens, dtype="int32")[None, :]  # (1, N)
    heights, widths = shapes[:, 0:1], shapes[:, 1:2]  # (B, 1)
    real = positions < heights * widths
    rows = ops.where(real, ops.floor_divide(positions, widths), 0)
    cols = ops.where(real, positions - ops.floor_divide(positions, widths) * widths, 0)
    index = ops.cast(ops.stack([rows, cols], axis=-1), "float32")  # (B, N, 2)
    scale = grid_size / ops.cast(shapes, "float32")[:, None, :]  # (B, 1, 2): grid cells per patch
    support = ops.maximum(scale, 1.0)
    center = (index + 0.5) * scale - 0.5
    source = ops.arange(grid_size, dtype="float32")
    weights = ops.relu(1.0 - ops.abs(source - center[..., None]) / support[..., None])  # (B, N, 2, G)
    weights = weights / ops.sum(weights, axis=-1, keepdims=True)
    combined = weights[:, :, 0, :, None] * weights[:, :, 1, None, :]  # (B, N, G, G)
    return ops.reshape(combined, (ops.shape(combined)[0], num_tokens, grid_size * grid_size))


@keras.saving.register_keras_serializable(package="keras_siglip")
class NaFlexPatchEmbedding(keras.layers.Layer):
    """Embeds flattened patches and adds a learned position grid resized to each image.

    `tokens = Dense(pixel_values) + resize(grid, (h, w))[patch row, patch col]`
    (see `position_resize_weights`), as in big_vision's NaFlex ViT and
    transformers' `Siglip2VisionEmbeddings`.

    Args:
        patch_size: int. Patch side in pixels; a patch holds `patch_size**2 * 3`
            values in `(row, column, channel)` order.
        width: int. Token width.
        position_grid_size: int. Side of the learned position grid (16 in
            every released SigLIP 2 NaFlex model).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments: `pixel_values` `(batch, N, patch_size**2 * 3)` floats and
    `spatial_shapes` `(batch, 2)` ints.

    Example:
    >>> import numpy as np
    >>> layer = NaFlexPatchEmbedding(patch_size=2, width=8, position_grid_size=4)
    >>> tuple(layer(np.zeros((1, 6, 12), "float32"), np.array([[2, 3]])).shape)
    (1, 6, 8)
    """

    def __init__(self, patch_size, width, position_grid_size=16, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("patch_size", patch_size), ("width", width), ("position_grid_size", position_grid_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        self.patch_size = patch_size
        self.width = width
        self.position_grid_size = position_grid_size

    @property
    def patch_dim(self):
        """Values in one flattened patch: `patch_size**2 * 3`."""
        return self.patch_size * self.patch_size * 3

    def build(self, pixel_values_shape=None, spatial_shapes_shape=None):
        # Not "patch_projection", the FixRes tower's 4-D Conv2D: a distinct path gives this 2-D
        # kernel its own rule in distribution.LAYOUT_RULES.
        self.patch_dense = keras.layers.Dense(
            self.width, kernel_initializer="lecun_normal", dtype=self.dtype_policy, name="patch_dense"
        )
        self.patch_dense.build((None, None, self.patch_dim))
        grid = self.position_grid_size
        self.position_embedding = self.add_weight(
            shape=(grid, grid, self.width),
            initializer=keras.initializers.RandomNormal(stddev=1 / math.sqrt(self.width)),
            name="position_embedding",
        )

    def call(self, pixel_values, spatial_shapes):
        tokens = self.patch_dense(pixel_values)
        weights = position_resize_weights(spatial_shapes, ops.shape(pixel_values)[1], self.position_grid_size)
        grid = ops.reshape(ops.cast(self.position_embedding, "float32"), (-1, self.width))
        return tokens + ops.cast(ops.matmul(weights, grid), tokens.dtype)

    def compute_output_shape(self, pixel_values_shape, spatial_shapes_shape=None):
        return (*pixel_values_shape[:2], self.width)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"patch_size": self.patch_size, "width": self.width, "position_grid_size": self.position_grid_size}
        )
        return config
