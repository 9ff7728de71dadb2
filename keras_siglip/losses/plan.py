"""Which method `sigmoid_loss` uses ("dense", "chunked" or "ring"), and its blocks of logits."""

import keras

from keras_siglip import backend

METHODS = ("auto", "dense", "chunked", "ring")

# Largest block of logits (elements) the automatic choice allows: 64 MiB of
# float32 on a CPU, 256 MiB on an accelerator, where bigger blocks keep the
# matmuls efficient. Batches whose whole B x B logits fit are computed densely.
CPU_BLOCK_BUDGET = 2**24
ACCELERATOR_BLOCK_BUDGET = 2**26
# Fewest columns per block the automatic choice uses (narrower blocks make the
# matmuls inefficient); past that, the rows are split as well.
CPU_MIN_CHUNK = 256
ACCELERATOR_MIN_CHUNK = 1024
# Chunk for a batch whose size is unknown when the loss is traced.
UNKNOWN_BATCH_CHUNK = 1024
# Above this size a float32 accumulator for dL/dimage (B x d) is worth a second
# sweep, when the embeddings themselves are 16-bit.
TWO_PASS_ACCUMULATOR_BYTES = 2**30
_FLOAT32_BYTES = 4


class LossPlan:
    """How `sigmoid_loss` computes: `method` is "dense", "chunked" or "ring".

    `col_chunk` and `row_chunk` give the block of logits (`row_chunk` None: all
    rows); `two_pass` whether the image gradient is computed by a second sweep;
    `devices` the number of devices of the ring.
    """

    def __init__(self, method, col_chunk=None, row_chunk=None, two_pass=False, devices=1):
        self.method = method
        self.col_chunk = col_chunk
        self.row_chunk = row_chunk
        self.two_pass = two_pass
        self.devices = devices

    def __repr__(self):
        return (
            f"LossPlan(method={self.method!r}, col_chunk={self.col_chunk}, row_chunk={self.row_chunk}, "
            f"two_pass={self.two_pass}, devices={self.devices})"
        )


def check_method(method, chunk_size):
    """Raises `ValueError` for an unknown `method`, a bad `chunk_size`, or a chunk size on the dense loss."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None (automatic); got {chunk_size!r}.")
    if method == "dense" and chunk_size is not None:
        raise ValueError(f"method='dense' computes the whole B x B logits at once; it takes no chunk_size "
                         f"(got {chunk_size}). Use method='chunked' for blocks.")


def plan_sigmoid_loss(image_embeddings, method="auto", chunk_size=None):
    """The `LossPlan` `sigmoid_loss` follows for embeddings of this shape and dtype, here and now.

    Args:
        image_embeddings: the (batch, dim) embeddings (only shape and dtype are read).
        method: "auto" (the ring under an active JAX distribution whose batch
            axis spans several devices and divides the batch; otherwise dense
            while the B x B logits are small, else chunked), or "dense",
            "chunked", "ring" to insist on one.
        chunk_size: None (automatic) or the columns per block (on each device,
            for the ring).

    Example:
    >>> import numpy as np
    >>> plan_sigmoid_loss(np.zeros((8, 4), "float32")).method
    'dense'
    >>> plan_sigmoid_loss(np.zeros((8, 4), "float32"), chunk_size=3)
    LossPlan(method='chunked', col_chunk=3, row_chunk=None, two_pass=False, devices=1)
    """
    check_method(method, chunk_size)
    batch_size, dim = tuple(image_embeddings.shape)
    dtype = image_embeddings.dtype
    if method == "dense":
        return LossPlan("dense")
    if method in ("auto", "ring"):
        plan = plan_ring(batch_size, dim, dtype, chunk_size, required=method == "ring")
        if plan is not None:
            return plan
    return plan_blocks(batch_size, dim, dtype, chunk_size, allow_dense=method == "auto")


def plan_ring(batch_size, dim, dtype, chunk_size=None, required=False):
    """A ring plan when the active distribution's batch axis divides the batch, else None.

    With `required=True` a `ValueError` says why there is no ring instead.
    """
    axis = backend.ring_batch_axis()
    if axis is None:
        problem = backend.why_no_ring_batch_axis()
    elif batch_size is None:
        problem = "the batch size is unknown when the loss is traced"
    elif batch_size % axis.devices:
        problem = f"the batch of {batch_size} does not split evenly over the {axis.devices} devices of axis {axis.name!r}"
    else:
        local = plan_blocks(batch_size // axis.devices, dim, dtype, chunk_size)
        col_chunk = local.col_chunk or batch_size // axis.devices
        return LossPlan("ring", col_chunk=col_chunk, row_chunk=local.row_chunk, devices=axis.devices)
    if required:
        raise ValueError(f"method='ring' cannot be used: {problem}.")
    return None


def plan_blocks(batch_size, dim, dtype, chunk_size=None, block_budget=None, allow_dense=True):
    """Chooses dense or chunked, and the blocks, for one device holding the batch.

    `allow_dense=False` gives the blocks the automatic choice would use even
    where it would compute densely (method="chunked").
    """
    check_method("chunked", chunk_size)
    accelerator = backend.has_accelerator()
    if block_budget is None:
        block_budget = ACCELERATOR_BLOCK_BUDGET if accelerator else CPU_BLOCK_BUDGET
    min_chunk = ACCELERATOR_MIN_CHUNK if accelerator else CPU_MIN_CHUNK
    if chunk_size is not None:
        col_chunk = chunk_size if batch_size is None else min(chunk_size, batch_size)
    elif batch_size is None:
        col_chunk = UNKNOWN_BATCH_CHUNK
    elif allow_dense and batch_size * batch_size <= block_budget:
        return LossPlan("dense")
    else:
        col_chunk = _power_of_two_at_most(max(block_budget // batch_size, min_chunk))
        col_chunk = min(col_chunk, batch_size)
    row_chunk = None
    if batch_size is not None and batch_size * col_chunk > block_budget:
        row_chunk = max(block_budget // col_chunk, col_chunk)
        if row_chunk >= batch_size:
            row_chunk = None
    two_pass = (
        batch_size is not None
        and dim is not None
        and keras.backend.standardize_dtype(dtype) in ("bfloat16", "float16")
        and backend.low_precision_matmuls()
        and batch_size * dim * _FLOAT32_BYTES > TWO_PASS_ACCUMULATOR_BYTES
    )
    return LossPlan("chunked", col_chunk=col_chunk, row_chunk=row_chunk, two_pass=two_pass)


def _power_of_two_at_most(value):
    return 1 << (int(value).bit_length() - 1)
