"""Kept for existing imports: the tokenizer and image preprocessor live in `keras_siglip.models.siglip`."""

from keras_siglip.models.siglip.image_preprocessor import SigLIPImagePreprocessor
from keras_siglip.models.siglip.tokenizer import SigLIPTokenizer

__all__ = ["SigLIPImagePreprocessor", "SigLIPTokenizer"]
