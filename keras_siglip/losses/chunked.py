"""The sigmoid loss block by block, with its gradient computed in the same pass.

With `x_ij = t * <a_i, b_j> + bias` (t = exp(t')), `y_ij = +1` on the diagonal
and -1 elsewhere, the loss is `L = sum_ij softplus(-y_ij x_ij) / B`, and

    G_ij    = dL/dx_ij = (sigmoid(x_ij) - [i == j]) / B
    dL/da_i = t * sum_j G_ij b_j          dL/db_j = t * sum_i G_ij a_i
    dL/dbias = sum_ij G_ij                 dL/dt'  = sum_j <b_j, dL/db_j>

so one sweep over blocks of columns (text embeddings) gives the loss and every
gradient: per block, one matmul for the logits and two for the gradients, which
is the 3 * 2*B*B*d FLOP of dense forward+backward and no more. The gradients are
computed in the forward pass inside `keras.ops.custom_gradient` and saved; the
backward pass only scales them by the upstream gradient. Nothing of size B x B
is ever held: a block of logits is B x c (or r x c when even that is too big),
and the loop body is traced once (`keras.ops.fori_loop`).

All arithmetic on logits is float32. On JAX the matmuls take bfloat16 embeddings
as they are and accumulate in float32 (see `backend.matmul_f32`).
"""

import keras
from keras import ops

from keras_siglip import backend

_FLOAT32_BYTES = 4


