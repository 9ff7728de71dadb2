"""keras_siglip: language-image pre-training with the pairwise sigmoid loss, for Keras 3.

The public API, in the order an image and a caption meet it:

- inputs: the readers of `keras_siglip.data`, `SigLIPTokenizer` (SigLIP 2: `SigLIP2Tokenizer`) and
  `SigLIPImagePreprocessor` (these need TensorFlow: `pip install "keras-siglip[tensorflow]"`);
- towers: `ImageEncoder`, `TextEncoder` (built from `keras_siglip.layers`),
  `NaFlexImageEncoder` (SigLIP 2 NaFlex, fed by `NaFlexImagePreprocessor`), or
  `KerasHubImageEncoder` for a keras-hub vision backbone;
- the model: `SigLIP` (with `lock_image_tower` for LiT, and
  `MultipliedLearningRateAdamW` for the unlocked variant);
- the losses: `sigmoid_loss` / `SigmoidLoss` and the CLIP baseline
  `softmax_loss` / `SoftmaxLoss`;
- presets and checkpoints: `list_presets`, `keras_siglip.presets`, and `export` (to
  transformers, keras-hub and big_vision; `keras-siglip-convert` on the command line);
- serving: `TowerModel` (`model.tower_model("image")`), one tower as a model whose
  `export` writes a SavedModel, ONNX, LiteRT or torch artifact with no input signature;
- `keras_siglip.evaluation` (zero-shot, retrieval) and `keras_siglip.distribution`.

Importing the package loads Keras and the model code only: TensorFlow,
tensorflow-text, keras-hub and the readers are imported when first used.
"""

import importlib

from keras_siglip.losses import SigmoidLoss, SoftmaxLoss, sigmoid_loss, softmax_loss
from keras_siglip.models.siglip.naflex_image_encoder import NaFlexImageEncoder
from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor
from keras_siglip.models.siglip.siglip_model import SigLIP
from keras_siglip.models.siglip.tower_model import TowerModel
from keras_siglip.models.siglip.towers import VARIANTS, ImageEncoder, TextEncoder
from keras_siglip.optimizers import MultipliedLearningRateAdamW

__version__ = "0.1.0"

# Names whose modules pull in TensorFlow, keras-hub or the data readers:
# imported on first use, so `import keras_siglip` stays as light as `import keras`.
_LAZY_ATTRIBUTES = {
    "SigLIPTokenizer": "keras_siglip.models.siglip.tokenizer",
    "SigLIP2Tokenizer": "keras_siglip.models.siglip.siglip2_tokenizer",
    "SigLIPImagePreprocessor": "keras_siglip.models.siglip.image_preprocessor",
    "KerasHubImageEncoder": "keras_siglip.models.siglip.keras_hub_image_encoder",
    "list_presets": "keras_siglip.presets.registry",
    "export": "keras_siglip.presets.export",
}
_LAZY_MODULES = ("data", "distribution", "evaluation", "layers", "losses", "models", "presets", "templates")


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"keras_siglip.{name}")
    raise AttributeError(f"module 'keras_siglip' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "VARIANTS",
    "ImageEncoder",
    "KerasHubImageEncoder",
    "MultipliedLearningRateAdamW",
    "NaFlexImageEncoder",
    "NaFlexImagePreprocessor",
    "SigLIP",
    "SigLIP2Tokenizer",
    "SigLIPImagePreprocessor",
    "SigLIPTokenizer",
    "SigmoidLoss",
    "SoftmaxLoss",
    "TextEncoder",
    "TowerModel",
    "data",
    "distribution",
    "evaluation",
    "export",
    "layers",
    "list_presets",
    "presets",
    "sigmoid_loss",
    "softmax_loss",
]
