"""`KerasHubImageEncoder`: a keras-hub vision backbone (ViT, DINOv2...) as SigLIP's image tower.

This is how LiT / SigLiT start from a tower pretrained elsewhere: the backbone's
token sequence is pooled ("first" token, "gap" or a new "map" head) and
optionally projected to the text tower's width.
"""

import keras
from keras import ops

from keras_siglip.extras import require
from keras_siglip.models.siglip.towers import validate_images
from keras_siglip.models.siglip.layers import MAPPooling

keras_hub = require("keras_hub", purpose="KerasHubImageEncoder")

POOLINGS = ("first", "gap", "map")

# Per-channel statistics on [0, 1] pixels that keras-hub's converters normalise
# with (see its tools/checkpoint_conversion scripts): DINOv2/v3 use ImageNet's,
# the ViT presets (from google/vit-*) use mean = std = 0.5, i.e. [-1, 1] pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET_BACKBONES = ("DINOV2Backbone", "DINOV3Backbone")


def scale_and_offset_from_mean_std(mean, std):
    """`(input_scale, input_offset)` mapping our [-1, 1] images to `(x01 - mean) / std`.

    `x01 = (x + 1) / 2` undoes our scaling; `mean` and `std` are per-channel
    statistics of [0, 1] pixels, as in the backbone's original preprocessing.

    Example:
    >>> scale, offset = scale_and_offset_from_mean_std((0.5,) * 3, (0.5,) * 3)
    >>> scale, offset
    ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need one value per channel, std > 0; got {mean}, {std}.")
    scale = [0.5 / s for s in std]
    offset = [(0.5 - m) / s for m, s in zip(mean, std)]
    return scale, offset


def _default_scale_and_offset(backbone):
    if type(backbone).__name__ in _IMAGENET_BACKBONES:
        return scale_and_offset_from_mean_std(IMAGENET_MEAN, IMAGENET_STD)
    return scale_and_offset_from_mean_std((0.5,) * 3, (0.5,) * 3)


def _as_channel_list(value, name):
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"{name} must be a float or 3 per-channel floats; got {value!r}.")
    return values


def _load_backbone(backbone):
    if isinstance(backbone, str):
        backbone = keras_hub.models.Backbone.from_preset(backbone)
    if not isinstance(backbone, keras_hub.models.Backbone):
        raise ValueError(
            "KerasHubImageEncoder needs a keras_hub.models.Backbone or a preset handle; "
            f"got {type(backbone).__name__}."
        )
    image_shape = getattr(backbone, "image_shape", None)
    inputs = backbone.input
    single_input = not isinstance(inputs, dict) or len(inputs) == 1
    outputs = backbone.output
    if image_shape is None or len(image_shape) != 3 or not single_input or isinstance(outputs, dict):
        raise ValueError(
            f"{type(backbone).__name__} is not a vision backbone: KerasHubImageEncoder needs one "
            "image input (an `image_shape` of (height, width, channels)) and one output."
        )
    if len(outputs.shape) != 3:
        raise ValueError(
            f"{type(backbone).__name__} outputs shape {tuple(outputs.shape)}; KerasHubImageEncoder "
            "needs a ViT-style backbone returning tokens (batch, tokens, width)."
        )
    return backbone


@keras.saving.register_keras_serializable(package="keras_siglip")
class KerasHubImageEncoder(keras.layers.Layer):
    """A keras-hub vision backbone, pooled and projected: an image tower for `SigLIP`.

    images in [-1, 1] -> `images * input_scale + input_offset` -> backbone
    tokens -> pooling -> optional Dense projection to `output_dim`.

    Pooling: `"first"` takes the class token (the backbone needs one); `"gap"`
    averages the patch tokens (class and register tokens excluded); `"map"`
    adds a new, trainable `keras_siglip.models.siglip.layers.MAPPooling` head over the patch
    tokens.

    Freezing: `SigLIP(..., lock_image_tower=True)` freezes this whole layer,
    so a MAP head or projection added here stays at its initialisation (fine
    for LiT with `pooling="first"`/`"gap"` and no projection, the cacheable
    setup). To train a new head on a frozen backbone, pass
    `freeze_backbone=True` and leave `lock_image_tower=False`: the backbone is
    then not trainable and always runs in inference mode, while the head trains
    (its embeddings cannot be cached, as the head changes).

    Args:
        backbone: a `keras_hub.models.Backbone` returning tokens `(batch,
            tokens, width)` (ViT, DINOv2, DINOv3...), or a preset handle for
            `keras_hub.models.Backbone.from_preset` (e.g.
            `"dinov2_base"`, `"kaggle://..."`, `"hf://..."`, a local directory).
        pooling: `"first"`, `"gap"` or `"map"`.
        output_dim: int or None. Width of a Dense projection after pooling (the
            text tower's width); None for none.
        input_scale: float, 3 floats or None. Multiplies our [-1, 1] images
            before the backbone. None picks the backbone's own preprocessing:
            ImageNet mean/std on [0, 1] pixels for `DINOV2Backbone` and
            `DINOV3Backbone` (as keras-hub's DINO image converters), [-1, 1]
            (the identity) otherwise (keras-hub's ViT presets). See
            `scale_and_offset_from_mean_std` for other statistics.
        input_offset: float, 3 floats or None. Added after `input_scale`; None
            picks the default as for `input_scale` (both or neither).
        freeze_backbone: bool. Freeze only the backbone (see above).
        map_num_heads: int or None. Heads of the MAP head; None for the
            backbone's `num_heads`.
        map_mlp_dim: int or None. MLP width of the MAP head; None for 4x the
            token width.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`).

    Example:
    >>> import keras_hub, numpy as np
    >>> backbone = keras_hub.models.ViTBackbone(
    ...     image_shape=(16, 16, 3), patch_size=4, num_layers=1, num_heads=2,
    ...     hidden_dim=8, mlp_dim=16)
    >>> encoder = KerasHubImageEncoder(backbone, pooling="gap", output_dim=12)
    >>> tuple(encoder(np.zeros((2, 16, 16, 3), "float32")).shape)
    (2, 12)
    """

    def __init__(
        self,
        backbone,
        pooling="first",
        output_dim=None,
        input_scale=None,
        input_offset=None,
        freeze_backbone=False,
        map_num_heads=None,
        map_mlp_dim=None,
        **kwargs,
    ):
        kwargs.setdefault("name", "image_encoder")
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if (input_scale is None) != (input_offset is None):
            raise ValueError("Give both input_scale and input_offset, or neither (the backbone's default).")
        if output_dim is not None and (not isinstance(output_dim, int) or output_dim <= 0):
            raise ValueError(f"output_dim must be a positive int or None, got {output_dim!r}.")
        self.backbone = _load_backbone(backbone)
        if input_scale is None:
            input_scale, input_offset = _default_scale_and_offset(self.backbone)
        self.input_scale = _as_channel_list(input_scale, "input_scale")
        self.input_offset = _as_channel_list(input_offset, "input_offset")
        self.pooling = pooling
        self.output_dim = output_dim
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.backbone.trainable = False

        self.channels_first = getattr(self.backbone, "data_format", None) == "channels_first"
        shape = tuple(self.backbone.image_shape)
        self.image_size = shape[1:] if self.channels_first else shape[:2]
        self.image_size = tuple(int(s) for s in self.image_size)
        self.width = int(self.backbone.output.shape[-1])
        self.num_prefix_tokens = self._count_prefix_tokens()
        if pooling == "first" and self.num_prefix_tokens == 0:
            raise ValueError(
                f"pooling='first' needs a class token, but {type(self.backbone).__name__} has none; "
                "use 'gap' or 'map'."
            )
        self.map_num_heads = map_num_heads or getattr(self.backbone, "num_heads", None)
        self.map_mlp_dim = map_mlp_dim or 4 * self.width
        if pooling == "map" and not self.map_num_heads:
            raise ValueError("pooling='map' needs map_num_heads (the backbone has no num_heads).")
        self.build((None, *self.image_size, 3))

    def _count_prefix_tokens(self):
        """Class and register tokens: all tokens but one per patch."""
        num_tokens = self.backbone.output.shape[1]
        patch_size = getattr(self.backbone, "patch_size", None)
        if num_tokens is None or patch_size is None:
            raise ValueError(
                f"{type(self.backbone).__name__} has no fixed token count or patch_size; "
                "KerasHubImageEncoder needs a ViT-style backbone."
            )
        patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
        num_patches = (self.image_size[0] // patch_h) * (self.image_size[1] // patch_w)
        if num_tokens < num_patches:
            raise ValueError(
                f"{type(self.backbone).__name__} returns {num_tokens} tokens for {num_patches} patches."
            )
        return int(num_tokens - num_patches)

    @property
    def embedding_dim(self):
        """Width of what the tower returns."""
        return self.output_dim or self.width

    def build(self, input_shape):
        self.map_pooling = None
        if self.pooling == "map":
            self.map_pooling = MAPPooling(
                self.map_num_heads, self.map_mlp_dim, dtype=self.dtype_policy, name="map_pooling"
            )
            self.map_pooling.build((None, None, self.width))
        self.head = None
        if self.output_dim:
            self.head = keras.layers.Dense(
                self.output_dim, kernel_initializer="lecun_normal", dtype=self.dtype_policy, name="head"
            )
            self.head.build((None, self.width))
        self.built = True

    def validate_inputs(self, images):
        """Checks the shape of an image batch; raises `ValueError` naming the problem."""
        return validate_images(images, self.image_size, self.name)

    def backbone_tokens(self, images, training=None):
        """The backbone's tokens `(batch, tokens, width)` for our [-1, 1] images."""
        images = ops.cast(self.validate_inputs(images), "float32")
        images = images * ops.array(self.input_scale, "float32") + ops.array(self.input_offset, "float32")
        if self.channels_first:
            images = ops.transpose(images, (0, 3, 1, 2))
        if self.freeze_backbone:
            training = False  # a frozen backbone always runs in inference mode
        inputs = self.backbone.input
        if isinstance(inputs, dict):
            images = {next(iter(inputs)): images}
        return self.backbone(images, training=training)

    def call(self, images, training=None):
        tokens = self.backbone_tokens(images, training=training)
        if self.pooling == "first":
            pooled = tokens[:, 0]
        else:
            patches = tokens[:, self.num_prefix_tokens :]
            pooled = ops.mean(patches, axis=1) if self.pooling == "gap" else self.map_pooling(patches)
        return pooled if self.head is None else self.head(pooled)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "pooling": self.pooling,
                "output_dim": self.output_dim,
                "input_scale": self.input_scale,
                "input_offset": self.input_offset,
                "freeze_backbone": self.freeze_backbone,
                "map_num_heads": self.map_num_heads,
                "map_mlp_dim": self.map_mlp_dim,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
