"""Kept for existing imports: the layers live in `keras_siglip.models.siglip.layers`."""

from keras_siglip.models.siglip.layers import *  # noqa: F401,F403
from keras_siglip.models.siglip.layers import __all__  # noqa: F401
