"""Presets: the released SigLIP configurations and loaders for every checkpoint format.

`from_preset` reads built-in names, this library's preset folders, keras-hub
presets, transformers checkpoints and big_vision `.npz` files; each converter
is a table of `(source key -> our weight path, transform)` (see `checkpoint`).
"""

from keras_siglip.presets.loader import (
    LoadedPreset,
    from_big_vision,
    from_keras_hub,
    from_preset,
    from_transformers,
    load_preset,
    save_preset,
    siglit,
)
from keras_siglip.presets.registry import PRESETS, build_model, count_parameters, get_preset, list_presets

__all__ = [
    "PRESETS",
    "LoadedPreset",
    "build_model",
    "count_parameters",
    "from_big_vision",
    "from_keras_hub",
    "from_preset",
    "from_transformers",
    "get_preset",
    "list_presets",
    "load_preset",
    "save_preset",
    "siglit",
]
