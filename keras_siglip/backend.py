"""The one place where keras_siglip asks which Keras backend is active.

Everything else is written with `keras.ops`. What cannot be lives here, behind
small functions chosen once by `BACKEND`: making a TensorFlow step's updates
wait for its batch (`updates_wait_for`), the pieces of the blockwise and ring
losses that differ between backends, the map over micro-batches, the host's place in a multi-host job, the
export arguments that keep a batch dynamic, and the one `torch.compile` that `jit_compile=True` uses on PyTorch.
"""

import collections
import contextlib

import keras
from keras import ops

BACKEND = keras.backend.backend()


def updates_wait_for(data, xla=False):
    """A context in which every state update of a training step waits for `data`.

    TensorFlow fetches a batch inside the step function, and ops that do not
    read the batch (weight decay, the iteration counter) could otherwise run
    even when fetching it fails: a batch refused by its input check (or the
    end of a dataset of unknown length) would still step the optimizer. An
    XLA-compiled step takes the batch as an input of one compiled call, so it
    needs nothing; other backends fetch batches outside the step.
    """
    if BACKEND != "tensorflow" or xla:
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.control_dependencies([t for t in tf.nest.flatten(data) if isinstance(t, tf.Tensor)])


def with_static_batch_size(data, batch_size):
    """`data` with its leading dimension fixed to `batch_size` when the trace left it unknown.

    Keras's TensorFlow trainer traces a `PyDataset` or a generator with an
    unknown batch dimension; code that needs it at trace time (micro-batches)
    gets it from the first batch. A batch of another size fails TensorFlow's
    `EnsureShape` before any update that waits for the batch (`is_batch_size_error`).
    Other backends trace concrete shapes.
    """
    if BACKEND != "tensorflow":
        return data
    import tensorflow as tf

    def fix(x):
        if not isinstance(x, tf.Tensor) or x.shape.rank in (None, 0) or x.shape[0] is not None:
            return x
        return tf.ensure_shape(x, [batch_size] + x.shape[1:])

    return tf.nest.map_structure(fix, data)


def is_batch_size_error(error):
    """True for the error of a batch refused by `with_static_batch_size`."""
    return "EnsureShape" in str(error) and "is not compatible with expected shape" in str(error)


# Formats of `keras.Model.export` that cannot trace a dynamic batch on this
# backend: Keras replaces it by 1 for LiteRT on torch, and torch's ONNX exporter
# fails on the symbolic batch of LayerNorm's shape.
STATIC_BATCH_EXPORTS = {"torch": ("onnx", "litert")}.get(BACKEND, ())


def dynamic_batch_export_kwargs(format, input_signature):
    """The `keras.Model.export` arguments that keep the batch dimension of `input_signature` dynamic.

    Keras's `format="torch"` traces with a batch of 1 and specialises it
    unless `dynamic_shapes` names the batch axis; other formats keep a `None`
    dimension by themselves.
    """
    if BACKEND != "torch" or format != "torch":
        return {}
    import torch

    batch = torch.export.Dim("batch", min=1)
    return {"dynamic_shapes": keras.tree.map_structure(lambda spec: {0: batch}, input_signature[0])}


# ---------------------------------------------------------------------------
# Pieces of the blockwise sigmoid loss (keras_siglip.losses) that differ
# between backends: a matmul that accumulates and returns float32 whatever its
# inputs, padding a batch whose size is only known at run time, writing rows
# into a buffer in place where the backend allows it, and the collectives of
# the ring (JAX only).


def has_accelerator():
    """True when the active backend computes on a GPU or TPU by default."""
    if BACKEND == "jax":
        import jax

        return jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    if BACKEND == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def low_precision_matmuls():
    """True when `matmul_f32` multiplies bfloat16/float16 inputs directly.

    On JAX the matmuls of the blockwise loss take the embeddings in their own
    dtype and accumulate in float32 (`preferred_element_type`), so bfloat16
    embeddings are never copied to float32. TensorFlow and PyTorch have no
    portable way to ask for a float32 result from bfloat16 operands, so there
    the loss casts the embeddings to float32 first.
    """
    return BACKEND == "jax"


def matmul_f32(a, b, transpose_a=False, transpose_b=False):
    """`op(a) @ op(b)` accumulated and returned in float32."""
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        contract_a = 0 if transpose_a else 1
        contract_b = 1 if transpose_b else 0
        return jax.lax.dot_general(
            a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32
        )
    a = keras.ops.cast(a, "float32")
    b = keras.ops.cast(b, "float32")
    if transpose_a:
        a = keras.ops.transpose(a)
    if transpose_b:
        b = keras.ops.transpose(b)
    return keras.ops.matmul(a, b)


def pad_rows(x, multiple):
    """Pads `x` with zero rows up to a multiple of `multiple`.

    Returns `(padded, num_blocks)`; both are static when `x`'s first dimension
    is, and tensors (TensorFlow graphs with an unknown batch size) otherwise.
    """
    rows = x.shape[0]
    if rows is not None:
        pad = -rows % multiple
        padded = keras.ops.pad(x, [[0, pad], [0, 0]]) if pad else x
        return padded, (rows + pad) // multiple
    import tensorflow as tf  # only TensorFlow traces with unknown dimensions

    rows = tf.shape(x)[0]
    pad = tf.math.floormod(-rows, multiple)
    return tf.pad(x, [[0, pad], [0, 0]]), (rows + pad) // multiple


