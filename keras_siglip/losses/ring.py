"""The sigmoid loss across devices: text embeddings travel round a ring (JAX only).

Under a `keras.distribution` distribution whose mesh has a batch axis of D
devices, device k holds images and texts `k*b ... (k+1)*b - 1` (b = B / D). It
computes its own b x b block (the positives on its diagonal), then D - 1 times
passes the text embeddings it holds to the next device (`jax.lax.ppermute`)
and adds the block of negatives they make with its images. The gradient for
those texts travels with them, accumulated on each device they visit, and one
last permute brings it home. Loss and gradients come out of that one round (the
same fused pass as `chunked.py`, inside `keras.ops.custom_gradient`); the
backward pass only scales them. Per device nothing bigger than a b x b block of
logits exists (b x c with `chunk_size=c`), against B x B for the dense loss.
"""

import keras
from keras import ops

from keras_siglip.losses import chunked


def ring_axis():
    """`(mesh, axis_name, devices)` of the active distribution's batch axis, or None.

    None unless the backend is JAX, a distribution is active, and its batch axis
    spans more than one device. `DataParallel` names the axis after its mesh's
    first axis ("batch" by default); `ModelParallel` takes `batch_dim_name` or
    its mesh's first axis; both expose it as `batch_dim_name`.
    """
    if keras.backend.backend() != "jax":
        return None
    distribution = keras.distribution.distribution()
    if distribution is None:
        return None
    axis = getattr(distribution, "batch_dim_name", None)
    device_mesh = getattr(distribution, "device_mesh", None)
    if axis is None or device_mesh is None or axis not in device_mesh.axis_names:
        return None
    devices = device_mesh.shape[list(device_mesh.axis_names).index(axis)]
    if devices < 2:
        return None
    return device_mesh.backend_mesh, axis, devices


def plan_ring(batch_size, dim, dtype, chunk_size=None):
    """A ring plan when a distribution with a batch axis is active and B splits evenly, else None."""
    found = ring_axis()
    if found is None or batch_size is None:
        return None
    _, _, devices = found
    if batch_size % devices:
        return None
    local = chunked.plan_chunks(batch_size // devices, dim, dtype, chunk_size)
    col_chunk = local.col_chunk or batch_size // devices
    return chunked.ChunkPlan("ring", col_chunk=col_chunk, row_chunk=local.row_chunk, devices=devices)


def ring_sigmoid_loss(image_embeddings, text_embeddings, log_temperature, bias, plan):
    """The global-batch sigmoid loss computed round a ring of devices (see the module docstring)."""
    import jax
    from jax.sharding import PartitionSpec

    mesh, axis, devices = ring_axis()
    batch_size = image_embeddings.shape[0]
    shift = [(k, (k + 1) % devices) for k in range(devices)]
    options = dict(col_chunk=plan.col_chunk, row_chunk=plan.row_chunk)

    def local(images, texts, log_temperature, bias):
        temperature = ops.exp(log_temperature)
        grad_scale = temperature / batch_size
        # Own block: positives on its diagonal.
        loss_sum, g_sum, _, text_grad, image_grad = chunked.sweep(
            images, texts, temperature, bias, grad_scale, positives=True, **options
        )

        def visit(_, carry):
            loss_sum, g_sum, texts_here, text_grad, image_grad = carry
            texts_here, text_grad = jax.lax.ppermute((texts_here, text_grad), axis, shift)
            block_loss, block_g, _, text_grad, image_grad = chunked.sweep(
                images, texts_here, temperature, bias, grad_scale, positives=False,
                rows_grad_init=image_grad, cols_grad_init=text_grad, **options,
            )
            return loss_sum + block_loss, g_sum + block_g, texts_here, text_grad, image_grad

        loss_sum, g_sum, _, text_grad, image_grad = jax.lax.fori_loop(
            1, devices, visit, (loss_sum, g_sum, texts, text_grad, image_grad)
        )
        text_grad = jax.lax.ppermute(text_grad, axis, shift)  # home
        t_sum = ops.sum(ops.cast(texts, "float32") * text_grad)
        loss_sum, g_sum, t_sum = jax.lax.psum((loss_sum, g_sum, t_sum), axis)
        return (
            loss_sum / batch_size,
            g_sum / batch_size,
            t_sum,
            ops.cast(image_grad, images.dtype),
            ops.cast(text_grad, texts.dtype),
        )

    sharded = PartitionSpec(axis)
    replicated = PartitionSpec()
    ring = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(sharded, sharded, replicated, replicated),
        out_specs=(replicated, replicated, replicated, sharded, sharded),
        # The per-block loops start from zeros that are the same on every device
        # and become device-dependent; the psums make the scalars replicated.
        check_vma=False,
    )

    @ops.custom_gradient
    def loss_and_grads(image_embeddings, text_embeddings, log_temperature, bias):
        loss, bias_grad, t_sum, image_grad, text_grad = ring(
            image_embeddings, text_embeddings, log_temperature, bias
        )

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.cast(upstream, "float32")
            return (
                chunked._scale(image_grad, upstream),
                chunked._scale(text_grad, upstream),
                upstream * t_sum,
                upstream * bias_grad,
            )

        return loss, grad

    return loss_and_grads(image_embeddings, text_embeddings, log_temperature, bias)