def sweep(
    rows,
    cols,
    temperature,
    bias,
    grad_scale,
    *,
    col_chunk,
    row_chunk=None,
    positives=True,
    rows_grad=True,
    rows_grad_init=None,
    cols_grad_init=None,
    cols_grad_dtype="float32",
    buffer_fill=0.0,
):
    """One pass over the logits `temperature * rows @ cols^T + bias`, block by block.

    Args:
        rows: (n, d) embeddings indexing the logits' rows (images).
        cols: (n, d) embeddings indexing the logits' columns (texts).
        temperature, bias: float32 scalars.
        grad_scale: float32 scalar, `temperature / global_batch_size`.
        col_chunk: columns per block.
        row_chunk: rows per block, or None for all rows at once.
        positives: whether pair (i, i) is a positive (the block on the diagonal
            of the global logits) or every pair is a negative (the off-diagonal
            blocks of the ring).
        rows_grad: also accumulate dL/drows (float32, n x d).
        rows_grad_init, cols_grad_init: optional float32 (n, d) accumulators to
            continue from (the ring's running gradients).
        cols_grad_dtype: dtype in which dL/dcols is stored.
        buffer_fill: what the dL/dcols buffer holds before the sweep writes
            every row of it; the value does not matter (see the comment where
            the buffer is made).

    Returns:
        `(loss_sum, g_sum, t_sum, cols_grad, rows_grad)`: the sum of per-pair
        losses (not divided by the batch size), `sum_ij (sigmoid(x_ij) - y+_ij)`,
        `sum_j <cols_j, dL/dcols_j>` over this sweep's own contribution (valid
        only without `cols_grad_init`), dL/dcols (n, d) and dL/drows (n, d,
        float32, or None).
    """
    n = rows.shape[0]
    dim = rows.shape[1]
    dynamic = n is None
    if dynamic:
        n = ops.shape(rows)[0]
    cols_padded, num_col_blocks = backend.pad_rows(cols, col_chunk)
    padded_cols = dynamic or n % col_chunk != 0
    if row_chunk is None or (not dynamic and row_chunk >= n):
        row_chunk = None
        rows_padded, num_row_blocks, padded_rows = rows, 1, False
    else:
        rows_padded, num_row_blocks = backend.pad_rows(rows, row_chunk)
        padded_rows = dynamic or n % row_chunk != 0

    def padded_zeros(like, dtype):
        return ops.zeros(ops.shape(like), dtype=dtype)

    if cols_grad_init is None:
        # Every row of this buffer is written before it is read, so its fill is
        # irrelevant; `buffer_fill` only keeps the two sweeps of `two_pass`
        # from sharing one constant, which XLA would then copy into each loop.
        cols_grad = ops.full(ops.shape(cols_padded), buffer_fill, dtype=cols_grad_dtype)
    else:
        cols_grad = backend.pad_rows(ops.cast(cols_grad_init, cols_grad_dtype), col_chunk)[0]
    if not rows_grad:
        rows_acc = ops.zeros((), "float32")  # a placeholder in the loop carry
    elif rows_grad_init is None:
        rows_acc = padded_zeros(rows_padded, "float32")
    else:
        rows_acc = rows_grad_init if row_chunk is None else backend.pad_rows(rows_grad_init, row_chunk)[0]
    compute_dtype = rows.dtype

    def block(row_start, row_block, col_start, col_block, carry):
        """Adds one (r, c) block's loss and gradients to the running sums."""
        loss_sum, g_sum, col_acc, rows_acc = carry
        num_rows = row_block.shape[0] or ops.shape(row_block)[0]
        logits = temperature * backend.matmul_f32(row_block, col_block, transpose_b=True) + bias
        row_ids = row_start + ops.arange(num_rows, dtype="int32")
        col_ids = col_start + ops.arange(col_chunk, dtype="int32")
        valid = None
        if padded_rows:
            valid = ops.expand_dims(row_ids < n, 1)
        if padded_cols:
            col_valid = ops.expand_dims(col_ids < n, 0)
            valid = col_valid if valid is None else ops.logical_and(valid, col_valid)
        if positives:
            is_positive = ops.equal(ops.expand_dims(row_ids, 1), ops.expand_dims(col_ids, 0))
            # softplus(-y x): softplus(-x) for positives, softplus(x) for negatives.
            losses = ops.softplus(ops.where(is_positive, -logits, logits))
            g = ops.sigmoid(logits) - ops.cast(is_positive, "float32")
        else:
            losses = ops.softplus(logits)
            g = ops.sigmoid(logits)
        if valid is not None:
            losses = ops.where(valid, losses, 0.0)
            g = ops.where(valid, g, 0.0)
        loss_sum = loss_sum + ops.sum(losses)
        g_sum = g_sum + ops.sum(g)
        g = ops.cast(g * grad_scale, compute_dtype)
        col_acc = col_acc + backend.matmul_f32(g, row_block, transpose_a=True)
        if rows_grad:
            rows_update = backend.matmul_f32(g, col_block)
            if row_chunk is None:
                rows_acc = rows_acc + rows_update
            else:
                rows_acc = backend.add_rows(rows_acc, row_start, rows_update)
        return loss_sum, g_sum, col_acc, rows_acc

    def column_step(j, carry):
        loss_sum, g_sum, t_sum, cols_grad, rows_acc = carry
        col_start = j * col_chunk
        col_block = ops.slice(cols_padded, [col_start, 0], [col_chunk, dim])
        if cols_grad_init is None:
            col_acc = ops.zeros((col_chunk, dim), "float32")
        else:
            col_acc = ops.cast(ops.slice(cols_grad, [col_start, 0], [col_chunk, dim]), "float32")
        inner = (loss_sum, g_sum, col_acc, rows_acc)
        if row_chunk is None:
            inner = block(0, rows_padded, col_start, col_block, inner)
        else:

            def row_step(i, inner):
                row_start = i * row_chunk
                row_block = ops.slice(rows_padded, [row_start, 0], [row_chunk, dim])
                return block(row_start, row_block, col_start, col_block, inner)

            inner = ops.fori_loop(0, num_row_blocks, row_step, inner)
        loss_sum, g_sum, col_acc, rows_acc = inner
        t_sum = t_sum + ops.sum(ops.cast(col_block, "float32") * col_acc)
        cols_grad = backend.write_rows(cols_grad, col_start, ops.cast(col_acc, cols_grad_dtype))
        return loss_sum, g_sum, t_sum, cols_grad, rows_acc

    zero = ops.zeros((), "float32")
    carry = (zero, zero, zero, cols_grad, rows_acc)
    if not dynamic and num_col_blocks == 1:
        carry = column_step(0, carry)
    else:
        carry = ops.fori_loop(0, num_col_blocks, column_step, carry)
    loss_sum, g_sum, t_sum, cols_grad, rows_acc = carry
    if padded_cols:
        cols_grad = cols_grad[:n]
    if not rows_grad:
        rows_acc = None
    elif padded_rows:
        rows_acc = rows_acc[:n]
    return loss_sum, g_sum, t_sum, cols_grad, rows_acc


