"""Kept for existing imports: `SigLIP` lives in `keras_siglip.models.siglip.siglip_model`."""

from keras_siglip.models.siglip.siglip_model import SigLIP, l2_normalize  # noqa: F401
