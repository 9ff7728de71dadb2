"""The transformer's position-wise MLP: Dense -> tanh-GELU -> Dense."""

import keras

from keras_siglip.models.siglip.layers.attention import as_rows, dense_rows, from_rows, glorot_uniform_for, is_plain


@keras.saving.register_keras_serializable(package="keras_siglip")
class MlpBlock(keras.layers.Layer):
    """Two Dense layers with the tanh approximation of GELU between them.

    big_vision and Hugging Face use the tanh approximation; exact GELU would break
    parity with their checkpoints.

    Args:
        mlp_dim: int. Width of the hidden layer.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> import numpy as np
    >>> tuple(MlpBlock(mlp_dim=16)(np.zeros((2, 3, 8))).shape)
    (2, 3, 8)
    """

    def __init__(self, mlp_dim, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = mlp_dim

    def build(self, input_shape):
        width = input_shape[-1]
        # big_vision's MlpBlock: xavier-uniform kernels, near-zero normal biases.
        self.hidden = keras.layers.Dense(
            self.mlp_dim,
            kernel_initializer=glorot_uniform_for(width, self.mlp_dim),
            bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
            dtype=self.dtype_policy,
            name="hidden",
        )
        self.output_projection = keras.layers.Dense(
            width,
            kernel_initializer=glorot_uniform_for(self.mlp_dim, width),
            bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
            dtype=self.dtype_policy,
            name="output",
        )
        self.hidden.build(input_shape)
        self.output_projection.build(tuple(input_shape[:-1]) + (self.mlp_dim,))

    @property
    def plain(self):
        """No quantized layer: the kernels (LoRA included) can be multiplied as they are."""
        return is_plain(self.hidden, self.output_projection)

    def call(self, x):
        # Each Dense as `dense_rows`: the kernel (LoRA included) cast to x's dtype; a quantized
        # Dense computes its own product.
        hidden = keras.activations.gelu(dense_rows(self.hidden, as_rows(x)), approximate=True)
        return from_rows(dense_rows(self.output_projection, hidden), x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mlp_dim": self.mlp_dim})
        return config
