"""`export`: a `SigLIP` out to transformers, keras-hub or big_vision.

Each format's conversion table (`hf_format`, `keras_hub_format`,
`big_vision_format`) is the one its loader reads with, run backwards
(`checkpoint.export_arrays`), so reading back what was written gives the same
weights. What each target holds:

| format | written |
|---|---|
| `"transformers"` | a folder: `config.json`, `model.safetensors`; with a tokenizer `spiece.model` and tokenizer config (`SiglipTokenizer`; a `SigLIP2Tokenizer` writes Gemma's `tokenizer.model` and `Siglip2Tokenizer` files), and `preprocessor_config.json` (`SiglipImageProcessor`) |
| `"keras_hub"` | a keras-hub preset folder saved by keras-hub's own `SigLIPBackbone`, `SigLIPTokenizer` (`GemmaTokenizer` for SigLIP 2), `SigLIPImageConverter` and `SigLIPPreprocessor` |
| `"big_vision"` | an `.npz` in big_vision's per-layer layout (`params/img/...`, `params/txt/...`, `params/t`, `params/b`); with a tokenizer, its SentencePiece model next to it |

Tokenizer rules travel as far as each target can express them; where the
target's tokenizer would split some texts differently from ours (transformers
always strips punctuation, keras-hub lowercases ASCII only), a `UserWarning`
names the difference.
"""

import json
import os
import warnings

import numpy as np

from keras_siglip import atomic
from keras_siglip.presets import big_vision_format, big_vision_naflex_format, hf_format, keras_hub_format
from keras_siglip.presets.checkpoint import export_arrays, model_config

FORMATS = ("transformers", "keras_hub", "big_vision")


def export(model, path, format="transformers", tokenizer=None, image_converter=None, progress=None):
    """Writes `model` (and optional preprocessing) as another library's checkpoint.

    Args:
        model: a `SigLIP` with keras_siglip's own towers.
        path: the folder to write (transformers, keras_hub) or the `.npz` file
            (big_vision). Written under a temporary name beside it and then
            renamed into place, so a kill mid-write leaves any previous export
            whole; an existing export folder is replaced whole (a non-empty
            folder without a config.json is refused).
        format: `"transformers"`, `"keras_hub"` or `"big_vision"`.
        tokenizer: optional `SigLIPTokenizer`, written as the target's tokenizer.
        image_converter: optional `SigLIPImagePreprocessor` (transformers and
            keras_hub); transformers gets a `preprocessor_config.json` at the
            model's resolution whenever a tokenizer or converter is given.
        progress: optional callable `progress(done, total)` per weight written.

    Returns:
        `path`.

    Example:
    >>> import os, tempfile, keras_siglip
    >>> model = keras_siglip.SigLIP.from_variant(
    ...     "tiny", image_size=8, patch_size=4, vocabulary_size=10, sequence_length=4)
    >>> path = keras_siglip.export(model, os.path.join(tempfile.mkdtemp(), "m.npz"), format="big_vision")
    >>> sorted(os.listdir(os.path.dirname(path)))
    ['m.npz']
    """
    if format not in FORMATS:
        raise ValueError(f"Unknown export format {format!r}; expected one of {', '.join(map(repr, FORMATS))}.")
    from keras_siglip.models.siglip.siglip_model import SigLIP

    if not isinstance(model, SigLIP):
        raise ValueError(f"export takes a keras_siglip SigLIP model; got {type(model).__name__}.")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"The export path must be a string or path; got {type(path).__name__}.")
    path = os.fspath(path)
    from keras_siglip.presets import export_naflex

    if export_naflex.is_naflex_model(model):  # SigLIP 2 NaFlex: transformers' Siglip2Model only
        if format == "keras_hub":
            raise ValueError("keras-hub has no NaFlex image tower: export a NaFlex model to 'transformers' "
                             "(Siglip2Model) or 'big_vision'.")
        naflex_config = export_naflex.naflex_model_config(model)
        if tokenizer is not None:
            _check_tokenizer(tokenizer, naflex_config)
        if format == "big_vision":
            naflex_config["image"]["position_embedding"] = "learned"  # the resized grid is a learned weight
            _to_big_vision(model, naflex_config, path, tokenizer, image_converter, progress,
                           rules=big_vision_naflex_format.rules(naflex_config))
            return path
        _ensure_folder(path, format)
        with atomic.replaced_folder(path) as partial:
            export_naflex.to_transformers(model, partial, tokenizer, image_converter, progress)
        return path
    config = model_config(model)
    if tokenizer is not None:
        _check_tokenizer(tokenizer, config)
    if image_converter is not None:
        _check_image_converter(image_converter, config)
    if format == "big_vision":
        _to_big_vision(model, config, path, tokenizer, image_converter, progress)
        return path
    writer = {"transformers": _to_transformers, "keras_hub": _to_keras_hub}[format]
    _ensure_folder(path, format)
    with atomic.replaced_folder(path) as partial:
        writer(model, config, partial, tokenizer, image_converter, progress)
    return path


