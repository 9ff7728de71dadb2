"""One pre-LayerNorm transformer encoder block."""

import keras

from keras_siglip.layers.attention import MultiHeadAttention
from keras_siglip.layers.mlp import MlpBlock


@keras.saving.register_keras_serializable(package="keras_siglip")
class EncoderBlock(keras.layers.Layer):
    """`x + Attention(LN(x))`, then `x + MLP(LN(x))`, as in ViT and big_vision.

    Args:
        num_heads: int. Attention heads.
        mlp_dim: int. Hidden width of the MLP.
        layer_norm_epsilon: float. LayerNorm epsilon (1e-6 in the SigLIP towers).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> import numpy as np
    >>> block = EncoderBlock(num_heads=2, mlp_dim=16)
    >>> block(np.zeros((2, 5, 8))).shape, block(np.zeros((2, 5, 8)), output_position=-1).shape
    ((2, 5, 8), (2, 1, 8))
    """

    def __init__(self, num_heads, mlp_dim, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape):
        def layer_norm(name):
            return keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name
            )

        self.attention_norm = layer_norm("attention_norm")
        self.attention = MultiHeadAttention(
            self.num_heads, dtype=self.dtype_policy, name="attention"
        )
        self.mlp_norm = layer_norm("mlp_norm")
        self.mlp = MlpBlock(self.mlp_dim, dtype=self.dtype_policy, name="mlp")
        for layer in (self.attention_norm, self.attention, self.mlp_norm, self.mlp):
            layer.build(input_shape)

    def call(self, x, output_position=None):
        """`output_position`: an int; only that token's output is computed, shape (B, 1, width).

        A tower pooled by one token (the text tower's last) needs nothing
        else from its last block: that token still attends over all of them,
        but the other queries, their MLPs and their residuals are skipped.
        """
        normed = self.attention_norm(x)
        if output_position is None:
            x = x + self.attention(normed)
        else:
            end = None if output_position == -1 else output_position + 1
            x = x[:, output_position:end] + self.attention(normed[:, output_position:end], normed)
        return x + self.mlp(self.mlp_norm(x))

    def compute_output_shape(self, input_shape, output_position=None):
        return input_shape if output_position is None else (input_shape[0], 1, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
