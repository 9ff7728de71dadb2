"""Exporting a NaFlex `SigLIP` (a `NaFlexImageEncoder` image tower) to transformers' `Siglip2Model`.

`export(model, path, format="transformers")` comes here for NaFlex models:
the folder holds `config.json` (`model_type: siglip2`), `model.safetensors`
(`hf_siglip2_format.rules` run backwards), `preprocessor_config.json` for
transformers' `Siglip2ImageProcessor` with the preprocessor's patch size and
`max_num_patches`, and with a tokenizer its files (`Siglip2Tokenizer` for a
`SigLIP2Tokenizer`): `Siglip2Processor` loads the folder.
"""

import json
import os

from keras_siglip.presets import hf_format, hf_siglip2_format
from keras_siglip.presets.checkpoint import export_arrays

_TOWER_KEYS = ("width", "depth", "num_heads", "mlp_dim", "output_dim", "layer_norm_epsilon", "pooling")


def is_naflex_model(model):
    """Whether the model's image tower is a `NaFlexImageEncoder`."""
    from keras_siglip.models.siglip.naflex_image_encoder import NaFlexImageEncoder

    return isinstance(model.image_encoder, NaFlexImageEncoder)


def naflex_model_config(model):
    """The `{"image": ..., "text": ...}` config of a NaFlex `SigLIP`, as `hf_siglip2_format` takes it."""
    from keras_siglip.models.siglip.towers import TextEncoder

    image, text = model.image_encoder, model.text_encoder
    if not isinstance(text, TextEncoder):
        raise ValueError(f"The model's text tower is a {type(text).__name__}, not keras_siglip's TextEncoder.")
    image_config = {key: getattr(image, key) for key in _TOWER_KEYS}
    image_config.update(patch_size=image.patch_size, position_grid_size=image.position_grid_size)
    text_config = {key: getattr(text, key) for key in _TOWER_KEYS}
    text_config.update(vocabulary_size=text.vocabulary_size, sequence_length=text.sequence_length)
    return {"image": image_config, "text": text_config}


def to_transformers(model, path, tokenizer=None, image_converter=None, progress=None):
    """Writes a NaFlex `SigLIP` as a transformers `Siglip2Model` folder; returns `path`.

    Args:
        model: a `SigLIP` with a `NaFlexImageEncoder`.
        path: the folder to write.
        tokenizer: optional `SigLIP2Tokenizer` (or `SigLIPTokenizer`),
            written as transformers' tokenizer files, so `Siglip2Processor`
            loads the folder.
        image_converter: optional `NaFlexImagePreprocessor`; its
            `max_num_patches` goes to `preprocessor_config.json` (256 without one).
        progress: optional callable `progress(done, total)` per weight.
    """
    config = naflex_model_config(model)
    hf_siglip2_format.check_exportable(config)
    patch_size = config["image"]["patch_size"]
    max_num_patches = 256
    if image_converter is not None:
        if getattr(image_converter, "patch_size", None) != patch_size:
            raise ValueError(f"The image converter cuts {getattr(image_converter, 'patch_size', None)}-pixel "
                             f"patches; the image tower reads {patch_size}-pixel ones.")
        max_num_patches = image_converter.max_num_patches
    arrays = export_arrays(model, hf_siglip2_format.rules(config), "transformers' Siglip2Model", progress)
    if not config["text"]["output_dim"]:
        arrays.update(hf_format.identity_text_head(config))
    from safetensors.numpy import save_file

    save_file(arrays, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    hf_config = hf_siglip2_format.to_hf_config(config)
    if tokenizer is not None:
        hf_config["text_config"]["eos_token_id"] = int(tokenizer.eos_id)
        hf_config["text_config"]["pad_token_id"] = int(tokenizer.padding_id)
    with open(os.path.join(path, "config.json"), "w") as file:
        json.dump(hf_config, file, indent=2)
    if tokenizer is not None:
        from keras_siglip.presets.export import write_hf_tokenizer

        write_hf_tokenizer(tokenizer, path)
    from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor

    (image_converter or NaFlexImagePreprocessor(patch_size, max_num_patches)).save_to_preset(path)
    return path
