"""`from_preset` and `save_preset`: one entry point for every checkpoint source.

Handles go through keras-hub's preset utilities (`get_file` downloads `hf://`,
`kaggle://` and `gs://` files, or finds them in a local folder), and this
library's own format is keras-hub's layout: `config.json`, `metadata.json`,
`model.weights.h5`, plus `tokenizer.json`, `image_converter.json` and `assets/`
when preprocessing is saved along.

| handle | read as |
|---|---|
| built-in name (`list_presets()`) | its upstream sources, in order |
| folder / handle whose config.json has `registered_name: keras_siglip>SigLIP` | this library's format |
| ... with `registered_name: keras_hub>SigLIPBackbone` | keras-hub preset, converted |
| ... with `model_type: siglip` | transformers checkpoint, converted |
| path to a `.npz` file | big_vision checkpoint, converted |
"""

import collections
import json
import os
import re
import socket
import urllib.parse
import urllib.request

import keras
import numpy as np

from keras_siglip.extras import require
from keras_siglip.presets import (
    big_vision_format, big_vision_naflex_format, hf_format, hf_siglip2_format, keras_hub_format, registry,
    text_tokenizers,
)
from keras_siglip.presets.checkpoint import assign, check_keys, load_npz, load_safetensors, model_weights

OUR_CLASS = "keras_siglip>SigLIP"


class _PresetUtils:
    """keras-hub's preset file utilities, imported on first use (keras-hub takes seconds to import).

    The one private keras-hub import left: `get_file` (local folders, `hf://`,
    `kaggle://`, `gs://` and `modelscope://`, with keras-hub's error handling),
    `check_file_exists`, `load_json`, the preset saver and the file-name
    constants have no public export (keras-hub 0.32 exports only
    `upload_preset` from that module). Tokenizers and image converters are read
    and written through their public `from_preset` / `save_to_preset`.
    """

    def __getattr__(self, name):
        require("keras_hub", purpose="Reading and writing preset files")
        from keras_hub.src.utils import preset_utils

        return getattr(preset_utils, name)


preset_utils = _PresetUtils()
LoadedPreset = collections.namedtuple("LoadedPreset", ["model", "tokenizer", "image_converter"])


def _is_name(handle):
    return "://" not in handle and not os.path.exists(handle) and os.sep not in handle and not handle.endswith(".npz")


def from_preset(handle, load_weights=True, dtype=None):
    """A `SigLIP` from a built-in name, a preset folder, an `hf://` / `kaggle://` handle or a `.npz`.

    Args:
        handle: str. See the module docstring for what is accepted.
        load_weights: bool. False builds the architecture with random weights
            (for a built-in name, without downloading anything).
        dtype: optional dtype policy for the model's weights and computations.
    """
    if not isinstance(handle, (str, os.PathLike)):
        raise ValueError(f"A preset handle must be a string or path; got {type(handle).__name__}.")
    handle = os.fspath(handle)
    return _reporting_network_errors(handle, lambda: _from_preset(handle, load_weights, dtype))


def _from_preset(handle, load_weights, dtype):
    if handle in registry.PRESETS:
        return _from_builtin(handle, load_weights, dtype)
    if _is_name(handle):
        if handle in _keras_hub_siglip_presets():
            return from_keras_hub(handle, dtype=dtype, load_weights=load_weights)
        registry.get_preset(handle)  # raises, listing the known names
    if handle.endswith(".npz"):
        return from_big_vision(handle, dtype=dtype, load_weights=load_weights)
    config = _load_config(handle)
    if config.get("registered_name") == OUR_CLASS:
        return _from_native(handle, config, load_weights, dtype)
    if str(config.get("registered_name", "")).endswith("SigLIPBackbone"):
        return from_keras_hub(handle, dtype=dtype, load_weights=load_weights)
    if config.get("model_type") in ("siglip", "siglip2"):
        return from_transformers(handle, config, dtype=dtype, load_weights=load_weights)
    found = config.get("registered_name") or config.get("model_type") or sorted(config)[:8]
    raise ValueError(
        f"{handle}/config.json describes {found!r}, which is not a SigLIP: expected a keras_siglip preset "
        "(registered_name 'keras_siglip>SigLIP'), a keras-hub SigLIPBackbone or a transformers "
        "'siglip' or 'siglip2' model."
    )