def write_rows(buffer, start, rows):
    """`buffer[start:start + len(rows)] = rows`, in place where possible; returns the buffer."""
    if BACKEND == "torch":
        buffer[start : start + rows.shape[0]] = rows  # runs under no_grad, inside the custom gradient
        return buffer
    return keras.ops.slice_update(buffer, [start, 0], rows)


def add_rows(buffer, start, rows):
    """`buffer[start:start + len(rows)] += rows`; returns the buffer."""
    if BACKEND == "torch":
        buffer[start : start + rows.shape[0]] += rows
        return buffer
    current = keras.ops.slice(buffer, [start, 0], keras.ops.shape(rows))
    return keras.ops.slice_update(buffer, [start, 0], current + rows)



# A mesh axis that splits the batch: `mesh` (the backend's), its `name`, its
# number of `devices`. A namedtuple: TensorFlow's autograph, which converts the
# losses traced in a tf.function, mis-converts the __init__ of a plain class.
BatchAxis = collections.namedtuple("BatchAxis", ["mesh", "name", "devices"])


def ring_batch_axis():
    """The active `keras.distribution`'s batch axis when the ring loss can run round it, else None.

    None unless the backend is JAX, a distribution is active, and its batch
    axis spans more than one device. `DataParallel` names the axis after its
    mesh's first axis ("batch" by default); `ModelParallel` takes
    `batch_dim_name` or its mesh's first axis; both expose it as
    `batch_dim_name`.
    """
    if BACKEND != "jax":
        return None
    distribution = keras.distribution.distribution()
    if distribution is None:
        return None
    name = getattr(distribution, "batch_dim_name", None)
    device_mesh = getattr(distribution, "device_mesh", None)
    if name is None or device_mesh is None or name not in device_mesh.axis_names:
        return None
    devices = device_mesh.shape[list(device_mesh.axis_names).index(name)]
    if devices < 2:
        return None
    return BatchAxis(device_mesh.backend_mesh, name, devices)


def why_no_ring_batch_axis():
    """Why `ring_batch_axis()` is None, as a sentence for an error message."""
    if BACKEND != "jax":
        return f"it runs only on the JAX backend, and this is {BACKEND}"
    distribution = keras.distribution.distribution()
    if distribution is None:
        return "no keras.distribution is active (use one's scope, e.g. `with keras.distribution.DataParallel().scope():`)"
    return f"the active {type(distribution).__name__} has no batch axis spanning more than one device"


def map_batch_shards(function, axis, sharded_inputs, sharded_outputs):
    """`function` run on every device of `axis` with its shard of the batch (`jax.shard_map`).

    Args:
        function: takes and returns tuples of tensors.
        axis: a `BatchAxis`.
        sharded_inputs, sharded_outputs: one bool per input / output: split
            along the batch axis (True) or the same on every device (False).
    """
    import jax
    from jax.sharding import PartitionSpec

    def specs(flags):
        return tuple(PartitionSpec(axis.name) if flag else PartitionSpec() for flag in flags)

    return jax.shard_map(
        function,
        mesh=axis.mesh,
        in_specs=specs(sharded_inputs),
        out_specs=specs(sharded_outputs),
        # The ring's loops start from zeros that are the same on every device and
        # become device-dependent; its final sums make the scalars replicated.
        check_vma=False,
    )


def pass_to_next_device(tensors, axis):
    """Inside `map_batch_shards`: device k's `tensors` go to device k + 1 (mod D); returns those received."""
    import jax

    shift = [(k, (k + 1) % axis.devices) for k in range(axis.devices)]
    return jax.lax.ppermute(tensors, axis.name, shift)


def sum_over_devices(tensors, axis):
    """Inside `map_batch_shards`: the sum of `tensors` over the devices of `axis`."""
    import jax

    return jax.lax.psum(tensors, axis.name)

def process_index_and_count():
    """`(index, count)` of this process in a multi-host job; `(0, 1)` on one host.

    The readers in `keras_siglip.data` use it to give each host its own shard.
    """
    if BACKEND == "jax":
        import jax

        return jax.process_index(), jax.process_count()
    if BACKEND == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    return 0, 1


_TORCH_COMPILED = {}


def map_micro_batches(function, micro_batches):
    """`function` applied to each slice `micro_batches[i]`, one after another, stacked.

    `keras.ops.map` (`lax.map` on JAX, a loop on PyTorch), except on
    TensorFlow, where `tf.recompute_grad` cannot differentiate Keras weights
    from inside `tf.map_fn`'s while loop: there the micro-batches are unrolled.
    """
    if BACKEND == "tensorflow":
        return ops.stack([function(micro_batches[i]) for i in range(micro_batches.shape[0])])
    return ops.map(function, micro_batches)


def torch_compiled(function):
    """One `torch.compile(function)` per process, so its cache serves every caller.

    `EncoderBlock.call` compiles the unbound `EncoderBlock.forward_impl` and
    passes the block: its weights are graph inputs, so one graph serves every
    block of the same kind and input shape. Shapes are static: a new input shape (say, a last smaller batch) compiles
    once more, up to torch's recompile limit, after which that call runs eagerly.
    """
    if function not in _TORCH_COMPILED:
        import torch

        _TORCH_COMPILED[function] = torch.compile(function, dynamic=False)
    return _TORCH_COMPILED[function]
