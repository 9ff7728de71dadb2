"""Hugging Face transformers `Siglip2Model` (NaFlex) checkpoints: config.json + safetensors.

A `Siglip2Model` is SigLIP's two towers with a NaFlex image tower: its patch
embedding is a `Linear(3 * p * p -> D)` and its position embedding an
`Embedding(num_patches, D)` holding a `sqrt(num_patches)`-sided grid. Every
other key is `SiglipModel`'s, so the table is `hf_format`'s with those two
rows replaced. `rules` serves both directions (`checkpoint.assign` reads,
`checkpoint.export_arrays` writes); `to_hf_config` is `infer_config`'s
inverse.
"""

import math

from keras_siglip.presets import hf_format
from keras_siglip.presets.checkpoint import Rule, identity, siglip_layout_problems, to_shape, transpose

_VISION_DEFAULTS = dict(hf_format._VISION_DEFAULTS, num_patches=256)
_VISION_DEFAULTS.pop("image_size")
IGNORED_KEYS = hf_format.IGNORED_KEYS


def is_naflex(config):
    """Whether our `{"image": ..., "text": ...}` config describes a NaFlex image tower."""
    return "position_grid_size" in config["image"]


def infer_config(hf_config):
    """Our `{"image": ..., "text": ...}` config from a transformers `siglip2` config.json dict.

    Example:
    >>> config = infer_config({"model_type": "siglip2", "vision_config": {"num_patches": 64, "patch_size": 8}})
    >>> config["image"]["position_grid_size"], config["image"]["patch_size"]
    (8, 8)
    """
    if hf_config.get("model_type") != "siglip2":
        raise ValueError(
            f"Expected a transformers config with model_type 'siglip2', got {hf_config.get('model_type')!r}."
        )
    vision = hf_format._tower(hf_config.get("vision_config") or {}, _VISION_DEFAULTS)
    patch_size = vision["patch_size"]
    if isinstance(patch_size, (list, tuple)):
        if len(set(patch_size)) != 1:
            raise ValueError(f"vision_config.patch_size is {patch_size}; only square patches are supported.")
        patch_size = patch_size[0]
    grid = math.isqrt(vision["num_patches"])
    if grid * grid != vision["num_patches"]:
        raise ValueError(f"vision_config.num_patches is {vision['num_patches']}, not the square of a grid side.")
    # The rest (text tower, activations, head, channels) is SiglipModel's: checked there.
    siglip = dict(hf_config, model_type="siglip",
                  vision_config=dict(vision, image_size=grid * patch_size, patch_size=patch_size))
    config = hf_format.infer_config(siglip)
    image = config["image"]
    image.pop("image_size")
    image["position_grid_size"] = grid
    return config


def rules(config):
    """The conversion table for a NaFlex model built from `config` (see `infer_config`)."""
    image = config["image"]
    width, grid, patch = image["width"], image["position_grid_size"], image["patch_size"]
    square = dict(config, image=dict({k: v for k, v in image.items() if k != "position_grid_size"},
                                     image_size=grid * patch))
    table = [rule for rule in hf_format.rules(square) if not rule.target.startswith("image_encoder/patch_embedding/")]
    embeddings, ours = "vision_model.embeddings", "image_encoder/patch_embedding"
    return [
        Rule(f"{embeddings}.patch_embedding.weight", f"{ours}/patch_dense/kernel", transpose),
        Rule(f"{embeddings}.patch_embedding.bias", f"{ours}/patch_dense/bias", identity),
        Rule(f"{embeddings}.position_embedding.weight", f"{ours}/position_embedding",
             to_shape(grid, grid, width, source=(grid * grid, width))),
        *table,
    ]


def check_exportable(config):
    """Refuses, naming the problem, a NaFlex model `Siglip2Model` cannot hold."""
    image, text = config["image"], config["text"]
    problems = siglip_layout_problems(dict(config, image=dict(image, position_embedding="learned")),
                                      "Siglip2Model's vision tower", "Siglip2Model")
    if text["width"] != image["width"] and not text["output_dim"]:
        problems.append("the towers differ in width and the text tower has no head")
    if problems:
        raise ValueError("Cannot export to transformers: " + "; ".join(problems) + ".")


def to_hf_config(config):
    """A transformers `siglip2` config.json dict for our NaFlex `config`: `infer_config`'s inverse.

    Example:
    >>> from keras_siglip.presets.registry import naflex_config
    >>> hf = to_hf_config(naflex_config("B", 16))
    >>> hf["model_type"], hf["vision_config"]["num_patches"]
    ('siglip2', 256)
    """
    image = config["image"]
    grid = image["position_grid_size"]
    square = dict(config, image=dict(image, image_size=grid * image["patch_size"]))
    hf = hf_format.to_hf_config(square)
    vision = hf["vision_config"]
    del vision["image_size"]
    vision.update(model_type="siglip2_vision_model", num_patches=grid * grid)
    hf["text_config"]["model_type"] = "siglip2_text_model"
    hf.update(model_type="siglip2", architectures=["Siglip2Model"])
    return hf
