"""Multi-head dot-product attention over `keras.ops.dot_product_attention`."""

import math

import keras
from keras import ops


def glorot_uniform_for(fan_in, fan_out, seed=None):
    """Xavier-uniform with explicit fans, as flax's `DenseGeneral` computes them."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.initializers.RandomUniform(-limit, limit, seed=seed)


@keras.saving.register_keras_serializable(package="keras_siglip")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head attention whose core is `keras.ops.dot_product_attention`.

    Going through the fused op lets each backend pick its best kernel (cuDNN or
    flash attention on GPU, XLA's on TPU). Queries and keys/values may come from
    different sequences, which is what MAP pooling needs (one probe query over
    all patch tokens).

    The query, key, value and output projections are separate `Dense` layers,
    as in the checkpoints; with `fused_projections` their kernels are joined
    at call time so the projections of one sequence run as one matrix
    multiply (query+key+value in self-attention, key+value in cross-attention).
    The result is the same; a LoRA-enabled or quantized projection is always
    called on its own.

    Args:
        num_heads: int. Number of attention heads; must divide the width.
        fused_projections: bool. Join the projections of one input into one
            matrix multiply.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:
    >>> import numpy as np
    >>> attention = MultiHeadAttention(num_heads=2)
    >>> attention(np.zeros((1, 5, 8)), np.zeros((1, 7, 8))).shape
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
        self.head_dim = width // self.num_heads

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

    def _split_heads(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (batch, length, self.num_heads, self.head_dim))

    def _project(self, x, projections):
        """`[p(x) for p in projections]`, as one matrix multiply when allowed."""
        fusable = self.fused_projections and len(projections) > 1 and not any(
            p.lora_enabled or p.dtype_policy.quantization_mode for p in projections
        )
        if not fusable:
            return [p(x) for p in projections]
        kernel = ops.concatenate([ops.cast(p.kernel, x.dtype) for p in projections], axis=-1)
        bias = ops.concatenate([ops.cast(p.bias, x.dtype) for p in projections], axis=-1)
        joined = ops.matmul(x, kernel) + bias
        return ops.split(joined, len(projections), axis=-1)

    def call(self, query, key_value=None):
        if key_value is None:
            q, k, v = self._project(query, [self.query, self.key, self.value])
        else:
            (q,) = self._project(query, [self.query])
            k, v = self._project(key_value, [self.key, self.value])
        q, k, v = (self._split_heads(t) for t in (q, k, v))
        attended = ops.dot_product_attention(q, k, v)
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        attended = ops.reshape(attended, (batch, length, self.num_heads * self.head_dim))
        return self.output_projection(attended)

    def compute_output_shape(self, query_shape, key_value_shape=None):
        return query_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "fused_projections": self.fused_projections})
        return config
