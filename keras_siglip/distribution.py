"""`keras.distribution` set-ups for SigLIP: layout map, meshes, multi-host start-up.

Training on many accelerators goes through `keras.distribution`, which only
the JAX backend implements. Each set-up is one call, and the model is built
inside its scope (SigLIP creates its weights at construction):

```python
from keras_siglip import SigLIP, distribution

strategy = distribution.model_parallel((2, 4))  # 2-way data x 4-way model
with strategy.scope():
    model = SigLIP.from_variant("B")
    model.compile()
model.fit(dataset)  # each batch is split along the mesh's "batch" axis
```

- `data_parallel()`: every weight replicated, the batch split over all devices.
- `model_parallel(mesh)`: a 2-D (batch, model) mesh; the large weights of both
  towers are split along "model" (Megatron style: q/k/v and MLP-in kernels by
  output columns, attention-out and MLP-out kernels by input rows, the token
  table by vocabulary) and along "batch" on their other axis (FSDP style), so
  the encoder blocks' kernels and the token table are spread over the whole
  mesh; the patch embeddings and position grids are split along "model" only.
- `tpu_v4_mesh(chips)`: the mesh of a TPU v4 slice (4, 8, 16 or 32 chips).
- `initialize_multi_host()`: joins the processes of a multi-host job.

The distributions returned here are Keras's own, with two checks added: a batch
that the "batch" axis cannot split evenly, and a weight dimension that a mesh
axis cannot split evenly, each raise a `ValueError` naming the problem (JAX's
own error names neither the weight nor the remedy).
"""

import math

import keras
import numpy as np

from keras_siglip import backend

BATCH_DIM = "batch"
MODEL_DIM = "model"

# path pattern -> axes; "M" is the model axis, "B" the batch axis, None unsplit.
# Patterns match whole paths (`re.fullmatch`, as Keras's LayoutMap does); the
# optional prefix keeps them working for towers built inside another name scope.
_TOWER = r"(?:.*/)?(?:image|text)_encoder"
_ATTENTION = _TOWER + r"/(?:block_\d+|map_pooling)/attention"
_MLP = _TOWER + r"/(?:block_\d+|map_pooling)/mlp"
LAYOUT_RULES = (
    (_ATTENTION + r"/(?:query|key|value)/kernel", ("B", "M")),  # split by heads
    (_ATTENTION + r"/(?:query|key|value)/bias", ("M",)),
    (_ATTENTION + r"/output/kernel", ("M", "B")),
    (_MLP + r"/hidden/kernel", ("B", "M")),
    (_MLP + r"/hidden/bias", ("M",)),
    (_MLP + r"/output/kernel", ("M", "B")),
    (_TOWER + r"/patch_embedding/patch_projection/kernel", (None, None, None, "M")),  # FixRes: Conv2D
    (_TOWER + r"/patch_embedding/patch_dense/kernel", (None, "M")),  # NaFlex: Dense on flattened patches
    # (1, tokens, width) tables of FixRes and text towers, NaFlex's (grid, grid, width) grid: width on "model".
    (_TOWER + r"(?:/patch_embedding)?/position_embedding", (None, None, "M")),
    (_TOWER + r"/token_embedding/embeddings", ("M", "B")),  # the vocabulary axis on "model"
    (_TOWER + r"/head/kernel", ("B", "M")),
)

# TPU v4 slices by chip count: (accelerator type, hosts, physical topology).
TPU_V4_SLICES = {
    4: ("v4-8", 1, "2x2x1"),
    8: ("v4-16", 2, "2x2x2"),
    16: ("v4-32", 4, "2x2x4"),
    32: ("v4-64", 8, "2x4x4"),
}


def require_jax(what="keras.distribution"):
    """Raises `ValueError` unless the JAX backend, the one with `keras.distribution`, is active."""
    if backend.BACKEND != "jax":
        raise ValueError(
            f"{what} needs the JAX backend: Keras implements keras.distribution (data and model "
            f"parallel training) only on JAX, and the active backend is {backend.BACKEND!r}. "
            "Set KERAS_BACKEND=jax, or train on one device: build SigLIP without a distribution "
            "and call fit (examples/train_distributed.py --strategy=single)."
        )


