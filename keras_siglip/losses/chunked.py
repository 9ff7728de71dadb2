"""The sigmoid loss on one device, block by block, with its gradient computed in the same pass.

One `blocks.sweep` over blocks of columns (text embeddings) gives the loss and
every gradient; they are saved in the forward pass (`loss_with_saved_gradients`)
and the backward pass only scales them by the upstream gradient. Nothing of
size B x B is ever held: a block of logits is B x c (or r x c when even that is
too big), and the loop body is traced once.
"""

from keras import ops

from keras_siglip.losses.blocks import Logits, sweep
from keras_siglip.losses.plan import LossPlan
from keras_siglip.losses.saved_gradients import loss_with_saved_gradients


def chunked_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, plan):
    """The sigmoid loss with a custom gradient, holding at most one block of logits.

    Args:
        image_embeddings, text_embeddings: (B, d), float32 or (on JAX) bfloat16/float16.
        log_temperature, bias: float32 scalars.
        plan: a `LossPlan`: `col_chunk` columns (texts) per block, `row_chunk`
            rows (images) per block or None for all rows, and `two_pass`:
            instead of accumulating dL/dimage in a (B, d) float32 buffer, make a
            second sweep with the roles of images and texts swapped (4 matmuls
            instead of 3), only worth it for 16-bit embeddings at a batch size
            where that float32 buffer is what limits memory.

    Example:
    >>> import numpy as np
    >>> z = np.eye(4, dtype="float32")
    >>> plan = LossPlan("chunked", col_chunk=3)
    >>> round(float(chunked_sigmoid_loss(z, z, np.float32(0.0), np.float32(0.0), plan)), 4)
    2.3927
    """

    def forward(image_embeddings, text_embeddings, log_temperature, bias):
        logits = Logits(log_temperature, bias, ops.shape(image_embeddings)[0])
        loss_sum, g_sum, t_sum, text_grad, image_grad = sweep(
            image_embeddings, text_embeddings, logits, plan, with_rows_grad=not plan.two_pass
        )
        if plan.two_pass:
            # The logits transposed are the same pairs; (i, i) stays positive.
            image_grad = sweep(text_embeddings, image_embeddings, logits, plan, with_rows_grad=False)[3]
        else:
            image_grad = ops.cast(image_grad, image_embeddings.dtype)
        grads = (image_grad, text_grad, t_sum, g_sum / logits.batch_size)
        return loss_sum / logits.batch_size, grads

    return loss_with_saved_gradients(forward)(image_embeddings, text_embeddings, log_temperature, bias)
