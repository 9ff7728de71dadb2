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


def is_plain(*dense_layers):
    """No quantized layer among them: their kernels (LoRA included) can be multiplied as they are."""
    return not any(d.dtype_policy.quantization_mode for d in dense_layers)


def dense_rows(dense, rows):
    """`dense(rows)`: the kernel (a LoRA update included) cast to the rows' dtype, plus the bias.

    A quantized `Dense` computes its own product (its Keras call).
    """
    if not is_plain(dense):
        return dense(rows)
    return ops.matmul(rows, ops.cast(dense.kernel, rows.dtype)) + ops.cast(dense.bias, rows.dtype)


def _flash_attention():
    """`dot_product_attention`'s `flash_attention`: its own choice, except under `torch.compile`.

    There torch's `scaled_dot_product_attention` still picks its fastest kernel
    itself, and Keras's check for flash attention would break the graph.
    """
    if keras.backend.backend() == "torch":
        import torch

        if torch.compiler.is_compiling():
            return False
    return None


@keras.saving.register_keras_serializable(package="keras_siglip")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention whose core is `keras.ops.dot_product_attention`.

    Going through the fused op lets each backend pick its best kernel (cuDNN or
    flash attention on GPU, XLA's on TPU). Queries and keys/values may come from
    different sequences, which is what MAP pooling needs (one probe query over
    all patch tokens). An `attention_mask` of shape `(batch, keys)`, True
    where a key is real, keeps every query off padded keys (NaFlex's padding
    patches); without one every key is attended.

    The query, key, value and output projections are separate `Dense` layers,
    as in the checkpoints. With `fused_projections` their kernels are joined at
    call time so the projections of one sequence run as one matrix multiply
    (query+key+value in self-attention, key+value in cross-attention). The
    result is the same. A LoRA-enabled projection's `kernel` already holds its
    update; a quantized projection runs as its own `Dense` layer.

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
    >>> tuple(attention(np.zeros((1, 5, 8)), attention_mask=np.array([[1, 1, 1, 0, 0]], bool)).shape)
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
        return is_plain(self.query, self.key, self.value, self.output_projection)

    def _project(self, x, projections):
        """`x`'s projections by the given `Dense` layers, each `(rows, width)`."""
        rows = as_rows(x)
        if self.fused_projections and len(projections) > 1 and is_plain(*projections):
            kernel = ops.concatenate([ops.cast(p.kernel, rows.dtype) for p in projections], axis=-1)
            bias = ops.concatenate([ops.cast(p.bias, rows.dtype) for p in projections], axis=-1)
            return ops.split(ops.matmul(rows, kernel) + bias, len(projections), axis=-1)
        return [dense_rows(p, rows) for p in projections]

    def call(self, query, key_value=None, attention_mask=None):
        batch, width = ops.shape(query)[0], ops.shape(query)[-1]

        def heads(rows):
            return ops.reshape(rows, (batch, -1, self.num_heads, width // self.num_heads))

        if key_value is None:
            q, k, v = self._project(query, (self.query, self.key, self.value))
        else:
            (q,) = self._project(query, (self.query,))
            k, v = self._project(key_value, (self.key, self.value))
        if attention_mask is not None:  # (batch, keys) -> (batch, heads, queries, keys) by broadcasting
            attention_mask = ops.cast(attention_mask, "bool")[:, None, None, :]
        attended = ops.dot_product_attention(
            heads(q), heads(k), heads(v), mask=attention_mask, flash_attention=_flash_attention()
        )
        return from_rows(dense_rows(self.output_projection, ops.reshape(attended, (-1, width))), query)

    def compute_output_shape(self, query_shape, key_value_shape=None, attention_mask_shape=None):
        return query_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "fused_projections": self.fused_projections})
        return config
