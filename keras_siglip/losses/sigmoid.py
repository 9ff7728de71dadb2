"""SigLIP's pairwise sigmoid loss."""

import keras
from keras import ops

from keras_siglip import backend
from keras_siglip.losses import chunked, ring
from keras_siglip.losses.common import ContrastiveLoss, prepare_embeddings


def sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, chunk_size=None):
    """The pairwise sigmoid loss of SigLIP (Zhai et al. 2023, Algorithm 1).

    `logits[i, j] = exp(log_temperature) * <image_i, text_j> + bias`; the label
    is +1 on the diagonal (matching pairs) and -1 elsewhere; the loss is
    `-sum_ij log_sigmoid(label_ij * logits_ij) / batch_size`. It is computed in
    float32 and is stable for large |logits| (`log_sigmoid`, never
    `log(sigmoid(.))`).

    How it is computed is chosen once per call (`plan_sigmoid_loss` says which):

    - **ring**: on JAX under a `keras.distribution` distribution whose batch
      axis spans several devices (and divides the batch), each device computes
      its own block of logits and the text embeddings travel round the devices
      (see `keras_siglip.losses.ring`); per-device memory is (B/D)^2, not B^2;
    - **chunked**: blocks of at most B x `chunk_size` logits, the gradient
      computed in the same pass (see `keras_siglip.losses.chunked`);
    - **dense**: the whole B x B matrix, for batches small enough that this is
      cheapest.

    All three give the same value and gradients (to float32 rounding).

    Args:
        image_embeddings: (batch, dim) L2-normalised image embeddings.
        text_embeddings: (batch, dim) L2-normalised text embeddings; row i
            describes image i.
        log_temperature: scalar or shape (1,): t' with t = exp(t').
        bias: scalar or shape (1,): the logit bias b.
        chunk_size: None (automatic: dense while the B x B logits are small,
            else blocks sized to a fixed budget) or a positive int forcing
            blocks of that many columns (on each device, for the ring).

    Returns:
        A float32 scalar.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")
    >>> round(float(sigmoid_loss(z, z, np.log(10.0), -10.0)), 4)
    0.0
    >>> round(float(sigmoid_loss(z, z, np.log(10.0), -10.0, chunk_size=3)), 4)
    0.0
    """
    image_embeddings, text_embeddings, log_temperature, bias = prepare_embeddings(
        image_embeddings, text_embeddings, log_temperature, bias, cast=False
    )
    plan = plan_sigmoid_loss(image_embeddings, chunk_size)
    if plan.method == "ring":
        return ring.ring_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, plan)
    if plan.method == "dense" or not backend.low_precision_matmuls():
        image_embeddings = ops.cast(image_embeddings, "float32")
        text_embeddings = ops.cast(text_embeddings, "float32")
    if plan.method == "dense":
        return dense_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias)
    return chunked.chunked_sigmoid_loss(
        image_embeddings, text_embeddings, log_temperature, bias,
        col_chunk=plan.col_chunk, row_chunk=plan.row_chunk, two_pass=plan.two_pass,
    )


def plan_sigmoid_loss(image_embeddings, chunk_size=None):
    """The `ChunkPlan` `sigmoid_loss` follows for embeddings of this shape and dtype, here and now.

    Ring under an active JAX distribution with a multi-device batch axis that
    divides the batch; otherwise chunked or dense (`chunked.plan_chunks`).
    """
    batch_size, dim = tuple(image_embeddings.shape)
    dtype = image_embeddings.dtype
    plan = ring.plan_ring(batch_size, dim, dtype, chunk_size)
    if plan is None:
        plan = chunked.plan_chunks(batch_size, dim, dtype, chunk_size)
    return plan


def dense_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias):
    """The loss on the whole B x B logits, differentiated by the backend (float32 inputs)."""
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
        chunk_size: as in `sigmoid_loss`: None (automatic) or the number of
            columns per block of logits.
        name: optional name.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")
    >>> loss = SigmoidLoss(chunk_size=2)(None, {"image_embeddings": z, "text_embeddings": z,
    ...                                         "log_temperature": 0.0, "bias": 0.0})
    """

    loss_function = staticmethod(sigmoid_loss)

    def __init__(self, chunk_size=None, name="sigmoid_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if chunk_size is not None:
            chunked.plan_chunks(None, None, "float32", chunk_size)  # validates it now
        self.chunk_size = chunk_size

    def _loss_options(self):
        return {"chunk_size": self.chunk_size}

    def get_config(self):
        config = super().get_config()
        config["chunk_size"] = self.chunk_size
        return config
