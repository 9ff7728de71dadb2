"""Kept for existing imports: the towers live in `keras_siglip.models.siglip.towers`."""

from keras_siglip.models.siglip.towers import VARIANTS, ImageEncoder, TextEncoder, variant_config  # noqa: F401