def load_preset(handle, load_weights=True, dtype=None):
    """The model with its tokenizer and image preprocessor, as a `LoadedPreset(model, tokenizer, image_converter)`.

    This library's presets give back what `save_to_preset` stored; transformers
    and keras-hub checkpoints give a `SigLIPTokenizer` on their SentencePiece
    file (big_vision's text rules; a `SigLIP2Tokenizer` for SigLIP 2's Gemma
    vocabulary, see `text_tokenizers`) and a `SigLIPImagePreprocessor` at the
    model's resolution. A big_vision `.npz` holds no vocabulary: its tokenizer
    is None (its image preprocessor is still made).
    """
    handle = os.fspath(handle)
    if handle in registry.PRESETS:
        entry = registry.PRESETS[handle]
        if "image_tower_from" in entry or not entry["sources"] or not load_weights:
            return LoadedPreset(_from_builtin(handle, load_weights, dtype), None, None)
        loaded = _first_source(handle, entry, lambda source: load_preset(source, dtype=dtype))
        if loaded.tokenizer is None and entry.get("vocabulary"):  # a .npz source: the preset names its vocabulary
            loaded = loaded._replace(tokenizer=_registry_tokenizer(entry["vocabulary"], loaded.model))
        return loaded._replace(model=_fit_registry(handle, entry["config"], loaded.model))
    model = from_preset(handle, load_weights=load_weights, dtype=dtype)
    return LoadedPreset(model, *_reporting_network_errors(handle, lambda: _preprocessing(handle, model)))


def _preprocessing(handle, model):
    from keras_siglip.models.siglip import SigLIPImagePreprocessor, SigLIPTokenizer

    if hasattr(model.image_encoder, "input_keys"):  # NaFlex: patches, not a fixed size
        image_converter = _naflex_preprocessor(handle, model)
    else:
        image_converter = SigLIPImagePreprocessor(image_size=model.image_encoder.image_size)
    if handle.endswith(".npz"):
        return None, image_converter
    config = _load_config(handle)
    if config.get("registered_name") == OUR_CLASS:
        tokenizer = image_converter = None
        if preset_utils.check_file_exists(handle, preset_utils.TOKENIZER_CONFIG_FILE):
            tokenizer = SigLIPTokenizer.from_preset(handle)
        if hasattr(model.image_encoder, "input_keys"):  # NaFlex: its preprocessor_config.json, if saved
            image_converter = _naflex_preprocessor(handle, model)
        elif preset_utils.check_file_exists(handle, preset_utils.IMAGE_CONVERTER_CONFIG_FILE):
            image_converter = SigLIPImagePreprocessor.from_preset(handle)
        return tokenizer, image_converter
    # SigLIPTokenizer for a T5-style vocabulary, SigLIP2Tokenizer for Gemma's (SigLIP 2).
    tokenizer = text_tokenizers.tokenizer_for_folder(
        lambda name: preset_utils.check_file_exists(handle, name), lambda name: preset_utils.get_file(handle, name),
        model.text_encoder.sequence_length)
    return tokenizer, image_converter


def _registry_tokenizer(vocabulary, model):
    """The tokenizer on a preset's own SentencePiece file (local, or downloaded and cached by keras-hub)."""
    if not os.path.isfile(vocabulary):
        vocabulary = preset_utils.get_file(os.path.dirname(vocabulary), os.path.basename(vocabulary))
    return text_tokenizers.tokenizer_class(vocabulary)(proto=vocabulary,
                                                       sequence_length=model.text_encoder.sequence_length)


def _naflex_preprocessor(handle, model):
    """A `NaFlexImagePreprocessor` for the model, with transformers' `max_num_patches` when the folder says it."""
    from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor

    max_num_patches = 256
    if not handle.endswith(".npz") and preset_utils.check_file_exists(handle, "preprocessor_config.json"):
        with open(preset_utils.get_file(handle, "preprocessor_config.json")) as file:
            max_num_patches = int(json.load(file).get("max_num_patches", max_num_patches))
    return NaFlexImagePreprocessor(patch_size=model.image_encoder.patch_size, max_num_patches=max_num_patches)


