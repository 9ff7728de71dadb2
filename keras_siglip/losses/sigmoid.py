"""SigLIP's pairwise sigmoid loss, and the method that computes it."""

import keras
from keras import ops

from keras_siglip import backend
from keras_siglip.losses.chunked import chunked_sigmoid_loss
from keras_siglip.losses.common import ContrastiveLoss, prepare_embeddings
from keras_siglip.losses.dense import dense_sigmoid_loss
from keras_siglip.losses.plan import check_method, plan_sigmoid_loss
from keras_siglip.losses.ring import ring_sigmoid_loss

__all__ = ["SigmoidLoss", "dense_sigmoid_loss", "plan_sigmoid_loss", "sigmoid_loss"]


def sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, *, method="auto", chunk_size=None):
    """The pairwise sigmoid loss of SigLIP (Zhai et al. 2023, Algorithm 1).

    `logits[i, j] = exp(log_temperature) * <image_i, text_j> + bias`; the label
    is +1 on the diagonal (matching pairs) and -1 elsewhere; the loss is
    `-sum_ij log_sigmoid(label_ij * logits_ij) / batch_size`. It is computed in
    float32 and is stable for large |logits| (`log_sigmoid`, never
    `log(sigmoid(.))`).

    The methods (all give the same value and gradients, to float32 rounding):

    - **dense**: the whole B x B matrix, differentiated by the backend;
      cheapest for small batches;
    - **chunked**: blocks of at most B x `chunk_size` logits, the gradient
      computed in the same pass (see `keras_siglip.losses.chunked`);
    - **ring** (JAX only): under a `keras.distribution` distribution whose
      batch axis spans several devices and divides the batch, each device
      computes its own blocks of logits and the text embeddings travel round
      the devices (see `keras_siglip.losses.ring`); per-device memory is
      (B/D)^2, not B^2;
    - **auto**: ring where it can run, else dense while the B x B logits are
      small and no `chunk_size` is given, else chunked. `plan_sigmoid_loss`
      says what it picks.

    Args:
        image_embeddings: (batch, dim) L2-normalised image embeddings.
        text_embeddings: (batch, dim) L2-normalised text embeddings; row i
            describes image i.
        log_temperature: scalar or shape (1,): t' with t = exp(t').
        bias: scalar or shape (1,): the logit bias b.
        method: "auto", "dense", "chunked" or "ring" (see above).
        chunk_size: None (automatic blocks) or a positive int: the columns per
            block (on each device, for the ring). Not for method="dense".

    Returns:
        A float32 scalar.

    Raises:
        ValueError: for an unknown method, a bad chunk_size or one with
            method="dense", or method="ring" where no ring can run.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")  # four perfectly matched pairs
    >>> round(float(sigmoid_loss(z, z, np.log(10.0), -10.0)), 4)  # positives at logit 0: log 2 each
    0.6933
    >>> round(float(sigmoid_loss(z, z, np.log(10.0), -10.0, method="chunked", chunk_size=3)), 4)
    0.6933
    >>> round(float(sigmoid_loss(z, z, np.log(100.0), -50.0)), 4)  # logits +-50: confident and right
    0.0
    """
    check_method(method, chunk_size)
    image_embeddings, text_embeddings, log_temperature, bias = prepare_embeddings(
        image_embeddings, text_embeddings, log_temperature, bias, cast=False
    )
    plan = plan_sigmoid_loss(image_embeddings, method, chunk_size)
    if plan.method == "ring":
        return ring_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, plan)
    if plan.method == "dense" or not backend.low_precision_matmuls():
        image_embeddings = ops.cast(image_embeddings, "float32")
        text_embeddings = ops.cast(text_embeddings, "float32")
    if plan.method == "dense":
        return dense_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias)
    return chunked_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, plan)


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigmoidLoss(ContrastiveLoss):
    """`sigmoid_loss` as a `keras.losses.Loss`, for `SigLIP.compile(loss=...)`.

    `y_pred` is the dict with `"image_embeddings"`, `"text_embeddings"`,
    `"log_temperature"` and `"bias"` that `SigLIP.compute_loss` assembles;
    `y_true` is ignored.

    Args:
        method: as in `sigmoid_loss`: "auto", "dense", "chunked" or "ring".
        chunk_size: as in `sigmoid_loss`: None (automatic) or the number of
            columns per block of logits.
        name: optional name.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")
    >>> loss = SigmoidLoss(method="chunked", chunk_size=2)
    >>> y_pred = {"image_embeddings": z, "text_embeddings": z, "log_temperature": 0.0, "bias": 0.0}
    >>> round(float(loss(None, y_pred)), 4)
    2.3927
    >>> SigmoidLoss.from_config(loss.get_config()).method
    'chunked'
    """

    loss_function = staticmethod(sigmoid_loss)

    def __init__(self, method="auto", chunk_size=None, name="sigmoid_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        check_method(method, chunk_size)
        self.method = method
        self.chunk_size = chunk_size

    def loss_options(self):
        return {"method": self.method, "chunk_size": self.chunk_size}

    def get_config(self):
        config = super().get_config()
        config.update(method=self.method, chunk_size=self.chunk_size)
        return config
