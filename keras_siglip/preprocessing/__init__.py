"""Text and image pre-processing: what turns a caption and an image file into model inputs."""

from keras_siglip.preprocessing.image import SigLIPImagePreprocessor
from keras_siglip.preprocessing.tokenizer import SigLIPTokenizer

__all__ = ["SigLIPImagePreprocessor", "SigLIPTokenizer"]
