"""One pre-LayerNorm transformer encoder block."""

import keras
from keras import ops

from keras_siglip.models.siglip.layers.attention import MultiHeadAttention, multi_head_attention
from keras_siglip.models.siglip.layers.mlp import MlpBlock, mlp_block


def residual_block(x, attention_norm, attention, mlp_norm, mlp, output_position=None):
    """`x + attention(attention_norm(x))`, then `x + mlp(mlp_norm(x))`, each argument a callable.

    With an `output_position`, only that token's row goes on past the attention
    (which still reads every token's keys and values).
    """
    normed = attention_norm(x)
    if output_position is None:
        x = x + attention(normed)
    else:
        one = slice(output_position, None if output_position == -1 else output_position + 1)
        x = x[:, one] + attention(normed[:, one], normed)
    return x + mlp(mlp_norm(x))


def encoder_block(
    x, weights, num_heads, layer_norm_epsilon, output_position=None, fused_projections=True, flash_attention=None
):
    """`EncoderBlock`'s computation on plain tensors, which `torch.compile` can trace whole.

    `weights` is `[attention_norm gamma, beta, mlp_norm gamma, beta]` (float32)
    followed by `multi_head_attention`'s eight and `mlp_block`'s four, in `x`'s
    dtype. `flash_attention` goes to `keras.ops.dot_product_attention`.
    """
    x = ops.convert_to_tensor(x)
    gamma_1, beta_1, gamma_2, beta_2 = weights[:4]
    attention_weights, mlp_weights = weights[4:12], weights[12:]
    return residual_block(
        x,
        lambda t: ops.layer_normalization(t, gamma_1, beta_1, epsilon=layer_norm_epsilon),
        lambda q, kv=None: multi_head_attention(
            q, kv, attention_weights, num_heads, fused_projections, flash_attention
        ),
        lambda t: ops.layer_normalization(t, gamma_2, beta_2, epsilon=layer_norm_epsilon),
        lambda t: mlp_block(t, mlp_weights),
        output_position,
    )


@keras.saving.register_keras_serializable(package="keras_siglip")
class EncoderBlock(keras.layers.Layer):
    """`x + Attention(LN(x))`, then `x + MLP(LN(x))`, as in ViT and big_vision.

    Args:
        num_heads: int. Attention heads.
        mlp_dim: int. Hidden width of the MLP.
        layer_norm_epsilon: float. LayerNorm epsilon (1e-6 in the SigLIP towers).
        output_position: int or `None`. Compute only this token's output,
            shaped `(B, 1, width)`. A tower pooled by one token (the text
            tower's last) needs nothing else from its last block: that token
            still attends over all of them, but the other queries, their MLPs
            and residuals are skipped.
        **kwargs: standard `keras.layers.Layer` arguments.

    `compiled_forward`, when set (by `SigLIP` for `jit_compile=True` on PyTorch),
    is `encoder_block` compiled, called with this block's weights; the model's
    other layers then run eagerly.

    Example:
    >>> import numpy as np
    >>> tuple(EncoderBlock(num_heads=2, mlp_dim=16)(np.zeros((2, 5, 8))).shape)
    (2, 5, 8)
    >>> tuple(EncoderBlock(num_heads=2, mlp_dim=16, output_position=-1)(np.zeros((2, 5, 8))).shape)
    (2, 1, 8)
    """

    def __init__(self, num_heads, mlp_dim, layer_norm_epsilon=1e-6, output_position=None, **kwargs):
        super().__init__(**kwargs)
        if output_position is not None and not isinstance(output_position, int):
            raise ValueError(f"`output_position` must be an int or None; got {output_position!r}.")
        self.output_position = output_position
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layer_norm_epsilon = layer_norm_epsilon
        self.compiled_forward = None

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

    def call(self, x):
        if self.compiled_forward is not None and self.attention.plain and self.mlp.plain:
            # flash_attention=False: torch's scaled_dot_product_attention still picks its
            # fastest kernel itself, and Keras's own check for flash attention breaks the graph.
            return self.compiled_forward(
                x, self.weights_in(x.dtype), self.num_heads, self.layer_norm_epsilon, self.output_position,
                self.attention.fused_projections, False,
            )
        return residual_block(
            x, self.attention_norm, self.attention, self.mlp_norm, self.mlp, self.output_position
        )

    def weights_in(self, dtype):
        """This block's weights as `encoder_block` takes them (norms float32, the rest cast to `dtype`)."""
        norms = [self.attention_norm.gamma, self.attention_norm.beta, self.mlp_norm.gamma, self.mlp_norm.beta]
        return [ops.convert_to_tensor(w) for w in norms] + self.attention.weights_in(dtype) + self.mlp.weights_in(dtype)

    def compute_output_shape(self, input_shape):
        return input_shape if self.output_position is None else (input_shape[0], 1, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "output_position": self.output_position,
            }
        )
        return config
