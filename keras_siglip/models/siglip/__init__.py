"""SigLIP: the model, its two towers and their layers, its tokenizer and image preprocessor.

An image and a caption go through these files in this order:
`image_preprocessor.py` / `tokenizer.py` -> `towers.py` (built from `layers/`)
-> `siglip_model.py` (`SigLIP.call`, then `compute_loss` with `keras_siglip.losses`).
The tokenizer and the image preprocessor need TensorFlow and keras-hub; they are
imported only when first used.
"""

from keras_siglip.models.siglip.naflex_image_encoder import NaFlexImageEncoder
from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor
from keras_siglip.models.siglip.siglip_model import SigLIP, l2_normalize
from keras_siglip.models.siglip.towers import VARIANTS, ImageEncoder, TextEncoder, variant_config

_LAZY = {
    "SigLIPTokenizer": "keras_siglip.models.siglip.tokenizer",
    "SigLIP2Tokenizer": "keras_siglip.models.siglip.siglip2_tokenizer",
    "SigLIPImagePreprocessor": "keras_siglip.models.siglip.image_preprocessor",
    "KerasHubImageEncoder": "keras_siglip.models.siglip.keras_hub_image_encoder",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VARIANTS",
    "ImageEncoder",
    "KerasHubImageEncoder",
    "NaFlexImageEncoder",
    "NaFlexImagePreprocessor",
    "SigLIP",
    "SigLIP2Tokenizer",
    "SigLIPImagePreprocessor",
    "SigLIPTokenizer",
    "TextEncoder",
    "l2_normalize",
    "variant_config",
]
