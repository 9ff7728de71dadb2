"""A loss whose gradients were computed in its forward pass; the backward pass only scales them."""

from keras import ops


def loss_with_saved_gradients(forward):
    """Wraps `forward` in `keras.ops.custom_gradient`, for the fused blockwise losses.

    Args:
        forward: `forward(image_embeddings, text_embeddings, log_temperature,
            bias)` returning `(loss, (image_grad, text_grad, log_temperature_grad,
            bias_grad))`: the float32 scalar loss and its gradient wrt each input
            (the embeddings' gradients in the embeddings' dtype).

    Returns:
        A function of the same four inputs returning the loss, differentiable
        by every backend's autodiff.

    Example:
    >>> import numpy as np
    >>> def forward(a, b, t, c):
    ...     return ops.sum(a * b) + t + c, (b, a, ops.ones(()), ops.ones(()))
    >>> loss = loss_with_saved_gradients(forward)
    >>> round(float(loss(np.ones(2, "float32"), np.ones(2, "float32"), 0.0, 0.0)), 4)
    2.0
    """

    @ops.custom_gradient
    def loss_and_grads(image_embeddings, text_embeddings, log_temperature, bias):
        loss, (image_grad, text_grad, log_temperature_grad, bias_grad) = forward(
            image_embeddings, text_embeddings, log_temperature, bias
        )

        def grad(*args, upstream=None):
            if upstream is None:  # JAX and TensorFlow pass it positionally, PyTorch by name
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            return (
                scaled(image_grad, upstream),
                scaled(text_grad, upstream),
                upstream * log_temperature_grad,
                upstream * bias_grad,
            )

        return loss, grad

    return loss_and_grads


def scaled(gradient, upstream):
    """`upstream * gradient` in the gradient's own dtype (bfloat16 gradients stay bfloat16)."""
    return ops.cast(ops.cast(upstream, gradient.dtype) * gradient, gradient.dtype)
