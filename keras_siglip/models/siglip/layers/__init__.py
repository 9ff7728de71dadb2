"""The building blocks of both towers: plain Keras layers."""

from keras_siglip.models.siglip.layers.attention import MultiHeadAttention
from keras_siglip.models.siglip.layers.encoder_block import EncoderBlock, compile_encoder_blocks
from keras_siglip.models.siglip.layers.map_pooling import MAPPooling
from keras_siglip.models.siglip.layers.mlp import MlpBlock
from keras_siglip.models.siglip.layers.naflex_patch_embedding import NaFlexPatchEmbedding, position_resize_weights
from keras_siglip.models.siglip.layers.patch_embedding import PatchEmbedding, sincos_2d_position_embedding

__all__ = [
    "EncoderBlock",
    "MAPPooling",
    "MlpBlock",
    "MultiHeadAttention",
    "NaFlexPatchEmbedding",
    "PatchEmbedding",
    "compile_encoder_blocks",
    "position_resize_weights",
    "sincos_2d_position_embedding",
]
