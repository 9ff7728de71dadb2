"""The sigmoid loss and its gradients for one block of logits, and a sweep over blocks.

With `x_ij = t * <a_i, b_j> + bias` (t = exp(t')), `y_ij = +1` on the diagonal
and -1 elsewhere, the loss is `L = sum_ij softplus(-y_ij x_ij) / B`, and

    G_ij    = dL/dx_ij = (sigmoid(x_ij) - [i == j]) / B
    dL/da_i = t * sum_j G_ij b_j          dL/db_j = t * sum_i G_ij a_i
    dL/dbias = sum_ij G_ij                 dL/dt'  = sum_j <b_j, dL/db_j>

so one sweep over blocks gives the loss and every gradient: per block, one
matmul for the logits and two for the gradients, which is the 3 * 2*B*B*d FLOP
of dense forward+backward and no more. `block_loss_and_grads` is that one
block; `sweep` runs it over every block of `rows @ cols^T` in a traced loop
(`keras.ops.fori_loop`). Both the chunked loss (one device) and the ring (the
blocks of several devices) are sweeps.

All arithmetic on logits is float32. On JAX the matmuls take bfloat16 embeddings
as they are and accumulate in float32 (see `backend.matmul_f32`).
"""

from keras import ops

from keras_siglip import backend


class Logits:
    """How a pair's logit is made and its gradient scaled: the loop-invariant scalars of a sweep.

    Args:
        log_temperature, bias: float32 scalars; the logit is
            `exp(log_temperature) * <a, b> + bias`.
        batch_size: the global batch size B, by which the loss is divided.
    """

    def __init__(self, log_temperature, bias, batch_size):
        self.temperature = ops.exp(log_temperature)
        self.bias = bias
        self.batch_size = ops.cast(batch_size, "float32")
        # dL/dembeddings carry t / B on every term.
        self.grad_scale = self.temperature / self.batch_size


def block_loss_and_grads(rows, cols, row_ids, col_ids, logits, *, positives, valid=None, rows_grad=True):
    """The loss and gradients of the block of logits between `rows` and `cols`.

    Args:
        rows: (r, d) embeddings of the block's rows (images).
        cols: (c, d) embeddings of its columns (texts).
        row_ids, col_ids: (r,) and (c,) int32 positions of those rows and
            columns in the batch; pair (i, i) is the positive one.
        logits: a `Logits`.
        positives: whether the block can hold positives (the blocks of the
            ring's other devices hold only negatives).
        valid: None, or an (r, c) bool mask of pairs that exist (padding is
            not a pair).
        rows_grad: also compute dL/drows.

    Returns:
        `(loss_sum, g_sum, cols_grad, rows_grad)`: the block's sum of per-pair
        losses (not divided by B), its sum of `sigmoid(x) - [positive]`,
        dL/dcols (c, d) and dL/drows (r, d, or None), both float32.

    Example:
    >>> import numpy as np
    >>> z, ids = np.eye(2, dtype="float32"), np.arange(2, dtype="int32")
    >>> loss_sum, g_sum, _, _ = block_loss_and_grads(z, z, ids, ids, Logits(0.0, 0.0, 2), positives=True)
    >>> round(float(loss_sum), 4)  # 2 softplus(-1) + 2 softplus(0)
    2.0128
    """
    x = logits.temperature * backend.matmul_f32(rows, cols, transpose_b=True) + logits.bias
    if positives:
        is_positive = ops.equal(ops.expand_dims(row_ids, 1), ops.expand_dims(col_ids, 0))
        # softplus(-y x): softplus(-x) for positives, softplus(x) for negatives.
        losses = ops.softplus(ops.where(is_positive, -x, x))
        g = ops.sigmoid(x) - ops.cast(is_positive, "float32")
    else:
        losses = ops.softplus(x)
        g = ops.sigmoid(x)
    if valid is not None:
        losses = ops.where(valid, losses, 0.0)
        g = ops.where(valid, g, 0.0)
    loss_sum = ops.sum(losses)
    g_sum = ops.sum(g)
    g = ops.cast(g * logits.grad_scale, rows.dtype)
    cols_grad = backend.matmul_f32(g, rows, transpose_a=True)
    rows_grad = backend.matmul_f32(g, cols) if rows_grad else None
    return loss_sum, g_sum, cols_grad, rows_grad


