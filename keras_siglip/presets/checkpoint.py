"""Moving a checkpoint's arrays into a `SigLIP`: one table, checked on every side.

A converter is a list of `Rule(source_key, weight_path, transform)`. `assign`
applies it and refuses, with a `ValueError` naming the keys, a checkpoint with
keys missing, keys left over, or an array whose shape does not fit. Whether a
converted model reproduces its source is checked outside the package, by
`tools/convert_*.py` and the tests.
"""

import collections
import zipfile

import numpy as np

Rule = collections.namedtuple("Rule", ["source", "target", "transform"])


def identity(array):
    return array


def transpose(array):
    """torch `Linear` weights are (out, in); Keras `Dense` kernels are (in, out)."""
    return array.T


def to_shape(*shape):
    """A transform reshaping to `shape`, for the merged head axes of attention kernels.

    Example:
    >>> import numpy as np
    >>> to_shape(4, 2, 3)(np.zeros((4, 6))).shape
    (4, 2, 3)
    """

    def reshape(array):
        return array.reshape(shape)

    reshape.__name__ = f"to_shape{shape}"
    return reshape


def scalar(array):
    """`(1,)` temperature and bias arrays -> our scalar weights."""
    if array.size != 1:
        raise ValueError(f"expected a single value, got shape {array.shape}")
    return array.reshape(())


def as_float32(array):
    """float32 copy of an array; bf16 stored by `np.savez` as 2-byte void becomes float32.

    Example:
    >>> import numpy as np
    >>> bf16 = (np.array([1.5, -2.0], "float32").view("uint32") >> 16).astype("uint16").view("V2")
    >>> as_float32(bf16).tolist()
    [1.5, -2.0]
    """
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:
        return (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if array.dtype.kind == "V":
        raise ValueError(f"cannot read an array stored as opaque {array.dtype} ({array.dtype.itemsize} bytes)")
    return np.asarray(array, dtype=np.float32) if array.dtype != np.float32 else array


def model_weights(model):
    """`{path: variable}` with the model's own weights under `siglip/` whatever its name."""
    weights = {}
    for variable in model.weights:
        path = variable.path
        if path.startswith(model.name + "/"):
            path = "siglip/" + path[len(model.name) + 1 :]
        weights[path] = variable
    return weights


def _listing(keys, limit=12):
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def assign(model, arrays, rules, source_name, ignored=()):
    """Writes `arrays[rule.source]` (transformed) into the model's weight `rule.target`.

    Args:
        model: a built `SigLIP`.
        arrays: `{source_key: numpy array}`, the whole checkpoint.
        rules: `Rule`s covering every model weight.
        source_name: how error messages name the checkpoint.
        ignored: source keys that are known and deliberately unused.
    """
    weights = model_weights(model)
    missing = sorted({rule.source for rule in rules if rule.source not in arrays})
    if missing:
        raise ValueError(f"{source_name} lacks {len(missing)} expected key(s): {_listing(missing)}.")
    used = {rule.source for rule in rules} | set(ignored)
    unexpected = [key for key in arrays if key not in used]
    if unexpected:
        raise ValueError(
            f"{source_name} has {len(unexpected)} unexpected key(s) that the model has no place for: "
            f"{_listing(unexpected)}."
        )
    unknown_targets = [rule.target for rule in rules if rule.target not in weights]
    if unknown_targets:  # the table and the model disagree: a bug here, not in the checkpoint
        raise ValueError(f"Conversion table names weights the model lacks: {_listing(unknown_targets)}.")
    uncovered = set(weights) - {rule.target for rule in rules}
    if uncovered:
        raise ValueError(f"{source_name} leaves model weights unset: {_listing(uncovered)}.")
    for rule in rules:
        variable = weights[rule.target]
        source = arrays[rule.source]
        try:
            value = rule.transform(as_float32(source))
        except ValueError as error:
            raise ValueError(
                f"{source_name}: key {rule.source!r} of shape {tuple(source.shape)} does not fit model "
                f"weight {rule.target!r} of shape {tuple(variable.shape)} ({error})."
            ) from None
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{source_name}: key {rule.source!r} has shape {tuple(source.shape)}, which gives "
                f"{tuple(value.shape)}; model weight {rule.target!r} has shape {tuple(variable.shape)}."
            )
        variable.assign(value.astype(variable.dtype))


def load_npz(path):
    """All arrays of an `.npz`, never unpickling; a clear `ValueError` if the file is damaged."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(f"{path} holds pickled Python objects; checkpoints are never unpickled.") from None
        raise ValueError(f"Cannot read {path} as an .npz checkpoint (truncated or corrupt?): {error}") from None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"Cannot read {path} as an .npz checkpoint (truncated or corrupt?): {error}") from None


def load_safetensors(paths):
    """All tensors of one or more `.safetensors` files as numpy arrays (no torch needed)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    arrays = {}
    for path in paths:
        try:
            arrays.update(load_file(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"Cannot read {path} as a safetensors checkpoint (truncated or corrupt?): {error}"
            ) from None
    return arrays

