"""Multihead attention pooling (MAP): a learned probe attends over all tokens."""

import keras
from keras import ops

from keras_siglip.models.siglip.layers.attention import MultiHeadAttention, glorot_uniform_for
from keras_siglip.models.siglip.layers.mlp import MlpBlock


@keras.saving.register_keras_serializable(package="keras_siglip")
class MAPPooling(keras.layers.Layer):
    """Pools a token sequence to one vector with a learned query ("probe").

    `x = Attention(probe, tokens)`, then `x + MLP(LN(x))`; returns token 0. This
    is big_vision's `MAPHead`, the image tower's pooling in SigLIP.

    Args:
        num_heads: int. Attention heads (the tower's).
        mlp_dim: int. Hidden width of the MLP (the tower's).
        layer_norm_epsilon: float. LayerNorm epsilon.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> import numpy as np
    >>> tuple(MAPPooling(num_heads=2, mlp_dim=16)(np.zeros((2, 5, 8))).shape)
    (2, 8)
    """

    def __init__(self, num_heads, mlp_dim, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape):
        width = input_shape[-1]
        self.probe = self.add_weight(
            shape=(1, 1, width), initializer=glorot_uniform_for(width, width), name="probe"
        )
        probe_shape = (input_shape[0], 1, width)
        self.attention = MultiHeadAttention(
            self.num_heads, dtype=self.dtype_policy, name="attention"
        )
        self.attention.build(probe_shape, input_shape)
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="layer_norm"
        )
        self.layer_norm.build(probe_shape)
        self.mlp = MlpBlock(self.mlp_dim, dtype=self.dtype_policy, name="mlp")
        self.mlp.build(probe_shape)

    def call(self, tokens, attention_mask=None):
        batch = ops.shape(tokens)[0]
        probe = ops.broadcast_to(
            ops.cast(self.probe, tokens.dtype), (batch, 1, ops.shape(self.probe)[-1])
        )
        x = self.attention(probe, tokens, attention_mask=attention_mask)
        x = x + self.mlp(self.layer_norm(x))
        return x[:, 0]

    def compute_output_shape(self, input_shape, attention_mask_shape=None):
        return (input_shape[0], input_shape[-1])

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
