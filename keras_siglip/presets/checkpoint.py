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


class Transform:
    """An array transform with its inverse, so one table reads and writes a format.

    Importing applies `transform(array)` to a checkpoint array; exporting applies
    `transform.inverse(array)` to a model weight. `piece` marks a transform that
    takes one part of a source array shared by several rules (torch's stacked
    q/k/v `in_proj`): exporting concatenates the inverses along axis 0 in `piece`
    order.

    Args:
        forward: checkpoint array -> model weight.
        inverse: model weight -> checkpoint array (or its `piece`).
        name: how error messages and `repr` name it.
        piece: None, or the index of the part of a shared source array.

    Example:
    >>> import numpy as np
    >>> t = Transform(lambda a: a * 2, lambda a: a / 2, "double")
    >>> t.inverse(t(np.ones(2))).tolist()
    [1.0, 1.0]
    """

    def __init__(self, forward, inverse, name, piece=None):
        self.forward, self.inverse, self.__name__, self.piece = forward, inverse, name, piece

    def __call__(self, array):
        return self.forward(array)

    def __repr__(self):
        return self.__name__


identity = Transform(lambda a: a, lambda a: a, "identity")
# torch `Linear` weights are (out, in); Keras `Dense` kernels are (in, out).
transpose = Transform(lambda a: a.T, lambda a: a.T, "transpose")
# A leading batch axis that some formats give position embeddings and we do not (or the reverse).
add_axis = Transform(lambda a: a[None], lambda a: a[0], "add_axis")


def permute(*axes):
    """A transform `array.transpose(axes)`, inverted by the inverse permutation.

    Example:
    >>> import numpy as np
    >>> t = permute(2, 3, 1, 0)
    >>> t(np.zeros((8, 3, 4, 5))).shape, t.inverse(np.zeros((4, 5, 3, 8))).shape
    ((4, 5, 3, 8), (8, 3, 4, 5))
    """
    inverse_axes = tuple(int(i) for i in np.argsort(axes))
    return Transform(lambda a: a.transpose(axes), lambda a: a.transpose(inverse_axes), f"permute{axes}")


def to_shape(*shape, source=None):
    """A transform reshaping to `shape`; its inverse reshapes back to `source`.

    Used for the merged head axes of attention kernels: the checkpoint's
    `(width, heads, head_dim)` is our `(width, width)`. Importing accepts any
    source of the right size (the shape check after it names a misfit);
    exporting needs `source`.

    Example:
    >>> import numpy as np
    >>> t = to_shape(4, 6, source=(4, 2, 3))
    >>> t(np.zeros((4, 2, 3))).shape, t.inverse(np.zeros((4, 6))).shape
    ((4, 6), (4, 2, 3))
    """

    def inverse(array):
        if source is None:
            raise ValueError(f"to_shape{shape} was built without the source shape, so it cannot be inverted.")
        return array.reshape(source)

    return Transform(lambda a: a.reshape(shape), inverse, f"to_shape{shape}")


def scalar_of(source_shape):
    """A transform from a one-value array to our scalar weights; its inverse gives `source_shape` back."""

    def forward(array):
        if array.size != 1:
            raise ValueError(f"expected a single value, got shape {array.shape}")
        return array.reshape(())

    return Transform(forward, lambda a: np.reshape(a, source_shape), f"scalar_of{tuple(source_shape)}")


# `(1,)` temperature and bias arrays (big_vision, transformers) -> our scalar weights.
scalar = scalar_of((1,))


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


def check_keys(arrays, rules, source_name, ignored=()):
    """Refuses a checkpoint with keys the rules expect and it lacks, or keys no rule (nor `ignored`) reads.

    Needs no model, so a checkpoint of another depth than its config is refused before one is built.
    """
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
    check_keys(arrays, rules, source_name, ignored)
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


_TOWER_KEYS = ("width", "depth", "num_heads", "mlp_dim", "output_dim", "layer_norm_epsilon", "pooling")


