"""Image -> sequence of patch tokens with position embeddings."""

import math

import keras
import numpy as np
from keras import ops


def sincos_2d_position_embedding(grid_height, grid_width, width, temperature=10_000.0):
    """big_vision's fixed 2-D sin-cos position embedding, shape (1, h*w, width)."""
    if width % 4:
        raise ValueError(f"sincos2d position embedding needs a width divisible by 4, got {width}.")
    y, x = np.mgrid[:grid_height, :grid_width]
    omega = np.arange(width // 4) / max(width // 4 - 1, 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    embedding = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return embedding[None].astype("float32")


@keras.saving.register_keras_serializable(package="keras_siglip")
class PatchEmbedding(keras.layers.Layer):
    """Cuts an image into non-overlapping patches and embeds each one.

    A strided convolution (the "conv stem") maps every `patch_size` x
    `patch_size` patch to a `width`-vector; a position embedding is added.

    Args:
        patch_size: int. Side of a square patch in pixels (16 for B/16, 14 for
            So400m/14).
        width: int. Embedding width.
        position_embedding: `"learned"` (a weight initialised
            normal(1/sqrt(width)), as in SigLIP) or `"sincos2d"` (fixed).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> import numpy as np
    >>> tuple(PatchEmbedding(patch_size=4, width=8)(np.zeros((2, 16, 16, 3))).shape)
    (2, 16, 8)
    """

    def __init__(self, patch_size, width, position_embedding="learned", **kwargs):
        super().__init__(**kwargs)
        if position_embedding not in ("learned", "sincos2d"):
            raise ValueError(
                "position_embedding must be 'learned' or 'sincos2d', "
                f"got {position_embedding!r}."
            )
        self.patch_size = patch_size
        self.width = width
        self.position_embedding_type = position_embedding

    def build(self, input_shape):
        height, width_px = input_shape[1], input_shape[2]
        if height is None or width_px is None:
            raise ValueError("PatchEmbedding needs a known image height and width.")
        if height % self.patch_size or width_px % self.patch_size:
            raise ValueError(
                f"Image size {height}x{width_px} is not a multiple of the patch size "
                f"{self.patch_size}."
            )
        self.grid_size = (height // self.patch_size, width_px // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_projection = keras.layers.Conv2D(
            self.width,
            kernel_size=self.patch_size,
            strides=self.patch_size,
            padding="valid",
            kernel_initializer="lecun_normal",
            dtype=self.dtype_policy,
            name="patch_projection",
        )
        self.patch_projection.build(input_shape)
        if self.position_embedding_type == "learned":
            self.position_embedding = self.add_weight(
                shape=(1, self.num_patches, self.width),
                initializer=keras.initializers.RandomNormal(stddev=1 / math.sqrt(self.width)),
                name="position_embedding",
            )
        else:
            self.position_embedding = sincos_2d_position_embedding(*self.grid_size, self.width)

    def call(self, images):
        patches = self.patch_projection(images)
        patches = ops.reshape(patches, (ops.shape(patches)[0], self.num_patches, self.width))
        return patches + ops.cast(self.position_embedding, patches.dtype)

    def compute_output_shape(self, input_shape):
        grid = (input_shape[1] // self.patch_size) * (input_shape[2] // self.patch_size)
        return (input_shape[0], grid, self.width)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "width": self.width,
                "position_embedding": self.position_embedding_type,
            }
        )
        return config