def get_layout_map(device_mesh, model_dim=MODEL_DIM, batch_dim=BATCH_DIM):
    """A `keras.distribution.LayoutMap` that splits SigLIP's large weights over a mesh.

    See `LAYOUT_RULES` for what goes where; it covers the FixRes
    (`ImageEncoder`) and NaFlex (`NaFlexImageEncoder`) image towers alike.
    Weights no rule names (norms, biases other than those of q/k/v and MLP-in,
    the MAP probe, t' and b) are replicated.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with axes `model_dim` and
            `batch_dim`.
        model_dim: str. The mesh axis the weights are split along (tensor parallel).
        batch_dim: str. The mesh axis the data is split along; the weights'
            other axis is split along it too (fully sharded data parallel).

    Returns:
        A `keras.distribution.LayoutMap` for `keras.distribution.ModelParallel`.

    Example (JAX, 8 devices):
    ```python
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"),
                                         keras.distribution.list_devices())
    layout_map = get_layout_map(mesh)
    layout_map["image_encoder/block_3/attention/query/kernel"].axes  # ('batch', 'model')
    layout_map["image_encoder/patch_embedding/patch_dense/kernel"].axes  # (None, 'model'), NaFlex
    ```
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(
            f"device_mesh must be a keras.distribution.DeviceMesh; got {type(device_mesh).__name__}."
        )
    for name, dim in (("model_dim", model_dim), ("batch_dim", batch_dim)):
        if dim not in device_mesh.axis_names:
            raise ValueError(
                f"{name}={dim!r} is not an axis of the device mesh, whose axes are "
                f"{tuple(device_mesh.axis_names)}."
            )
    if model_dim == batch_dim:
        raise ValueError(f"model_dim and batch_dim must be different mesh axes; both are {model_dim!r}.")
    names = {"M": model_dim, "B": batch_dim, None: None}
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, axes in LAYOUT_RULES:
        layout_map[pattern] = tuple(names[axis] for axis in axes)
    return layout_map


class _EvenSplitChecks:
    """Turns JAX's uneven-sharding errors into `ValueError`s that name the cause."""

    def get_data_layout(self, data_shape):
        axis = self.batch_dim_name
        shards = self.device_mesh.shape[self.device_mesh.axis_names.index(axis)]
        # Each process feeds its own part of the global batch to its devices.
        local_shards = max(1, shards // self.num_processes)
        if data_shape and data_shape[0] is not None and data_shape[0] % local_shards:
            where = "this process's part of the batch" if self.num_processes > 1 else "the batch size"
            raise ValueError(
                f"Cannot split a batch of {data_shape[0]} examples ({where}) evenly over the "
                f"{local_shards} devices of the mesh's {axis!r} axis. Use a batch size divisible "
                f"by {shards} (and drop a smaller last batch, e.g. "
                "`dataset.batch(n, drop_remainder=True)`)."
            )
        return super().get_data_layout(data_shape)

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        check_even_split(variable.path, variable.shape, layout.axes, self.device_mesh)
        return layout


class DataParallel(_EvenSplitChecks, keras.distribution.DataParallel):
    """`keras.distribution.DataParallel` that names the problem of an uneven batch.

    Takes the arguments of `keras.distribution.DataParallel`; `data_parallel()`
    builds one over all devices.
    """


class ModelParallel(_EvenSplitChecks, keras.distribution.ModelParallel):
    """`keras.distribution.ModelParallel` that also names a weight a mesh cannot split evenly.

    Takes the arguments of `keras.distribution.ModelParallel`;
    `model_parallel(mesh)` builds one with SigLIP's layout map.
    """


def check_even_split(path, shape, axes, device_mesh):
    """Raises `ValueError` if a mesh axis does not divide the dimension it splits."""
    sizes = dict(zip(device_mesh.axis_names, device_mesh.shape))
    for dim, (length, axis) in enumerate(zip(shape, axes)):
        if axis is not None and length % sizes[axis]:
            raise ValueError(
                f"Cannot split weight {path!r} of shape {tuple(shape)}: its dimension {dim} "
                f"({length}) is not divisible by the {sizes[axis]} devices of mesh axis {axis!r}. "
                f"Choose a mesh whose {axis!r} axis divides {length}."
            )


def _devices(count=None):
    devices = keras.distribution.list_devices()
    if count is not None:
        if count > len(devices):
            raise ValueError(
                f"The mesh needs {count} devices but only {len(devices)} are available "
                f"({devices[0].split(':')[0] if devices else 'none'})."
            )
        devices = devices[:count]
    return devices


def _device_grid(shape):
    """The first `prod(shape)` devices, laid out so mesh neighbours are interconnect neighbours."""
    import jax
    from jax.experimental import mesh_utils

    count = len(_devices(math.prod(shape)))
    devices = jax.devices()[:count]
    try:  # knows the physical TPU/GPU topology
        return mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):  # e.g. part of a TPU slice
        return np.array(devices).reshape(shape)


