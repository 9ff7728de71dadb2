"""The two towers: `ImageEncoder` (a ViT with MAP pooling) and `TextEncoder`.

Both are plain Keras layers, built at construction (their input shapes follow
from the config), so each can be used alone or inside `SigLIP`.
"""

import math

import keras
from keras import ops

from keras_siglip.models.siglip.layers import EncoderBlock, MAPPooling, PatchEmbedding

# width / depth / MLP width / heads, as in big_vision's ViT variants.
VARIANTS = {
    "tiny": dict(width=32, depth=2, mlp_dim=64, num_heads=2),  # for tests
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "So400m": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16),
    "g-opt": dict(width=1536, depth=40, mlp_dim=6144, num_heads=16),
}


def variant_config(variant):
    """The width, depth, MLP width and heads of a named variant (`"B"`, `"So400m"`...)."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; known variants: {sorted(VARIANTS)}.")
    return dict(VARIANTS[variant])


def validate_images(images, image_size, name):
    """Checks a batch of images for a tower of `image_size`; raises `ValueError` naming the problem."""
    shape = tuple(images.shape)
    expected = f"(batch, {image_size[0]}, {image_size[1]}, 3)"
    if len(shape) != 4:
        raise ValueError(f"{name} expects images of shape {expected}; got rank {len(shape)} with shape {shape}.")
    # A dimension unknown when tracing (a tf.data pipeline that left height and
    # width unset) cannot be checked here; only known dimensions are.
    if any(got is not None and got != want for got, want in zip(shape[1:], (*image_size, 3))):
        raise ValueError(f"{name} expects images of shape {expected}; got {shape}.")
    dtype = keras.backend.standardize_dtype(images.dtype)
    if "float" not in dtype:
        raise ValueError(
            f"{name} expects float images scaled to [-1, 1]; got dtype {dtype}. "
            "Use keras_siglip's image preprocessing to convert uint8 pixels."
        )
    return images


def check_image_pooling(pooling):
    """`pooling` if an image tower can pool that way (`"map"` or `"gap"`); raises `ValueError` otherwise."""
    if pooling not in ("map", "gap"):
        raise ValueError(f"pooling must be 'map' or 'gap', got {pooling!r}.")
    return pooling


def _as_pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


class _Encoder(keras.layers.Layer):
    """What both towers share: a stack of encoder blocks, a final norm, a head."""

    def __init__(self, width, depth, num_heads, mlp_dim, output_dim, layer_norm_epsilon, remat=False, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("width", width), ("depth", depth), ("num_heads", num_heads), ("mlp_dim", mlp_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        self.remat = bool(remat)
        self.width = width
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.output_dim = output_dim
        self.layer_norm_epsilon = layer_norm_epsilon

    @property
    def embedding_dim(self):
        """Width of what the tower returns."""
        return self.output_dim or self.width

    def _build_blocks_and_head(self, token_shape, pooled_shape, pooled_position=None):
        # Rematerialised blocks keep only their inputs for the backward pass
        # and recompute the rest: less memory, about a third more compute.
        with keras.RematScope(mode="full" if self.remat else None):
            self.blocks = [
                EncoderBlock(
                    self.num_heads,
                    self.mlp_dim,
                    self.layer_norm_epsilon,
                    # Pooled by one token: the last block computes only its output.
                    output_position=pooled_position if i == self.depth - 1 else None,
                    dtype=self.dtype_policy,
                    name=f"block_{i}",
                )
                for i in range(self.depth)
            ]
        for block in self.blocks:
            block.build(token_shape)
        self.encoder_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="encoder_norm"
        )
        self.encoder_norm.build(token_shape)
        self.head = None
        if self.output_dim:
            self.head = keras.layers.Dense(
                self.output_dim, kernel_initializer="lecun_normal", dtype=self.dtype_policy, name="head"
            )
            self.head.build(pooled_shape)

    def _encode(self, tokens, attention_mask=None):
        """The blocks and final norm; `attention_mask` `(batch, tokens)` keeps attention off padding."""
        for block in self.blocks:
            tokens = block(tokens) if attention_mask is None else block(tokens, attention_mask=attention_mask)
        return self.encoder_norm(tokens)

    def _project(self, pooled):
        return pooled if self.head is None else self.head(pooled)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "width": self.width,
                "depth": self.depth,
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "output_dim": self.output_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "remat": self.remat,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_siglip")
class ImageEncoder(_Encoder):
    """The image tower: a ViT without class token, pooled by MAP.

    Patches -> encoder blocks -> LayerNorm -> pooling -> optional Dense head.
    SigLIP's image tower has no head: the MAP output is the embedding.

    Args:
        image_size: int or (height, width). Input resolution in pixels.
        patch_size: int. Patch side in pixels.
        width: int. Token width.
        depth: int. Number of encoder blocks.
        num_heads: int. Attention heads.
        mlp_dim: int. Hidden width of each MLP.
        pooling: `"map"` (multihead attention pooling, SigLIP's choice) or
            `"gap"` (mean over tokens).
        output_dim: int or None. Width of a Dense head after pooling; None for
            no head.
        position_embedding: `"learned"` or `"sincos2d"`.
        layer_norm_epsilon: float.
        remat: bool. Rematerialise each encoder block in training (recompute
            its activations in the backward pass) to fit larger batches.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Inputs are float images `(batch, height, width, 3)` scaled to [-1, 1].

    Example:
    >>> import numpy as np
    >>> encoder = ImageEncoder.from_variant("tiny", image_size=32, patch_size=8)
    >>> tuple(encoder(np.zeros((2, 32, 32, 3), "float32")).shape)
    (2, 32)
    """

    def __init__(
        self,
        image_size,
        patch_size,
        width,
        depth,
        num_heads,
        mlp_dim,
        pooling="map",
        output_dim=None,
        position_embedding="learned",
        layer_norm_epsilon=1e-6,
        remat=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "image_encoder")
        super().__init__(width, depth, num_heads, mlp_dim, output_dim, layer_norm_epsilon, remat, **kwargs)
        self.image_size = _as_pair(image_size)
        self.patch_size = patch_size
        self.pooling = check_image_pooling(pooling)
        self.position_embedding = position_embedding
        self.build((None, *self.image_size, 3))

    @classmethod
    def from_variant(cls, variant, *, image_size=224, patch_size=16, **kwargs):
        """An encoder of a named size (`"B"`, `"L"`, `"So400m"`, `"tiny"`...)."""
        return cls(image_size=image_size, patch_size=patch_size, **variant_config(variant), **kwargs)

    def build(self, input_shape):
        self.patch_embedding = PatchEmbedding(
            self.patch_size,
            self.width,
            position_embedding=self.position_embedding,
            dtype=self.dtype_policy,
            name="patch_embedding",
        )
        self.patch_embedding.build(input_shape)
        token_shape = self.patch_embedding.compute_output_shape(input_shape)
        if self.pooling == "map":
            self.map_pooling = MAPPooling(
                self.num_heads,
                self.mlp_dim,
                self.layer_norm_epsilon,
                dtype=self.dtype_policy,
                name="map_pooling",
            )
            self.map_pooling.build(token_shape)
        self._build_blocks_and_head(token_shape, (None, self.width))

    def validate_inputs(self, images):
        """Checks the shape of an image batch; raises `ValueError` naming the problem."""
        return validate_images(images, self.image_size, self.name)

    def call(self, images, training=None):
        images = self.validate_inputs(images)
        tokens = self._encode(self.patch_embedding(images))
        pooled = self.map_pooling(tokens) if self.pooling == "map" else ops.mean(tokens, axis=1)
        return self._project(pooled)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "pooling": self.pooling,
                "position_embedding": self.position_embedding,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_siglip")
class TextEncoder(_Encoder):
    """The text tower: token + position embedding, encoder blocks, last-token pooling.

    No attention mask is used: big_vision pads with the EOS id, so the last
    position always holds EOS and sees the whole caption.

    Args:
        vocabulary_size: int. Number of token ids.
        sequence_length: int. Maximum number of tokens (64 for most SigLIP models).
        width: int. Token width.
        depth: int. Number of encoder blocks.
        num_heads: int. Attention heads.
        mlp_dim: int. Hidden width of each MLP.
        output_dim: int or None. Width of the Dense head after pooling; None for
            no head (the So400m multilingual checkpoint has none).
        pooling: `"last"` (SigLIP), `"first"` or `"gap"` (mean over tokens).
        layer_norm_epsilon: float.
        remat: bool. Rematerialise each encoder block in training (recompute
            its activations in the backward pass) to fit larger batches.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Inputs are integer token ids `(batch, length)` with `length <= sequence_length`.

    Example:
    >>> import numpy as np
    >>> encoder = TextEncoder.from_variant("tiny", vocabulary_size=100, sequence_length=8)
    >>> tuple(encoder(np.ones((2, 8), "int32")).shape)
    (2, 32)
    """

    def __init__(
        self,
        vocabulary_size,
        sequence_length,
        width,
        depth,
        num_heads,
        mlp_dim,
        output_dim=None,
        pooling="last",
        layer_norm_epsilon=1e-6,
        remat=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "text_encoder")
        super().__init__(width, depth, num_heads, mlp_dim, output_dim, layer_norm_epsilon, remat, **kwargs)
        if pooling not in ("last", "first", "gap"):
            raise ValueError(f"pooling must be 'last', 'first' or 'gap', got {pooling!r}.")
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.pooling = pooling
        self.build((None, sequence_length))

    @classmethod
    def from_variant(cls, variant, *, vocabulary_size=32_000, sequence_length=64, **kwargs):
        """An encoder of a named size; the head maps to the tower's width by default."""
        config = variant_config(variant)
        kwargs.setdefault("output_dim", config["width"])
        return cls(vocabulary_size=vocabulary_size, sequence_length=sequence_length, **config, **kwargs)

    def build(self, input_shape):
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size,
            self.width,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1 / math.sqrt(self.width)),
            dtype=self.dtype_policy,
            name="token_embedding",
        )
        self.token_embedding.build(input_shape)
        self.position_embedding = self.add_weight(
            shape=(1, self.sequence_length, self.width),
            initializer=keras.initializers.RandomNormal(stddev=1 / math.sqrt(self.width)),
            name="position_embedding",
        )
        token_shape = (None, self.sequence_length, self.width)
        self._build_blocks_and_head(token_shape, (None, self.width), {"last": -1, "first": 0}.get(self.pooling))

    def validate_inputs(self, token_ids):
        """Checks the rank, length and dtype of token ids; raises `ValueError` naming the problem.

        Their values are checked where batches enter `SigLIP.fit` / `evaluate` /
        `predict` (`keras_siglip.models.siglip.input_checks`), not here: reading
        them in the forward pass would copy them from the accelerator every step.
        """
        shape = tuple(token_ids.shape)
        if len(shape) != 2:
            raise ValueError(
                f"{self.name} expects token ids of shape (batch, length); got rank {len(shape)} "
                f"with shape {shape}."
            )
        if shape[1] is not None and shape[1] > self.sequence_length:
            raise ValueError(
                f"{self.name} takes at most {self.sequence_length} tokens; got token ids of "
                f"shape {shape}."
            )
        dtype = keras.backend.standardize_dtype(token_ids.dtype)
        if "int" not in dtype:
            raise ValueError(f"{self.name} expects integer token ids; got dtype {dtype}.")
        return token_ids

    def call(self, token_ids, training=None):
        token_ids = self.validate_inputs(token_ids)
        length = ops.shape(token_ids)[1]
        tokens = self.token_embedding(token_ids)
        tokens = tokens + ops.cast(self.position_embedding[:, :length], tokens.dtype)
        tokens = self._encode(tokens)  # (B, 1, width) when one token is pooled
        return self._project(ops.mean(tokens, axis=1) if self.pooling == "gap" else tokens[:, 0])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "pooling": self.pooling,
            }
        )
        return config
