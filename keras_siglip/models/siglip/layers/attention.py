"""Multi-head dot-product attention over `keras.ops.dot_product_attention`."""

import math

import keras
from keras import ops


def glorot_uniform_for(fan_in, fan_out, seed=None):
    """Xavier-uniform with explicit fans, as flax's `DenseGeneral` computes them."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit, seed=seed)


def as_rows(x):
    """`(..., width)` to `(rows, width)`.

    Projections multiply rows, not `(batch, tokens)` grids: the result is the
    same, but the weight gradient then contracts over one axis instead of
    two, which XLA's CPU backend runs about three times faster.
    """
    return ops.reshape(x, (-1, ops.shape(x)[-1]))


def from_rows(rows, like):
    """Rows back to the leading shape of `like`: `(..., rows.shape[-1])`."""
    return ops.reshape(rows, tuple(ops.shape(like)[:-1]) + (rows.shape[-1],))


def attend(query, key_value, project, output, num_heads, flash_attention=None):
    """Multi-head attention around given projections.

    Args:
        query: `(B, T, width)`.
        key_value: `(B, S, width)`, or `None` for self-attention.
        project: `project(x, names)` returns x's projections named by `names`
            (a string of "q", "k", "v"), each as `(rows, width)`.
        output: the output projection, `(rows, width)` to `(rows, width)`.
        num_heads: int.
        flash_attention: passed to `keras.ops.dot_product_attention` (`None`:
            its own choice).

    Returns:
        `(B, T, width)`.
    """
    batch, width = ops.shape(query)[0], ops.shape(query)[-1]

    def heads(rows):
        return ops.reshape(rows, (batch, -1, num_heads, width // num_heads))

    if key_value is None:
        q, k, v = project(query, "qkv")
    else:
        (q,) = project(query, "q")
        k, v = project(key_value, "kv")
    attended = ops.dot_product_attention(heads(q), heads(k), heads(v), flash_attention=flash_attention)
    return from_rows(output(ops.reshape(attended, (-1, width))), query)


def multi_head_attention(query, key_value, weights, num_heads, fused_projections=True, flash_attention=None):
    """`MultiHeadAttention`'s computation on plain tensors.

    `weights` is `[query kernel, query bias, key kernel, key bias, value kernel,
    value bias, output kernel, output bias]` in the query's dtype; the other
    arguments are `attend`'s. With `fused_projections` the projections of one
    input sequence run as one matrix multiply.
    """
    kernels = dict(zip("qkv", weights[0:6:2]))
    biases = dict(zip("qkv", weights[1:6:2]))
    output_kernel, output_bias = weights[6:]

    def project(x, names):
        rows = as_rows(x)
        if fused_projections and len(names) > 1:
            joined = ops.matmul(rows, ops.concatenate([kernels[n] for n in names], axis=-1))
            joined = joined + ops.concatenate([biases[n] for n in names], axis=-1)
            return ops.split(joined, len(names), axis=-1)
        return [ops.matmul(rows, kernels[n]) + biases[n] for n in names]

    return attend(
        query, key_value, project, lambda rows: ops.matmul(rows, output_kernel) + output_bias, num_heads,
        flash_attention,
    )


@keras.saving.register_keras_serializable(package="keras_siglip")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention whose core is `keras.ops.dot_product_attention`.

    Going through the fused op lets each backend pick its best kernel (cuDNN or
    flash attention on GPU, XLA's on TPU). Queries and keys/values may come from
    different sequences, which is what MAP pooling needs (one probe query over
    all patch tokens).

    The query, key, value and output projections are separate `Dense` layers,
    as in the checkpoints; the computation itself is `multi_head_attention`,
    a function of plain tensors. With `fused_projections` the kernels are
    joined at call time so the projections of one sequence run as one matrix
    multiply (query+key+value in self-attention, key+value in cross-attention).
    The result is the same. A LoRA-enabled projection's `kernel` already holds
    its update; when a projection is quantized, every projection is called as
    its `Dense` layer instead.

    Args:
        num_heads: int. Number of attention heads; must divide the width.
        fused_projections: bool. Join the projections of one input into one
            matrix multiply.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:
    >>> import numpy as np
    >>> attention = MultiHeadAttention(num_heads=2)
    >>> tuple(attention(np.zeros((1, 5, 8)), np.zeros((1, 7, 8))).shape)
    (1, 5, 8)
    """

    def __init__(self, num_heads, fused_projections=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.fused_projections = bool(fused_projections)

    def build(self, query_shape, key_value_shape=None):
        key_value_shape = key_value_shape or query_shape
        width = query_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"Attention width {width} is not divisible by num_heads={self.num_heads}."
            )

        def projection(name):
            return keras.layers.Dense(
                width,
                kernel_initializer=glorot_uniform_for(width, width),
                bias_initializer="zeros",
                dtype=self.dtype_policy,
                name=name,
            )

        self.query = projection("query")
        self.key = projection("key")
        self.value = projection("value")
        self.output_projection = projection("output")
        self.query.build(query_shape)
        self.key.build(key_value_shape)
        self.value.build(key_value_shape)
        self.output_projection.build(query_shape)

    @property
    def plain(self):
        """No quantized projection: the kernels (LoRA included) can be multiplied as they are."""
        projections = (self.query, self.key, self.value, self.output_projection)
        return not any(p.dtype_policy.quantization_mode for p in projections)

    def weights_in(self, dtype):
        """The projections' kernels and biases for `multi_head_attention`, cast to `dtype`."""
        projections = (self.query, self.key, self.value, self.output_projection)
        return [ops.cast(w, dtype) for p in projections for w in (p.kernel, p.bias)]

    def call(self, query, key_value=None):
        if self.plain:
            return multi_head_attention(
                query, key_value, self.weights_in(query.dtype), self.num_heads, self.fused_projections
            )
        # A quantized projection computes its own product.
        layers = {"q": self.query, "k": self.key, "v": self.value}
        return attend(
            query, key_value, lambda x, names: [layers[n](as_rows(x)) for n in names], self.output_projection,
            self.num_heads,
        )

    def compute_output_shape(self, query_shape, key_value_shape=None):
        return query_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "fused_projections": self.fused_projections})
        return config
