"""The sigmoid loss on the whole B x B logits at once, differentiated by the backend."""

from keras import ops


def dense_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias):
    """The loss from the full logits matrix (float32 inputs; `sigmoid_loss(method="dense")` casts them).

    Args:
        image_embeddings, text_embeddings: (B, d) float32.
        log_temperature, bias: float32 scalars.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")
    >>> round(float(dense_sigmoid_loss(z, z, np.float32(0.0), np.float32(0.0))), 4)
    2.3927
    """
    logits = ops.exp(log_temperature) * ops.matmul(image_embeddings, ops.transpose(text_embeddings)) + bias
    batch_size = ops.shape(logits)[0]
    labels = 2.0 * ops.eye(batch_size, dtype="float32") - 1.0
    return -ops.sum(ops.log_sigmoid(labels * logits)) / ops.cast(batch_size, "float32")