def chunked_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, *, col_chunk, row_chunk=None,
                         two_pass=False):
    """The sigmoid loss with a custom gradient, holding at most one block of logits.

    Args:
        image_embeddings, text_embeddings: (B, d), float32 or (on JAX) bfloat16/float16.
        log_temperature, bias: float32 scalars.
        col_chunk: columns (texts) per block.
        row_chunk: rows (images) per block, or None for all rows.
        two_pass: instead of accumulating dL/dimage in a (B, d) float32 buffer,
            make a second sweep with the roles of images and texts swapped
            (4 matmuls instead of 3). Only useful for low-precision embeddings
            at a batch size where that float32 buffer is what limits memory.
    """

    @ops.custom_gradient
    def loss_and_grads(image_embeddings, text_embeddings, log_temperature, bias):
        temperature = ops.exp(log_temperature)
        batch_size = ops.cast(ops.shape(image_embeddings)[0], "float32")
        grad_scale = temperature / batch_size
        options = dict(col_chunk=col_chunk, row_chunk=row_chunk)
        loss_sum, g_sum, t_sum, text_grad, image_grad = sweep(
            image_embeddings, text_embeddings, temperature, bias, grad_scale, rows_grad=not two_pass,
            cols_grad_dtype=text_embeddings.dtype, **options,
        )
        if two_pass:
            # The logits transposed are the same pairs; (i, i) stays positive.
            image_grad = sweep(
                text_embeddings, image_embeddings, temperature, bias, grad_scale, rows_grad=False,
                cols_grad_dtype=image_embeddings.dtype, buffer_fill=1.0, **options,
            )[3]
        else:
            image_grad = ops.cast(image_grad, image_embeddings.dtype)
        loss = loss_sum / batch_size
        bias_grad = g_sum / batch_size

        def grad(*args, upstream=None):
            if upstream is None:  # JAX and TensorFlow pass it positionally, PyTorch by name
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            return (
                _scale(image_grad, upstream),
                _scale(text_grad, upstream),
                upstream * t_sum,
                upstream * bias_grad,
            )

        return loss, grad

    return loss_and_grads(image_embeddings, text_embeddings, log_temperature, bias)


def _scale(gradient, upstream):
    return ops.cast(ops.cast(upstream, gradient.dtype) * gradient, gradient.dtype)


class ChunkPlan:
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
            f"ChunkPlan(method={self.method!r}, col_chunk={self.col_chunk}, row_chunk={self.row_chunk}, "
            f"two_pass={self.two_pass}, devices={self.devices})"
        )


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


def plan_chunks(batch_size, dim, dtype, chunk_size=None, block_budget=None, allow_dense=True):
    """Chooses dense or chunked, and the blocks, for one device holding the batch.

    `allow_dense=False` gives the blocks the automatic choice would use even
    where it would compute densely (the benchmark's "chunked" rows).
    """
    accelerator = backend.has_accelerator()
    if block_budget is None:
        block_budget = ACCELERATOR_BLOCK_BUDGET if accelerator else CPU_BLOCK_BUDGET
    min_chunk = ACCELERATOR_MIN_CHUNK if accelerator else CPU_MIN_CHUNK
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None (automatic); got {chunk_size!r}.")
        col_chunk = chunk_size if batch_size is None else min(chunk_size, batch_size)
    elif batch_size is None:
        col_chunk = UNKNOWN_BATCH_CHUNK
    elif allow_dense and batch_size * batch_size <= block_budget:
        return ChunkPlan("dense")
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
    return ChunkPlan("chunked", col_chunk=col_chunk, row_chunk=row_chunk, two_pass=two_pass)


def _power_of_two_at_most(value):
    return 1 << (int(value).bit_length() - 1)