def _check_tokenizer(tokenizer, config):
    proto = getattr(tokenizer, "proto", None)
    if proto is None:
        raise ValueError(
            f"The tokenizer ({type(tokenizer).__name__}) has no SentencePiece proto; export writes "
            "SentencePiece vocabularies (a SigLIPTokenizer)."
        )
    vocabulary = tokenizer.vocabulary_size()
    if vocabulary > config["text"]["vocabulary_size"]:
        raise ValueError(
            f"The tokenizer has {vocabulary} pieces but the text tower embeds {config['text']['vocabulary_size']} "
            "ids: they do not belong together."
        )


def _check_image_converter(image_converter, config):
    size = tuple(getattr(image_converter, "image_size", None) or ())
    expected = (config["image"]["image_size"],) * 2
    if size != expected:
        raise ValueError(
            f"The image converter resizes to {size or 'no fixed size'}; the image tower reads {expected}."
        )


def _ensure_folder(path, format):
    if os.path.isfile(path):
        raise ValueError(f"{path} is a file; a {format} export is a folder.")


# -- transformers -------------------------------------------------------------


def _to_transformers(model, config, path, tokenizer, image_converter, progress):
    hf_format.check_exportable(config)
    arrays = export_arrays(model, hf_format.rules(config), "transformers' SiglipModel", progress)
    if not config["text"]["output_dim"]:
        arrays.update(hf_format.identity_text_head(config))
    hf_config = hf_format.to_hf_config(config)
    if tokenizer is not None:
        hf_config["text_config"]["eos_token_id"] = int(tokenizer.eos_id)
        hf_config["text_config"]["pad_token_id"] = int(tokenizer.padding_id)
    from safetensors.numpy import save_file

    # metadata {"format": "pt"}: transformers refuses safetensors files without it.
    save_file(arrays, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as file:
        json.dump(hf_config, file, indent=2)
    if tokenizer is not None:
        write_hf_tokenizer(tokenizer, path)
    if tokenizer is not None or image_converter is not None:
        _write_hf_image_processor(image_converter, config, path)


def _tokenizer_differences(tokenizer, lowercase, canonicalize, target):
    """The texts `target`'s tokenizer would split differently from ours, in words."""
    differences = []
    if tokenizer.canonicalize != canonicalize:
        differences.append("strips punctuation and collapses whitespace" if canonicalize
                           else "keeps punctuation")
    if tokenizer.lowercase != lowercase:
        differences.append({None: "does not lowercase", "ascii": "lowercases ASCII letters only",
                            "unicode": "lowercases every cased letter",
                            "per_character": "lowercases every letter on its own"}[lowercase])
    if differences:
        warnings.warn(
            f"{target}'s tokenizer {' and '.join(differences)}, unlike this {type(tokenizer).__name__} "
            f"(lowercase={tokenizer.lowercase!r}, canonicalize={tokenizer.canonicalize}): texts where that "
            "matters get other token ids. Export a tokenizer with the target's rules for exact parity.",
            UserWarning, stacklevel=4)


def _piece(tokenizer, token_id):
    return tokenizer.id_to_token(int(token_id))


def _is_siglip2(tokenizer):
    from keras_siglip.models.siglip.siglip2_tokenizer import SigLIP2Tokenizer

    return isinstance(tokenizer, SigLIP2Tokenizer)


def _write_hf_siglip2_tokenizer(tokenizer, path):
    """Gemma's `tokenizer.model` and transformers' `Siglip2Tokenizer` files (AutoTokenizer picks that class)."""
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    with open(os.path.join(path, "tokenizer.model"), "wb") as file:
        file.write(_proto_bytes(tokenizer))
    _tokenizer_differences(tokenizer, "per_character", False, "transformers")
    hf_tokenizer = Siglip2Tokenizer.from_pretrained(
        path, add_bos_token=False, add_eos_token=True, padding_side="right",
        model_max_length=tokenizer.sequence_length, pad_token=_piece(tokenizer, tokenizer.padding_id),
        eos_token=_piece(tokenizer, tokenizer.eos_id))
    hf_tokenizer.save_pretrained(path)


def write_hf_tokenizer(tokenizer, path):
    import transformers

    if _is_siglip2(tokenizer):
        return _write_hf_siglip2_tokenizer(tokenizer, path)
    vocabulary = os.path.join(path, "spiece.model")
    with open(vocabulary, "wb") as file:
        file.write(_proto_bytes(tokenizer))
    # transformers' SiglipTokenizer always canonicalises; it lowercases like str.lower (or not at all).
    lowercase = "unicode" if tokenizer.lowercase else None
    _tokenizer_differences(tokenizer, lowercase, True, "transformers")
    hf_tokenizer = transformers.SiglipTokenizer(
        vocab_file=vocabulary, do_lower_case=lowercase is not None,
        model_max_length=tokenizer.sequence_length,
        eos_token=_piece(tokenizer, tokenizer.eos_id), pad_token=_piece(tokenizer, tokenizer.padding_id),
        unk_token=_piece(tokenizer, _unknown_id(tokenizer)))
    hf_tokenizer.save_pretrained(path)


def _unknown_id(tokenizer):
    unknown = int(tokenizer._sentence_piece_spm.unk_id()) if hasattr(tokenizer, "_sentence_piece_spm") else -1
    return unknown if unknown >= 0 else tokenizer.token_to_id("<unk>")


def _proto_bytes(tokenizer):
    proto = tokenizer.proto
    if isinstance(proto, bytes):
        return proto
    with open(proto, "rb") as file:
        return file.read()


_PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos3": 1, "lanczos5": 1}


def _write_hf_image_processor(image_converter, config, path):
    size = config["image"]["image_size"]
    interpolation = getattr(image_converter, "interpolation", "bilinear")
    if interpolation not in _PIL_RESAMPLE:
        raise ValueError(f"Cannot express the image converter's {interpolation!r} resize in transformers.")
    processor = {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": _PIL_RESAMPLE[interpolation],
        # [0, 255] -> [-1, 1], as SigLIP was trained: (x / 255 - 0.5) / 0.5.
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }
    with open(os.path.join(path, "preprocessor_config.json"), "w") as file:
        json.dump(processor, file, indent=2)


# -- keras-hub ----------------------------------------------------------------


def _to_keras_hub(model, config, path, tokenizer, image_converter, progress):
    keras_hub_format.check_exportable(config)
    import keras_hub

    arrays = export_arrays(model, keras_hub_format.rules(config), "keras-hub's SigLIPBackbone", progress)
    backbone = keras_hub_format.build_backbone(config)
    keras_hub_format.assign_backbone(backbone, arrays)
    backbone.save_to_preset(path)
    size = config["image"]["image_size"]
    converter = keras_hub.layers.SigLIPImageConverter(
        image_size=(size, size), scale=1 / 127.5, offset=-1.0,
        interpolation=getattr(image_converter, "interpolation", "bilinear"),
        antialias=bool(getattr(image_converter, "antialias", False)))
    if tokenizer is None:
        if image_converter is not None:
            converter.save_to_preset(path)
        return
    # keras-hub's SigLIP 2 presets pair its GemmaTokenizer (padding with '<pad>') with the SigLIPPreprocessor.
    hub_class, pad = ((keras_hub.models.GemmaTokenizer, "'<pad>'") if _is_siglip2(tokenizer)
                      else (keras_hub.models.SigLIPTokenizer, "'</s>'"))
    hub_tokenizer = hub_class(proto=_proto_bytes(tokenizer))
    if tokenizer.padding_id != hub_tokenizer.pad_token_id or tokenizer.eos_id != hub_tokenizer.end_token_id:
        raise ValueError(
            f"The tokenizer pads with id {tokenizer.padding_id} and ends with {tokenizer.eos_id}; keras-hub's "
            f"{hub_class.__name__} pads with {pad} (id {hub_tokenizer.pad_token_id}) and ends with id "
            f"{hub_tokenizer.end_token_id}."
        )
    # keras-hub's SigLIPPreprocessor lowercases (ASCII) only as part of canonicalising.
    canonicalize = bool(tokenizer.lowercase or tokenizer.canonicalize)
    _tokenizer_differences(tokenizer, "ascii" if canonicalize else None, canonicalize, "keras-hub")
    preprocessor = keras_hub.models.SigLIPPreprocessor(
        hub_tokenizer, converter if image_converter is not None else None,
        sequence_length=tokenizer.sequence_length, canonicalize_text=canonicalize)
    preprocessor.save_to_preset(path)
    if image_converter is None:
        converter.save_to_preset(path)


# -- big_vision ---------------------------------------------------------------


def _to_big_vision(model, config, path, tokenizer, image_converter, progress, rules=None):
    big_vision_format.check_exportable(config)
    if not path.endswith(".npz"):
        raise ValueError(f"A big_vision export is one .npz file; got {path!r}.")
    if image_converter is not None:
        raise ValueError(
            "big_vision keeps image preprocessing in its config (e.g. 'resize(224)|value_range(-1, 1)'), "
            "not in the checkpoint: export without image_converter."
        )
    rules = rules or big_vision_format.rules(config)
    arrays = export_arrays(model, rules, "big_vision's two_towers", progress)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic.replaced_file(path) as partial, open(partial, "wb") as file:
        np.savez(file, **big_vision_format.to_npz_arrays(arrays))
    if config["text"]["pooling"] != "last":
        pool_type = big_vision_format.pool_type(config)
        warnings.warn(
            f"The text tower pools the {pool_type!r} token; the .npz holds weights only: set "
            f"pool_type='{pool_type}' in big_vision's text config, and pass text_pool_type='{pool_type}' to "
            "keras_siglip.presets.from_big_vision.", UserWarning, stacklevel=3)
    if tokenizer is not None:  # big_vision configs name their SentencePiece file: put it next to the weights
        with atomic.replaced_file(path[: -len(".npz")] + ".model") as partial, open(partial, "wb") as file:
            file.write(_proto_bytes(tokenizer))
