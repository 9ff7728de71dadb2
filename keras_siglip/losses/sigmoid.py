"""SigLIP's pairwise sigmoid loss."""

import keras
from keras import ops

from keras_siglip.losses.common import ContrastiveLoss, prepare_embeddings


def sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias):
    """The pairwise sigmoid loss of SigLIP (Zhai et al. 2023, Algorithm 1).

    `logits[i, j] = exp(log_temperature) * <image_i, text_j> + bias`; the label
    is +1 on the diagonal (matching pairs) and -1 elsewhere; the loss is
    `-sum_ij log_sigmoid(label_ij * logits_ij) / batch_size`. It is computed in
    float32 and is stable for large |logits| (`log_sigmoid`, never
    `log(sigmoid(.))`).

    Args:
        image_embeddings: (batch, dim) L2-normalised image embeddings.
        text_embeddings: (batch, dim) L2-normalised text embeddings; row i
            describes image i.
        log_temperature: scalar or shape (1,): t' with t = exp(t').
        bias: scalar or shape (1,): the logit bias b.

    Returns:
        A float32 scalar.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")
    >>> round(float(sigmoid_loss(z, z, np.log(10.0), -10.0)), 4)
    0.0
    """
    image_embeddings, text_embeddings, log_temperature, bias = prepare_embeddings(
        image_embeddings, text_embeddings, log_temperature, bias
    )
    logits = ops.exp(log_temperature) * ops.matmul(image_embeddings, ops.transpose(text_embeddings)) + bias
    batch_size = ops.shape(logits)[0]
    labels = 2.0 * ops.eye(batch_size, dtype="float32") - 1.0
    return -ops.sum(ops.log_sigmoid(labels * logits)) / ops.cast(batch_size, "float32")


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigmoidLoss(ContrastiveLoss):
    """`sigmoid_loss` as a `keras.losses.Loss`, for `SigLIP.compile(loss=...)`.

    `y_pred` is the dict with `"image_embeddings"`, `"text_embeddings"`,
    `"log_temperature"` and `"bias"` that `SigLIP.compute_loss` assembles;
    `y_true` is ignored.

    Args:
        name: optional name.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")
    >>> loss = SigmoidLoss()(None, {"image_embeddings": z, "text_embeddings": z,
    ...                             "log_temperature": 0.0, "bias": 0.0})
    """

    loss_function = staticmethod(sigmoid_loss)

    def __init__(self, name="sigmoid_loss", **kwargs):
        super().__init__(name=name, **kwargs)