def save_preset(folder, model, tokenizer=None, image_converter=None):
    """Writes `model` (and optional preprocessing) to `folder` in keras-hub's preset layout.

    The preset is written into a temporary folder beside `folder` and takes
    its place whole once complete (`keras_siglip.atomic.replaced_folder`): a
    kill mid-write leaves the previous preset as it was, and nothing of it
    (say, a tokenizer not saved this time) stays next to the new one.
    """
    from keras_siglip import atomic

    with atomic.replaced_folder(os.fspath(folder)) as partial:
        preset_utils.get_preset_saver(partial).save_backbone(model)
        if tokenizer is not None:
            tokenizer.save_to_preset(partial)
        if image_converter is not None:
            image_converter.save_to_preset(partial)


def _keras_hub_siglip_presets():
    """keras-hub's own built-in SigLIP / SigLIP 2 names, read through as a fallback."""
    keras_hub = require("keras_hub", purpose="keras-hub's SigLIP presets")

    return keras_hub.models.SigLIPBackbone.presets


# -- the sources ---------------------------------------------------------------


def _load_config(handle):
    _check_reachable(handle)
    try:
        return preset_utils.load_json(handle, preset_utils.CONFIG_FILE)
    except FileNotFoundError as error:
        if _network_failure(error) is not None:
            raise  # keras-hub turns "cannot reach the Hub" into FileNotFoundError: not a missing file
        raise ValueError(f"{handle} has no config.json: it is not a preset folder or checkpoint.") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{handle}/config.json is not valid JSON (truncated or corrupt?): {error}") from None


def _from_builtin(name, load_weights, dtype):
    entry = registry.PRESETS[name]
    if "image_tower_from" in entry:
        return siglit(entry["image_tower_from"] if load_weights else None, entry["config"], dtype=dtype,
                      lock_image_tower=entry["lock_image_tower"])
    if not load_weights or not entry["sources"]:
        return registry.build_model(entry["config"], dtype=dtype)
    return _fit_registry(name, entry["config"], _first_source(name, entry, lambda s: from_preset(s, dtype=dtype)))


def _first_source(name, entry, load):
    """`load(source)` for the first of the preset's sources that works."""
    errors = []
    for source in entry["sources"]:
        try:
            return load(source)
        except Exception as error:  # noqa: BLE001
            # Every download client fails its own way offline (requests, kagglehub, TensorFlow's
            # FailedPreconditionError for gs://): each is reported, then the next source is tried.
            errors.append(_source_line(source, error))
    raise ValueError(f"Could not load preset {name!r} from any of its sources:\n" + "\n".join(errors))


def _first_line(error):
    text = str(error).strip()
    return (text.splitlines() or [""])[0][:300]


def _source_line(source, error):
    """One line of the summary: the source and why it failed, the network error itself if there is one."""
    network = _network_failure(error)
    if network is None:
        return f"  {source}: {type(error).__name__}: {_first_line(error)}"
    return f"  {source}: {type(network).__name__}: {_first_line(network)} (a network error: no network?)"


def _reporting_network_errors(handle, load):
    """`load()`, with a network failure for a remote handle reported as such, in the summary's format."""
    try:
        return load()
    except Exception as error:
        if "://" not in handle or _network_failure(error) is None:
            raise
        raise ValueError(f"Could not load preset {handle!r} from any of its sources:\n"
                         + _source_line(handle, error)) from error


# Exceptions of the download clients (requests, httpx, urllib3, huggingface_hub) that mean "could not
# reach the server", by class name so that none of those packages needs importing here.
_NETWORK_ERRORS = {"ConnectionError", "ConnectTimeout", "ConnectError", "TimeoutException", "Timeout",
                   "NewConnectionError", "NameResolutionError", "MaxRetryError", "OfflineModeIsEnabled",
                   "LocalEntryNotFoundError", "gaierror", "TimeoutError"}
# TensorFlow's gs:// client reports curl's failures as FailedPrecondition / Unavailable errors.
_NETWORK_MESSAGE = re.compile(r"resolve host|resolve hostname|couldn't connect|network is unreachable", re.I)