def model_config(model):
    """The `{"image": ..., "text": ...}` config of a `SigLIP`, as the conversion tables take it.

    Refuses a model whose image tower is not keras_siglip's own `ImageEncoder`
    (a `KerasHubImageEncoder`): no checkpoint format has a place for it.

    Example:
    >>> from keras_siglip import SigLIP
    >>> model = SigLIP.from_variant("tiny", image_size=8, patch_size=4, vocabulary_size=10, sequence_length=4)
    >>> model_config(model)["text"]["sequence_length"]
    4
    """
    from keras_siglip.models.siglip.towers import ImageEncoder, TextEncoder

    image, text = model.image_encoder, model.text_encoder
    for tower, cls in ((image, ImageEncoder), (text, TextEncoder)):
        if not isinstance(tower, cls):
            raise ValueError(
                f"The model's {tower.name} is a {type(tower).__name__}, not keras_siglip's {cls.__name__}: "
                "checkpoint formats hold SigLIP's own towers only (save it with `model.save_to_preset`)."
            )
    height, width = image.image_size
    if height != width:
        raise ValueError(f"The image tower reads {height}x{width} images; checkpoint formats hold square ones.")
    image_config = {key: getattr(image, key) for key in _TOWER_KEYS}
    image_config.update(image_size=height, patch_size=image.patch_size,
                        position_embedding=image.position_embedding)
    text_config = {key: getattr(text, key) for key in _TOWER_KEYS}
    text_config.update(vocabulary_size=text.vocabulary_size, sequence_length=text.sequence_length)
    return {"image": image_config, "text": text_config}


def siglip_layout_problems(config, vision_name, text_name):
    """What in `config` a checkpoint with SigLIP's released layout (transformers, keras-hub) cannot hold.

    Args:
        config: `{"image": ..., "text": ...}` as `model_config` gives it.
        vision_name, text_name: how messages name the target's towers.

    Returns:
        A list of problems, empty when the towers fit.
    """
    image, text = config["image"], config["text"]
    problems = []
    if image["pooling"] != "map":
        problems.append(f"the image tower pools with {image['pooling']!r}; {vision_name} uses a MAP head")
    if image["output_dim"]:
        problems.append(f"the image tower has a {image['output_dim']}-wide head; {vision_name} has none")
    if image["position_embedding"] != "learned":
        problems.append(f"the image tower's position embedding is {image['position_embedding']!r}, not a "
                        "learned weight")
    if text["pooling"] != "last":
        problems.append(f"the text tower pools the {text['pooling']!r} token(s); {text_name} pools the last one")
    return problems


def export_arrays(model, rules, target_name, progress=None):
    """The inverse of `assign`: `{source_key: float32 numpy array}` from the model's weights.

    Every model weight must be covered by the table and every rule must name a
    model weight; a source key shared by several rules (a `piece` transform) is
    the concatenation of their inverses along axis 0.

    Args:
        model: a built `SigLIP`.
        rules: the same `Rule`s `assign` reads the format with.
        target_name: how error messages name the format.
        progress: optional callable `progress(done, total)`, called per weight.

    Example:
    >>> from keras_siglip import SigLIP
    >>> from keras_siglip.presets import big_vision_format
    >>> model = SigLIP.from_variant("tiny", image_size=8, patch_size=4, vocabulary_size=10, sequence_length=4)
    >>> config = model_config(model)
    >>> arrays = export_arrays(model, big_vision_format.rules(config), "big_vision")
    >>> arrays["t"].shape, arrays["img/embedding/kernel"].shape
    ((1,), (4, 4, 3, 32))
    """
    weights = model_weights(model)
    unknown_targets = sorted(rule.target for rule in rules if rule.target not in weights)
    if unknown_targets:
        raise ValueError(f"{target_name} needs weights the model lacks: {_listing(unknown_targets)}.")
    uncovered = set(weights) - {rule.target for rule in rules}
    if uncovered:
        raise ValueError(f"{target_name} has no place for the model weights {_listing(uncovered)}.")
    pieces = collections.defaultdict(list)
    for done, rule in enumerate(rules, 1):
        value = np.asarray(_to_numpy(weights[rule.target]), dtype=np.float32)
        pieces[rule.source].append((rule.transform.piece, rule.transform.inverse(value)))
        if progress is not None:
            progress(done, len(rules))
    arrays = {}
    for source, parts in pieces.items():
        if len(parts) == 1 and parts[0][0] is None:
            arrays[source] = parts[0][1]
            continue
        order = sorted(piece for piece, _ in parts)
        if None in order or order != list(range(len(parts))):  # a table bug, not the user's
            raise ValueError(f"{target_name}: the rules writing {source!r} do not split it into numbered pieces.")
        arrays[source] = np.concatenate([part for _, part in sorted(parts, key=_first)])
    # C order: safetensors writes an array's buffer as is, and transposes (and their
    # concatenations) are Fortran-ordered views. (`ascontiguousarray` would make scalars (1,).)
    return {key: np.asarray(array, order="C") for key, array in arrays.items()}


def _first(pair):
    return pair[0]


def _to_numpy(variable):
    import keras

    return keras.ops.convert_to_numpy(variable)


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

