"""The softmax (CLIP / InfoNCE) contrastive loss, the paper's baseline."""

import keras
from keras import ops

from keras_siglip.losses.common import ContrastiveLoss, prepare_embeddings


def softmax_loss(image_embeddings, text_embeddings, log_temperature, bias=0.0):
    """The CLIP loss: mean of image->text and text->image cross-entropy.

    Takes the same arguments as `sigmoid_loss` so the two can be swapped in one
    script. `bias` is accepted but has no effect: adding a constant to every
    logit of a row leaves its softmax unchanged.

    Args:
        image_embeddings: (batch, dim) L2-normalised image embeddings.
        text_embeddings: (batch, dim) L2-normalised text embeddings.
        log_temperature: scalar or shape (1,): t' with t = exp(t').
        bias: scalar or shape (1,); ignored.

    Returns:
        A float32 scalar.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")
    >>> float(softmax_loss(z, z, np.log(100.0))) < 1e-3
    True
    """
    image_embeddings, text_embeddings, log_temperature, _ = prepare_embeddings(
        image_embeddings, text_embeddings, log_temperature, bias
    )
    logits = ops.exp(log_temperature) * ops.matmul(image_embeddings, ops.transpose(text_embeddings))
    image_to_text = -ops.mean(ops.diagonal(ops.log_softmax(logits, axis=1)))
    text_to_image = -ops.mean(ops.diagonal(ops.log_softmax(logits, axis=0)))
    return (image_to_text + text_to_image) / 2.0


@keras.saving.register_keras_serializable(package="keras_siglip")
class SoftmaxLoss(ContrastiveLoss):
    """`softmax_loss` as a `keras.losses.Loss`, for `SigLIP.compile(loss=...)`.

    Args:
        name: optional name.
    """

    loss_function = staticmethod(softmax_loss)

    def __init__(self, name="softmax_loss", **kwargs):
        super().__init__(name=name, **kwargs)