def _network_failure(error):
    """The innermost network error in `error`'s chain of causes (None if there is none).

    Innermost, because the outer ones hide what happened (huggingface_hub's
    LocalEntryNotFoundError becomes keras-hub's "doesn't exist" FileNotFoundError).
    """
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        names = {cls.__name__ for cls in type(error).__mro__}
        if names & _NETWORK_ERRORS or (names & {"FailedPreconditionError", "UnavailableError"}
                                       and _NETWORK_MESSAGE.search(str(error))):
            found = error
        # The chain Python prints: the cause, else the context unless `raise ... from None` hid it.
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__
    return found


def _check_reachable(handle, timeout=5.0):
    """Refuses an `hf://` handle at once when the Hub cannot be reached and nothing is cached.

    huggingface_hub retries a failed connection for about half a minute before
    it reports the file "not found"; one connection attempt says the same in a
    moment. Skipped where a proxy is set (a direct connection proves nothing
    there), with HF_HUB_OFFLINE (only the cache is read) and when config.json is
    in the cache (huggingface_hub falls back to it).
    """
    if not handle.startswith("hf://"):
        return
    import huggingface_hub
    from huggingface_hub import constants

    host = urllib.parse.urlparse(constants.ENDPOINT)
    name, port = host.hostname, host.port or (443 if host.scheme == "https" else 80)
    if constants.HF_HUB_OFFLINE or urllib.request.getproxies().get(host.scheme):
        return
    repo = handle.removeprefix("hf://")
    if isinstance(huggingface_hub.try_to_load_from_cache(repo, preset_utils.CONFIG_FILE), str):
        return
    try:
        socket.create_connection((name, port), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"cannot connect to {name}:{port} ({error})") from None

def _fit_registry(name, config, model):
    """Checks a downloaded model against the registry; drops an identity text head it lacks."""
    head = model.text_encoder.head
    if config["text"].get("output_dim") is None and head is not None:
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in (head.kernel, head.bias))
        if kernel.shape[0] == kernel.shape[1] and np.array_equal(kernel, np.eye(len(kernel))) and not bias.any():
            headless = registry.build_model(config, dtype=model.dtype_policy)
            weights = model_weights(model)
            for path, target in model_weights(headless).items():
                target.assign(weights[path])
            model = headless
    expected = registry.count_parameters(config)
    if model.count_params() != expected:
        raise ValueError(
            f"The weights downloaded for {name!r} give {model.count_params()} parameters; the registry "
            f"expects {expected}."
        )
    return model


def _from_native(handle, config, load_weights, dtype):
    config = json.loads(json.dumps(config))  # a private copy to edit
    if dtype is not None:
        policy = keras.saving.serialize_keras_object(keras.dtype_policies.get(dtype))
        config["config"]["dtype"] = policy
        for tower in ("image_encoder", "text_encoder"):
            config["config"][tower]["config"]["dtype"] = policy
    path = preset_utils.get_file(handle, preset_utils.MODEL_WEIGHTS_FILE) if load_weights else None
    if path is not None:
        _check_native_config(handle, config, path)  # before building: a wrong config may be huge
    try:
        model = keras.saving.deserialize_keras_object(config)
    except (TypeError, KeyError) as error:
        raise ValueError(f"{handle}/config.json does not describe a valid SigLIP: {error}") from None
    if path is not None:
        _load_native_weights(model, handle, path)
    return model


def _h5_shapes(path):
    """`{key: shape}` of every array in a Keras `.weights.h5`, read from its headers only."""
    import h5py

    shapes = {}
    try:
        with h5py.File(path, "r") as file:
            file.visititems(lambda key, item: shapes.__setitem__(key, item.shape)
                            if isinstance(item, h5py.Dataset) else None)
    except (OSError, KeyError) as error:
        raise ValueError(f"Cannot read {path} (truncated or corrupt?): {type(error).__name__}: {error}") from None
    return shapes


