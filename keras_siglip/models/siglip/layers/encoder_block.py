"""One pre-LayerNorm transformer encoder block."""

import keras

from keras_siglip import backend
from keras_siglip.models.siglip.layers.attention import MultiHeadAttention
from keras_siglip.models.siglip.layers.mlp import MlpBlock


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

    `attention_mask` (optional, `(batch, tokens)`, True for real tokens) keeps
    attention off padded tokens (NaFlex).

    `forward_impl` is the computation: the sublayers composed through their
    `call` methods (Keras's layer call runs once, for the block), so on PyTorch
    the whole block can run as one `torch.compile` graph.
    `compile_encoder_blocks(layer)` turns that on (`torch_compile`) for every
    block below `layer`: the compiled function is the class's `forward_impl`,
    shared by all blocks (their weights are its inputs), so the blocks of one
    input shape share one graph.

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
        self.torch_compile = False

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

    def call(self, x, attention_mask=None):
        if self.torch_compile and backend.BACKEND == "torch" and self.attention.plain and self.mlp.plain:
            return backend.torch_compiled(EncoderBlock.forward_impl)(self, x, attention_mask)
        return self.forward_impl(x, attention_mask)

    def forward_impl(self, x, attention_mask=None):
        """The block's computation (what `call` runs, compiled or not)."""
        normed = self.attention_norm.call(x)
        if self.output_position is None:
            x = x + self.attention.call(normed, attention_mask=attention_mask)
        else:
            position = self.output_position
            one = slice(position, None if position == -1 else position + 1)
            x = x[:, one] + self.attention.call(normed[:, one], normed, attention_mask=attention_mask)
        return x + self.mlp.call(self.mlp_norm.call(x))

    def compute_output_shape(self, input_shape, attention_mask_shape=None):
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


def compile_encoder_blocks(layer, jit_compile=True):
    """Runs every `EncoderBlock` in `layer` (itself included) as one `torch.compile` graph, or not.

    On PyTorch, `jit_compile=True` compiles the blocks' shared `call` (one
    graph per input shape and block kind, no graph breaks); the rest of the
    model runs eagerly. `jit_compile=False` (or anything but `True`) turns it
    off. On JAX and TensorFlow, whose steps XLA compiles whole, the flag does
    nothing. Returns the blocks.

    Example:
    >>> from keras_siglip import ImageEncoder
    >>> encoder = ImageEncoder.from_variant("tiny", image_size=32, patch_size=8)
    >>> [block.name for block in compile_encoder_blocks(encoder)]
    ['block_0', 'block_1']
    >>> any(block.torch_compile for block in compile_encoder_blocks(encoder, jit_compile=False))
    False
    """
    blocks = [each for each in layer._flatten_layers(include_self=True) if isinstance(each, EncoderBlock)]
    for block in blocks:
        block.torch_compile = jit_compile is True
    return blocks
