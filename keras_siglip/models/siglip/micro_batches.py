"""Exact large-batch gradients from small micro-batches (GradCache, Gao et al. 2021).

A contrastive loss couples every image with every caption of the batch, so
averaging the gradients of small batches (Keras's `gradient_accumulation_steps`)
optimises a different objective: each small batch sees only its own negatives.
Here the towers run one micro-batch at a time inside the training step, and
each micro-batch is rematerialised: the forward pass keeps only the
micro-batch's inputs and its embeddings, the loss sees all B embeddings at once
(so its value and gradients are those of the full batch), and the backward pass
re-runs each micro-batch's forward and back-propagates its slice of the
embeddings' gradient. Activation memory is that of one micro-batch; the price
is one extra forward pass of the towers.

Both passes come from `keras.remat` and a map over the micro-batches
(`backend.map_micro_batches`: a `lax.map` on JAX, a loop on PyTorch and
TensorFlow), so Keras's own training step computes the gradients and applies
the optimizer once per global batch.
"""

import keras
from keras import ops

from keras_siglip import backend


def check_micro_batch_size(micro_batch_size):
    """None, or a positive int; anything else raises `ValueError`."""
    if micro_batch_size is None:
        return None
    if not isinstance(micro_batch_size, int) or isinstance(micro_batch_size, bool) or micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be a positive int or None; got {micro_batch_size!r}.")
    return micro_batch_size


def check_batch_size(batch_size, micro_batch_size):
    """Raises `ValueError` unless the (static) batch size splits into whole micro-batches."""
    if batch_size is None:
        raise ValueError(
            "micro_batch_size needs a batch size known when the training step is traced; "
            "this batch has an unknown batch dimension (batch a tf.data pipeline with drop_remainder=True)."
        )
    if micro_batch_size > batch_size:
        raise ValueError(
            f"micro_batch_size={micro_batch_size} is larger than the batch of {batch_size} pairs; "
            "use a micro-batch size that divides the batch size."
        )
    if batch_size % micro_batch_size:
        raise ValueError(
            f"A batch of {batch_size} pairs does not split into micro-batches of {micro_batch_size}: "
            "the batch size must be a multiple of micro_batch_size (with arrays, the last batch of an "
            "epoch is smaller unless the number of samples is a multiple of batch_size; batch a "
            "tf.data pipeline with drop_remainder=True)."
        )


def first_batch_size(x):
    """The number of pairs in the first batch of a `PyDataset` or a stream, and `x` itself.

    Returns `(None, x)` for arrays and `tf.data` pipelines, whose batch size
    Keras traces as it is. A generator or iterator comes back with its first
    batch put in front again.
    """

    def size(batch):
        batch = batch[0] if isinstance(batch, tuple) else batch
        first = next(iter(batch.values())) if isinstance(batch, dict) else batch
        shape = getattr(first, "shape", None)
        return int(shape[0]) if shape is not None and len(shape) and shape[0] is not None else None

    if isinstance(x, keras.utils.PyDataset):
        return (size(x[0]) if x.num_batches != 0 else None), x
    if hasattr(x, "__next__") and not hasattr(x, "shape"):
        try:
            first = next(x)
        except StopIteration:
            return None, iter(())
        return size(first), _prepended(first, x)
    return None, x


def _prepended(first, rest):
    yield first
    yield from rest


def split(x, micro_batch_size):
    """(B, ...) -> (B / m, m, ...); micro-batch j holds rows j, j + B/m, j + 2B/m, ...

    Strided rather than contiguous: a batch split over D devices in contiguous
    shards gives every micro-batch m / D rows of each shard, so under a
    data-parallel `keras.distribution` each device works on its own rows.
    """
    count = x.shape[0] // micro_batch_size
    x = ops.reshape(x, (micro_batch_size, count) + tuple(x.shape[1:]))
    return ops.swapaxes(x, 0, 1)


def merge(x):
    """The inverse of `split`: (B / m, m, ...) -> (B, ...) in the original row order."""
    x = ops.swapaxes(x, 0, 1)
    return ops.reshape(x, (-1,) + tuple(x.shape[2:]))


def encode_in_micro_batches(encode, inputs, micro_batch_size, rematerialise=True):
    """`encode(inputs)`, computed `micro_batch_size` rows at a time.

    Args:
        encode: a function of a (m, ...) batch returning (m, ...) outputs; it
            must treat rows independently (no batch statistics).
        inputs: a (B, ...) tensor; B must be a multiple of `micro_batch_size`.
        micro_batch_size: int. Rows per micro-batch.
        rematerialise: bool. Keep only each micro-batch's inputs for the
            backward pass and recompute its activations there (True for a
            tower that trains; False for a frozen one, which needs no backward).

    Returns:
        The outputs for all B rows, in the input's order.

    Example:
    >>> import numpy as np
    >>> x = np.arange(12, dtype="float32").reshape(6, 2)
    >>> y = encode_in_micro_batches(lambda rows: rows * 2.0, x, micro_batch_size=2)
    >>> bool(np.all(keras.ops.convert_to_numpy(y) == x * 2.0))
    True
    """
    check_batch_size(inputs.shape[0], micro_batch_size)
    if micro_batch_size == inputs.shape[0]:  # one micro-batch is the whole batch
        return encode(inputs)
    step = keras.remat(encode) if rematerialise else encode
    return merge(backend.map_micro_batches(step, split(inputs, micro_batch_size)))