def sweep(rows, cols, logits, plan, *, positives=True, with_rows_grad=True, running_grads=None):
    """`block_loss_and_grads` over every block of `rows @ cols^T`, summed.

    Args:
        rows: (n, d) embeddings indexing the logits' rows (images).
        cols: (n, d) embeddings indexing the logits' columns (texts).
        logits: a `Logits`.
        plan: a `LossPlan`: `col_chunk` columns per block, `row_chunk` rows
            (None: all rows at once).
        positives: whether pair (i, i) is a positive (the block on the diagonal
            of the global logits) or every pair is a negative (the ring's
            blocks between devices).
        with_rows_grad: also return dL/drows (float32).
        running_grads: None, or float32 `(rows_grad, cols_grad)` (n, d)
            accumulators to add to (the ring's running gradients).

    Returns:
        `(loss_sum, g_sum, t_sum, cols_grad, rows_grad)`: the sum of per-pair
        losses (not divided by the batch size), of `sigmoid(x_ij) - y+_ij`, of
        `<cols_j, dL/dcols_j>` over this sweep's own contribution (valid only
        without `running_grads`), dL/dcols (n, d; in `cols`' dtype, or float32
        with `running_grads`) and dL/drows (n, d, float32, or None).

    Example:
    >>> import numpy as np
    >>> from keras_siglip.losses.plan import LossPlan
    >>> z = np.eye(3, dtype="float32")
    >>> loss_sum = sweep(z, z, Logits(0.0, 0.0, 3), LossPlan("chunked", col_chunk=2))[0]
    >>> round(float(loss_sum), 4)  # 3 softplus(-1) + 6 softplus(0)
    5.0987
    """
    col_chunk, row_chunk = plan.col_chunk, plan.row_chunk
    n, dim = rows.shape
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

    def pad_for_rows(x):
        return x if row_chunk is None else backend.pad_rows(x, row_chunk)[0]

    if running_grads is None:
        # Every row of this buffer is written before it is read. It starts as a
        # copy of `cols` rather than as a constant so that two sweeps in one
        # program (the chunked loss's second pass) do not share one constant
        # buffer, which XLA would then copy into each loop.
        cols_grad = ops.copy(cols_padded)
        rows_acc = ops.zeros(ops.shape(rows_padded), "float32") if with_rows_grad else None
    else:
        rows_acc = pad_for_rows(running_grads[0])
        cols_grad = backend.pad_rows(running_grads[1], col_chunk)[0]
    if rows_acc is None:
        rows_acc = ops.zeros((), "float32")  # a placeholder in the loop carry

    def add_block(row_start, row_block, col_start, col_block, carry):
        loss_sum, g_sum, col_acc, rows_acc = carry
        num_rows = row_block.shape[0] or ops.shape(row_block)[0]
        row_ids = row_start + ops.arange(num_rows, dtype="int32")
        col_ids = col_start + ops.arange(col_chunk, dtype="int32")
        valid = None
        if padded_rows:
            valid = ops.expand_dims(row_ids < n, 1)
        if padded_cols:
            col_valid = ops.expand_dims(col_ids < n, 0)
            valid = col_valid if valid is None else ops.logical_and(valid, col_valid)
        block_loss, block_g, block_cols_grad, block_rows_grad = block_loss_and_grads(
            row_block, col_block, row_ids, col_ids, logits, positives=positives, valid=valid,
            rows_grad=with_rows_grad,
        )
        if with_rows_grad:
            if row_chunk is None:
                rows_acc = rows_acc + block_rows_grad
            else:
                rows_acc = backend.add_rows(rows_acc, row_start, block_rows_grad)
        return loss_sum + block_loss, g_sum + block_g, col_acc + block_cols_grad, rows_acc

    def column_step(j, carry):
        loss_sum, g_sum, t_sum, cols_grad, rows_acc = carry
        col_start = j * col_chunk
        col_block = ops.slice(cols_padded, [col_start, 0], [col_chunk, dim])
        if running_grads is None:
            col_acc = ops.zeros((col_chunk, dim), "float32")
        else:
            col_acc = ops.slice(cols_grad, [col_start, 0], [col_chunk, dim])
        inner = (loss_sum, g_sum, col_acc, rows_acc)
        if row_chunk is None:
            inner = add_block(0, rows_padded, col_start, col_block, inner)
        else:

            def row_step(i, inner):
                row_start = i * row_chunk
                row_block = ops.slice(rows_padded, [row_start, 0], [row_chunk, dim])
                return add_block(row_start, row_block, col_start, col_block, inner)

            inner = ops.fori_loop(0, num_row_blocks, row_step, inner)
        loss_sum, g_sum, col_acc, rows_acc = inner
        t_sum = t_sum + ops.sum(ops.cast(col_block, "float32") * col_acc)
        cols_grad = backend.write_rows(cols_grad, col_start, ops.cast(col_acc, cols_grad.dtype))
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
    if not with_rows_grad:
        rows_acc = None
    elif padded_rows:
        rows_acc = rows_acc[:n]
    return loss_sum, g_sum, t_sum, cols_grad, rows_acc
