"""The sigmoid loss across devices: text embeddings travel round a ring (JAX only).

Under a `keras.distribution` distribution whose mesh has a batch axis of D
devices, device k holds images and texts `k*b ... (k+1)*b - 1` (b = B / D). It
sweeps its own b x b block (the positives on its diagonal), then D - 1 times
passes the text embeddings it holds to the next device and sweeps the block of
negatives they make with its images. The gradient for those texts travels with
them, accumulated on each device they visit, and one last pass brings it home.
Loss and gradients come out of that one round (the same `blocks.sweep` as the
chunked loss), saved by `loss_with_saved_gradients`; the backward pass only
scales them. Per device nothing bigger than a b x b block of logits exists
(b x c with `chunk_size=c`), against B x B for the dense loss. The collectives
are `backend.map_batch_shards`, `pass_to_next_device` and `sum_over_devices`.
"""

from keras import ops

from keras_siglip import backend
from keras_siglip.losses.blocks import Logits, sweep
from keras_siglip.losses.saved_gradients import loss_with_saved_gradients


def ring_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, plan):
    """The global-batch sigmoid loss computed round a ring of devices (see the module docstring).

    Args:
        image_embeddings, text_embeddings: (B, d), sharded along the batch axis.
        log_temperature, bias: float32 scalars.
        plan: the ring's `LossPlan` (`plan_sigmoid_loss(..., method="ring")`):
            the blocks each device sweeps.

    There is no runnable example here: it needs several devices (see
    tests/multi_device/test_ring_loss.py).
    """
    axis = backend.ring_batch_axis()
    batch_size = image_embeddings.shape[0]

    def on_each_device(images, texts, log_temperature, bias):
        logits = Logits(log_temperature, bias, batch_size)
        running = (ops.zeros(ops.shape(images), "float32"), ops.zeros(ops.shape(texts), "float32"))
        loss_sum, g_sum, _, text_grad, image_grad = sweep(images, texts, logits, plan, running_grads=running)

        def visit(_, carry):
            loss_sum, g_sum, texts_here, text_grad, image_grad = carry
            texts_here, text_grad = backend.pass_to_next_device((texts_here, text_grad), axis)
            block_loss, block_g, _, text_grad, image_grad = sweep(
                images, texts_here, logits, plan, positives=False, running_grads=(image_grad, text_grad)
            )
            return loss_sum + block_loss, g_sum + block_g, texts_here, text_grad, image_grad

        loss_sum, g_sum, _, text_grad, image_grad = ops.fori_loop(
            1, axis.devices, visit, (loss_sum, g_sum, texts, text_grad, image_grad)
        )
        text_grad = backend.pass_to_next_device(text_grad, axis)  # home
        t_sum = ops.sum(ops.cast(texts, "float32") * text_grad)
        loss_sum, g_sum, t_sum = backend.sum_over_devices((loss_sum, g_sum, t_sum), axis)
        return (
            loss_sum / batch_size,
            ops.cast(image_grad, images.dtype),
            ops.cast(text_grad, texts.dtype),
            t_sum,
            g_sum / batch_size,
        )

    ring = backend.map_batch_shards(
        on_each_device,
        axis,
        sharded_inputs=(True, True, False, False),
        sharded_outputs=(False, True, True, False, False),
    )

    def forward(image_embeddings, text_embeddings, log_temperature, bias):
        loss, *grads = ring(image_embeddings, text_embeddings, log_temperature, bias)
        return loss, tuple(grads)

    return loss_with_saved_gradients(forward)(image_embeddings, text_embeddings, log_temperature, bias)