def safetensors_shapes(paths):
    """`{key: shape}` of every tensor in `.safetensors` files, read from their JSON headers only.

    A safetensors file starts with the 8-byte little-endian length of a JSON
    header that lists each tensor's dtype, shape and byte range; nothing else
    is read, so a checkpoint of many gigabytes is checked in milliseconds.
    """
    shapes = {}
    for path in paths:
        try:
            with open(path, "rb") as file:
                length = int.from_bytes(file.read(8), "little")
                if not 2 <= length <= os.fstat(file.fileno()).st_size - 8:
                    raise ValueError(f"a header length of {length} bytes")
                header = json.loads(file.read(length))
            shapes.update({key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"})
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ValueError(
                f"Cannot read {path} as a safetensors checkpoint (truncated or corrupt?): {error}"
            ) from None
    return shapes


# What each tower's config says, and the weight (key suffix, axis) that says the same: the shapes that
# make a model of another size. The head count leaves no trace in the shapes; for this format the config
# is authoritative on it, so it is only checked to divide the width.
_TOWER_SHAPES = {
    "width": ("encoder_norm/vars/0", 0),
    "mlp_dim": ("/mlp/hidden/vars/0", 1),
    "patch_size": ("patch_embedding/patch_projection/vars/0", 0),
    "vocabulary_size": ("token_embedding/vars/0", 0),
}


def _check_native_config(handle, config, path):
    """Refuses a config.json whose towers disagree with the shapes and keys of model.weights.h5."""
    shapes = _h5_shapes(path)
    problems = []
    for tower in ("image_encoder", "text_encoder"):
        spec = config["config"].get(tower, {})
        if spec.get("registered_name") not in (f"keras_siglip>{n}" for n in ("ImageEncoder", "TextEncoder")):
            continue  # another library's tower (a keras-hub backbone): Keras checks its weights on loading
        claimed, keys = spec.get("config", {}), [key for key in shapes if f"{tower}/" in key]
        blocks = {match.group(0) for key in keys if (match := re.search(r"blocks/encoder_block(_\d+)?/", key))}
        if "depth" in claimed and len(blocks) != claimed["depth"]:
            problems.append(f"{tower} depth {claimed['depth']} in the config, {len(blocks)} blocks in the weights")
        for name, (suffix, axis) in _TOWER_SHAPES.items():
            found = sorted({shapes[key][axis] for key in keys if key.endswith(suffix)})
            if name in claimed and found and found != [claimed[name]]:
                problems.append(f"{tower} {name} {claimed[name]} in the config, {'/'.join(map(str, found))} "
                                "in the weights")
        heads, width = claimed.get("num_heads"), claimed.get("width")
        if isinstance(heads, int) and isinstance(width, int) and (heads < 1 or width % heads):
            problems.append(f"{tower} num_heads {heads} does not divide its width {width}")
    if problems:
        raise ValueError(f"{handle}/config.json disagrees with {path}: " + "; ".join(problems)
                         + ". Refused before building the model.")


def _load_native_weights(model, handle, path):
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(f"{path} does not fit the model in {handle}/config.json: {error}") from None
    except (OSError, KeyError, TypeError) as error:
        raise ValueError(f"Cannot read {path} (truncated or corrupt?): {type(error).__name__}: {error}") from None


def _converted(config, arrays, rules, source_name, ignored, dtype, load_weights, shapes=None):
    """The model of `config` with `arrays` assigned, checked against their keys and shapes before building.

    `arrays` may be a callable that loads them: then `shapes` (`{key: shape}`,
    read from the files' headers) is checked first and nothing is loaded for a
    checkpoint that disagrees with its config.
    """
    if load_weights:  # a config that disagrees with the weights may describe a huge model: check first
        rules = list(rules)
        if shapes is None:
            shapes = {key: array.shape for key, array in arrays.items()}
        check_keys(shapes, rules, source_name, ignored)  # another depth: keys missing or left over
        # Another width: a model much larger than the weights (already in memory) is refused unbuilt; one
        # of about their size costs no more to build, and `assign` then names the key that does not fit.
        expected = registry.count_parameters(config)
        found = sum(int(np.prod(shape)) for key, shape in shapes.items() if key not in ignored)
        if expected > 2 * found:
            raise ValueError(
                f"{source_name}: its config describes {expected:,} parameters (image tower width "
                f"{config['image']['width']}, depth {config['image']['depth']}; text tower width "
                f"{config['text']['width']}, depth {config['text']['depth']}), its weights hold {found:,}. "
                "Refused before building the model."
            )
        if callable(arrays):
            arrays = arrays()
    model = registry.build_model(config, dtype=dtype)
    if load_weights:
        assign(model, arrays, rules, source_name, ignored=ignored)
    return model


def from_transformers(handle, config=None, dtype=None, load_weights=True):
    """A `SigLIP` from a transformers `SiglipModel` or `Siglip2Model` (NaFlex) folder or `hf://` handle.

    Safetensors only.
    """
    config = config or _load_config(handle)
    table = hf_siglip2_format if config.get("model_type") == "siglip2" else hf_format
    our_config = table.infer_config(config)
    paths = []
    if load_weights:
        if preset_utils.check_file_exists(handle, preset_utils.SAFETENSOR_FILE):
            paths = [preset_utils.get_file(handle, preset_utils.SAFETENSOR_FILE)]
        elif preset_utils.check_file_exists(handle, preset_utils.SAFETENSOR_CONFIG_FILE):
            with open(preset_utils.get_file(handle, preset_utils.SAFETENSOR_CONFIG_FILE)) as file:
                shards = sorted(set(json.load(file)["weight_map"].values()))
            paths = [preset_utils.get_file(handle, shard) for shard in shards]
        else:
            raise ValueError(
                f"{handle} has no model.safetensors (or index); only safetensors checkpoints are read, "
                "never pickled pytorch_model.bin files."
            )
    # The headers first: a config that disagrees with the weights is refused before any array is read.
    return _converted(our_config, lambda: load_safetensors(paths), table.rules(our_config),
                      f"transformers checkpoint {handle}", table.IGNORED_KEYS, dtype, load_weights,
                      shapes=safetensors_shapes(paths))


def from_keras_hub(handle, dtype=None, load_weights=True):
    """A `SigLIP` from a keras-hub `SigLIPBackbone` preset (folder, `kaggle://` or keras-hub name)."""
    backbone = keras_hub_format.load_backbone(handle)
    config = keras_hub_format.infer_config(backbone)
    arrays = keras_hub_format.backbone_arrays(backbone)
    del backbone
    return _converted(config, arrays, keras_hub_format.rules(config), f"keras-hub preset {handle}",
                      keras_hub_format.IGNORED_KEYS, dtype, load_weights)


def from_big_vision(path, dtype=None, load_weights=True, text_pool_type="last"):
    """A `SigLIP` from a big_vision `.npz` (per-layer or "scan" layout, bf16 stored as void).

    Args:
        path: the `.npz` file (local or `gs://`).
        dtype: optional dtype policy.
        load_weights: bool. False builds the architecture only.
        text_pool_type: the text tower's `pool_type` in the big_vision config
            the checkpoint was trained with (`"last"`, SigLIP's, by default;
            `"first"`, `"gap"` / `"mean"`); the `.npz` does not record it.
    """
    if not os.path.isfile(path):  # a gs:// (or other remote) file: keras-hub's get_file caches it
        path = preset_utils.get_file(os.path.dirname(path), os.path.basename(path))
    arrays = big_vision_format.normalize_keys(load_npz(path))
    table = big_vision_naflex_format if big_vision_naflex_format.is_naflex(arrays) else big_vision_format
    config = table.infer_config(arrays, text_pool_type=text_pool_type)
    return _converted(config, arrays, table.rules(config), f"big_vision checkpoint {path}", (),
                      dtype, load_weights)


def siglit(image_source, config, dtype=None, lock_image_tower=True):
    """A SigLiT model: a new text tower of `config["text"]` on the image tower of `image_source`.

    Args:
        image_source: a handle `from_preset` accepts, whose image tower is
            reused; None for a random image tower (architecture only).
        config: `{"image": ..., "text": ...}`; the image part must match the
            source's image tower.
        lock_image_tower: bool. Freeze the image tower (LiT).
    """
    model = registry.build_model(config, dtype=dtype, lock_image_tower=lock_image_tower)
    if image_source is not None:
        source = from_preset(image_source, dtype=dtype)
        source_weights = source.image_encoder.weights
        ours = model.image_encoder.weights
        if [tuple(w.shape) for w in source_weights] != [tuple(w.shape) for w in ours]:
            raise ValueError(f"The image tower of {image_source} does not match the SigLiT config {config['image']}.")
        for target, weight in zip(ours, source_weights):
            target.assign(weight)
    return model