def device_mesh(shape, axis_names=(BATCH_DIM, MODEL_DIM), devices=None):
    """A `keras.distribution.DeviceMesh` of the given shape over the first devices.

    Args:
        shape: tuple of ints, one per axis, e.g. `(2, 4)`.
        axis_names: the axes' names; `("batch", "model")` by default.
        devices: optional list of devices (`keras.distribution.list_devices()`
            entries); the first `prod(shape)` available devices by default.

    Example (JAX, 8 devices):
    ```python
    device_mesh((2, 4)).shape  # (2, 4)
    ```
    """
    require_jax("A device mesh")
    shape = tuple(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"Mesh shape {shape} has {len(shape)} axes but axis_names is {tuple(axis_names)}.")
    if not all(isinstance(size, (int, np.integer)) and size >= 1 for size in shape):
        raise ValueError(f"Mesh shape must be positive integers; got {shape}.")
    count = math.prod(shape)
    if devices is None:
        grid = _device_grid(shape)
    elif len(devices) != count:
        raise ValueError(f"A mesh of shape {shape} needs {count} devices; {len(devices)} were given.")
    else:
        grid = np.array(devices, dtype=object).reshape(shape)
    return keras.distribution.DeviceMesh(shape, list(axis_names), grid)


def data_parallel(devices=None):
    """Every weight replicated, each batch split over all (or the given) devices.

    Args:
        devices: optional list of devices; all devices by default.

    Example (JAX):
    ```python
    with data_parallel().scope():
        model = SigLIP.from_variant("B")
    ```
    """
    require_jax("Data parallel training")
    return DataParallel(devices=list(devices) if devices is not None else _devices())


def model_parallel(mesh, model_dim=MODEL_DIM, batch_dim=BATCH_DIM):
    """Weights split by `get_layout_map`, batches split along `batch_dim`.

    Args:
        mesh: a `keras.distribution.DeviceMesh` or a `(batch, model)` shape such
            as `(2, 4)`, laid over the first devices.
        model_dim: str. Mesh axis the weights are split along.
        batch_dim: str. Mesh axis the batch is split along.

    Example (JAX, 8 devices):
    ```python
    with model_parallel((2, 4)).scope():
        model = SigLIP.from_variant("So400m", patch_size=14)
    ```
    """
    require_jax("Model parallel training")
    if not isinstance(mesh, keras.distribution.DeviceMesh):
        mesh = device_mesh(mesh, axis_names=(batch_dim, model_dim))
    return ModelParallel(layout_map=get_layout_map(mesh, model_dim, batch_dim), batch_dim_name=batch_dim)


def tpu_v4_mesh(chips, model_size=1, devices=None):
    """The (batch, model) mesh of a TPU v4 slice: `chips // model_size` x `model_size`.

    A v4 host drives 4 chips. Without `devices`, JAX's `create_device_mesh`
    orders the chips so that neighbours on the "model" axis are neighbours on
    the chip interconnect.

    Args:
        chips: 4, 8, 16 or 32 (slices v4-8, v4-16, v4-32, v4-64).
        model_size: int dividing `chips`: how many chips share each weight
            (1: pure data parallel with sharded weights).
        devices: optional devices; all available devices by default, which must
            number `chips`.

    Example (on every host of a v4-32 slice):
    ```python
    initialize_multi_host()
    strategy = model_parallel(tpu_v4_mesh(16, model_size=4))  # a 4 x 4 mesh
    ```
    """
    if chips not in TPU_V4_SLICES:
        raise ValueError(
            f"TPU v4 slices have {sorted(TPU_V4_SLICES)} chips here "
            f"({', '.join(name for name, _, _ in TPU_V4_SLICES.values())}); got {chips}."
        )
    if not isinstance(model_size, (int, np.integer)) or model_size < 1 or chips % model_size:
        raise ValueError(f"model_size must be a positive divisor of {chips} chips; got {model_size}.")
    require_jax("A TPU v4 mesh")
    visible = len(_devices())
    if devices is None and visible != chips:
        raise ValueError(
            f"A {TPU_V4_SLICES[chips][0]} slice has {chips} chips but {visible} devices are "
            "visible. Run on the whole slice (every host, joined by initialize_multi_host()) "
            "or pass devices."
        )
    return device_mesh((chips // model_size, model_size), devices=devices)


def initialize_multi_host(coordinator_address=None, num_processes=None, process_id=None):
    """Joins the processes of a multi-host job (`keras.distribution.initialize`).

    Call it first in every process, before any other JAX work. On a Cloud TPU
    slice all arguments can be left out: JAX reads them from the TPU
    environment. Elsewhere pass them, or set `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
    `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`.

    Args:
        coordinator_address: "host:port" of process 0.
        num_processes: int. Number of processes in the job.
        process_id: int in `[0, num_processes)`.

    Returns:
        `(process_id, num_processes)` after joining.

    Example (process 0 of 2; process 1 passes process_id=1):
    ```python
    initialize_multi_host("10.0.0.1:1234", num_processes=2, process_id=0)  # (0, 2)
    ```
    """
    require_jax("Multi-host training")
    if (num_processes is None) != (process_id is None):
        raise ValueError("Pass both num_processes and process_id, or neither.")
    if num_processes is not None:
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must lie in [0, num_processes); got process_id={process_id}, "
                f"num_processes={num_processes}."
            )
    keras.distribution.initialize(coordinator_address, num_processes, process_id)
    import jax

    return jax.process_index(), jax.process_count()
