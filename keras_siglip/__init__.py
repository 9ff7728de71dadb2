"""keras_siglip: language-image pre-training with the pairwise sigmoid loss, for Keras 3.

The public API, in the order an image and a caption meet it:

- towers: `ImageEncoder`, `TextEncoder` (built from `keras_siglip.layers`);
- inputs: `SigLIPTokenizer`, `SigLIPImagePreprocessor` and the readers of
  `keras_siglip.data`;
- the model: `SigLIP` (with `lock_image_tower` for LiT, and
  `MultipliedLearningRateAdamW` for the unlocked variant);
- the losses: `sigmoid_loss` / `SigmoidLoss` and the CLIP baseline
  `softmax_loss` / `SoftmaxLoss`.
"""

from keras_siglip import distribution, evaluation, layers
from keras_siglip.encoders import VARIANTS, ImageEncoder, TextEncoder
from keras_siglip.keras_hub_image_encoder import KerasHubImageEncoder
from keras_siglip.losses import SigmoidLoss, SoftmaxLoss, sigmoid_loss, softmax_loss
from keras_siglip.model import SigLIP
from keras_siglip.optimizers import MultipliedLearningRateAdamW
from keras_siglip.preprocessing import SigLIPImagePreprocessor, SigLIPTokenizer
from keras_siglip.presets import list_presets

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "ImageEncoder",
    "KerasHubImageEncoder",
    "MultipliedLearningRateAdamW",
    "SigLIP",
    "SigLIPImagePreprocessor",
    "SigLIPTokenizer",
    "SigmoidLoss",
    "SoftmaxLoss",
    "TextEncoder",
    "distribution",
    "evaluation",
    "layers",
    "list_presets",
    "sigmoid_loss",
    "softmax_loss",
]
