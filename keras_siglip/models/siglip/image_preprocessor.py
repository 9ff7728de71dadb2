"""`SigLIPImagePreprocessor`: image files or pixels to the model's [-1, 1] input."""

import keras

from keras_siglip.extras import require

# The model and losses work without these; preprocessing does not (ImportError naming the extra).
tf, keras_hub = require("tensorflow", "keras_hub", purpose="SigLIPImagePreprocessor")

from keras_siglip.models.siglip.siglip_model import SigLIP  # noqa: E402
from keras_siglip.models.siglip.tf_preprocessing import preprocessing_function  # noqa: E402

ImageConverter = keras_hub.layers.ImageConverter


def _as_size(image_size):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"`image_size` must be a positive int or (height, width); got {image_size!r}.")
    return size


def _as_range(value, name, low, high):
    value = tuple(float(v) for v in value)
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"`{name}` must be (min, max) with {low} <= min <= max <= {high}; got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPImagePreprocessor(ImageConverter):
    """Decodes, optionally augments, resizes and scales images for SigLIP.

    Evaluation follows big_vision (`decode|resize(S)|value_range(-1, 1)`) and
    transformers' `SiglipImageProcessor`: the whole image is resized to the
    model resolution (no crop, so the aspect ratio is not kept) with bilinear
    interpolation, then `[0, 255]` is mapped to `[-1, 1]`. With
    `training=True` an Inception-style random resized crop and a horizontal
    flip can come first. All the work is TensorFlow ops, so the same code runs
    eagerly (outputs are tensors of the active Keras backend) and inside
    `tf.data` (the readers in `keras_siglip.data` call `decode` or
    `decode_and_augment`, then `resize_to_uint8` per image and `scale_pixels` per batch).

    Accepts uint8 or float pixels in `[0, 255]`, shaped `(H, W, 3)` or
    `(B, H, W, 3)` (grayscale `(..., 1)` is repeated to RGB), or encoded
    JPEG/PNG/GIF/BMP bytes (a scalar or a 1-D batch). Returns float32
    `(S, S, 3)` / `(B, S, S, 3)` in `[-1, 1]`. Saved and loaded with presets
    as keras-hub's `image_converter.json`.

    Args:
        image_size: int or `(height, width)`. The model resolution.
        antialias: bool. Antialias when downsampling (big_vision does not).
        interpolation: `"bilinear"` (SigLIP), `"bicubic"`, `"nearest"`, ...:
            any `tf.image.resize` method.
        random_resized_crop: bool. In training, crop a random box first
            (big_vision's `inception_crop`).
        crop_area_range: `(min, max)` fraction of the image area the random
            crop covers.
        crop_aspect_ratio_range: `(min, max)` width/height of the random crop.
        horizontal_flip: bool. In training, flip left-right with probability
            1/2.
        seed: int or `None`. Seeds the augmentation of eager calls; the readers
            pass their own per-example seeds.
        jpeg_dct_method: `""` decodes JPEGs like `tf.io.decode_image` (what
            big_vision does; libjpeg's fast integer IDCT); `"INTEGER_ACCURATE"`
            gives the exact pixels of PIL (what transformers uses), a little
            slower.
        **kwargs: standard layer arguments (`name`).

    Example:
    >>> import numpy as np
    >>> preprocessor = SigLIPImagePreprocessor(image_size=16)
    >>> images = np.random.randint(0, 256, (2, 40, 30, 3), dtype="uint8")
    >>> out = np.asarray(preprocessor(images))
    >>> out.shape, bool(out.min() >= -1.0), bool(out.max() <= 1.0)
    ((2, 16, 16, 3), True, True)
    """

    backbone_cls = SigLIP

    def __init__(
        self,
        image_size=224,
        antialias=False,
        interpolation="bilinear",
        random_resized_crop=False,
        crop_area_range=(0.05, 1.0),
        crop_aspect_ratio_range=(3 / 4, 4 / 3),
        horizontal_flip=False,
        seed=None,
        jpeg_dct_method="",
        **kwargs,
    ):
        size = _as_size(image_size)
        if jpeg_dct_method not in ("", "INTEGER_FAST", "INTEGER_ACCURATE"):
            raise ValueError(
                "`jpeg_dct_method` must be '', 'INTEGER_FAST' or 'INTEGER_ACCURATE'; "
                f"got {jpeg_dct_method!r}."
            )
        for key in ("scale", "offset", "crop_to_aspect_ratio", "pad_to_aspect_ratio", "bounding_box_format"):
            kwargs.pop(key, None)  # fixed by SigLIP; present in keras-hub converter configs
        kwargs.setdefault("name", "siglip_image_preprocessor")
        super().__init__(
            image_size=size,
            interpolation=interpolation,
            antialias=antialias,
            crop_to_aspect_ratio=False,
            **kwargs,
        )
        self.random_resized_crop = bool(random_resized_crop)
        self.crop_area_range = _as_range(crop_area_range, "crop_area_range", 1e-4, 1.0)
        self.crop_aspect_ratio_range = _as_range(crop_aspect_ratio_range, "crop_aspect_ratio_range", 1e-2, 100.0)
        self.horizontal_flip = bool(horizontal_flip)
        self.seed = seed
        self.jpeg_dct_method = jpeg_dct_method
        self._generator = None

    @property
    def augments(self):
        """Whether `training=True` changes anything."""
        return self.random_resized_crop or self.horizontal_flip

    # -- single images, TensorFlow ops (usable in tf.data) -------------------------

    def decode(self, encoded):
        """Encoded JPEG/PNG/GIF/BMP bytes to uint8 `(H, W, 3)`."""
        if not self.jpeg_dct_method:
            return tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return tf.cond(
            tf.io.is_jpeg(encoded),
            lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=self.jpeg_dct_method),
            lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
        )

    def augment(self, image, seed):
        """Random resized crop and flip of one `(H, W, C)` image; `seed` is a shape-(2,) int tensor."""
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if self.random_resized_crop:
            image = self._crop(image, crop_seed)
        return self._flip(image, flip_seed)

    def decode_and_augment(self, encoded, seed):
        """`augment(decode(encoded), seed)`, decoding only the cropped window of a JPEG.

        As big_vision's `decode_jpeg_and_inception_crop`: the crop box comes
        from the JPEG header (the same box as `augment` draws), and libjpeg
        decodes just that window, on average about half the image with the
        default `crop_area_range`. Other formats, and JPEGs without chroma
        subsampling, give exactly `augment(decode(encoded), seed)`; with
        4:2:0 chroma, libjpeg's upsampling at the window's edges can make the
        colour of the edge pixels differ slightly.
        """
        if not self.random_resized_crop:
            return self.augment(self.decode(encoded), seed)
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

        def decode_jpeg_window():
            begin, size = self._crop_box(tf.image.extract_jpeg_shape(encoded), crop_seed)
            window = tf.stack([begin[0], begin[1], size[0], size[1]])
            return tf.image.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=self.jpeg_dct_method)

        image = tf.cond(tf.io.is_jpeg(encoded), decode_jpeg_window, lambda: self._crop(self.decode(encoded), crop_seed))
        return self._flip(image, flip_seed)

    def _crop_box(self, image_shape, seed):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.cast(image_shape, tf.int32),
            bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=self.crop_aspect_ratio_range,
            area_range=self.crop_area_range,
            use_image_if_no_bounding_boxes=True,
        )
        return begin, size

    def _crop(self, image, seed):
        begin, size = self._crop_box(tf.shape(image), seed)
        return tf.slice(image, begin, size)

    def _flip(self, image, seed):
        return tf.image.stateless_random_flip_left_right(image, seed) if self.horizontal_flip else image

    def resize(self, images):
        """Resize `(..., H, W, C)` pixels to the model size: float32, still in [0, 255]."""
        height, width = self.image_size
        shape = tf.shape(images)
        # Data stored at the model resolution (img2dataset's usual set-up) skips
        # the resize: at scale 1 every kernel samples exactly one source pixel.
        resized = tf.cond(
            tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width)),
            lambda: tf.cast(images, tf.float32),
            lambda: tf.image.resize(images, self.image_size, method=self.interpolation, antialias=self.antialias),
        )
        return tf.ensure_shape(resized, images.shape[:-3] + (height, width) + images.shape[-1:])

    def resize_to_uint8(self, image):
        """Like `resize`, but rounded back to uint8 (as PIL, hence transformers, resizes).

        A quarter of the bytes of float32 to move and batch: the readers' fast
        path. Pixels stored at the model resolution pass through untouched;
        resized ones differ from `resize` by at most half a level.
        """
        if image.dtype != tf.uint8:
            raise ValueError(f"resize_to_uint8 takes uint8 pixels; got {image.dtype.name}.")
        height, width = self.image_size
        shape = tf.shape(image)
        resized = tf.cond(
            tf.logical_and(tf.equal(shape[-3], height), tf.equal(shape[-2], width)),
            lambda: image,
            lambda: tf.saturate_cast(tf.round(self.resize(image)), tf.uint8),
        )
        return tf.ensure_shape(resized, image.shape[:-3] + (height, width) + image.shape[-1:])

    def scale_pixels(self, images):
        """Pixels in [0, 255] to [-1, 1], as big_vision's `value_range(-1, 1)`: x / 255 * 2 - 1."""
        return tf.cast(images, tf.float32) / 255.0 * 2.0 - 1.0

    def resize_and_scale(self, images):
        """Resize `(..., H, W, 3)` pixels in [0, 255] to the model size and map them to [-1, 1]."""
        return self.scale_pixels(self.resize(images))

    def resized_image(self, image, training=False, seed=None):
        """One `(H, W, C)` image, augmented if training, resized: float32 `(S, S, 3)` in [0, 255]."""
        image = self._as_rgb(image)
        if training and self.augments:
            image = self.augment(image, self._draw_seeds(1)[0] if seed is None else seed)
        return self.resize(image)

    def preprocess_image(self, image, training=False, seed=None):
        """One `(H, W, 3)` image (pixels in [0, 255]) to float32 `(S, S, 3)` in [-1, 1]."""
        return self.scale_pixels(self.resized_image(image, training=training, seed=seed))

    def preprocess_encoded(self, encoded, training=False, seed=None):
        """Encoded bytes of one image to float32 `(S, S, 3)` in [-1, 1]."""
        return self.preprocess_image(self.decode(encoded), training=training, seed=seed)

    # -- the layer call: batches or single images, eager or traced -----------------

    def call(self, inputs, training=False):
        return self._call_tf_ops(inputs, training=bool(training))

    @preprocessing_function
    def _call_tf_ops(self, inputs, training=False):
        inputs = _to_tf(inputs)
        if inputs.dtype == tf.string:
            if inputs.shape.rank == 0:
                return self.preprocess_encoded(inputs, training, self._draw_seeds(1)[0])
            if inputs.shape.rank != 1:
                raise ValueError(f"Encoded images must be a scalar or a 1-D batch; got shape {inputs.shape}.")
            seeds = self._draw_seeds(tf.shape(inputs)[0])
            return tf.map_fn(
                lambda args: self.preprocess_encoded(args[0], training, args[1]),
                (inputs, seeds),
                fn_output_signature=tf.TensorSpec(self.image_size + (3,), tf.float32),
            )
        if inputs.shape.rank not in (3, 4) or inputs.shape[-1] not in (1, 3):
            raise ValueError(
                "SigLIPImagePreprocessor takes (H, W, 3) or (B, H, W, 3) pixels (or encoded bytes); "
                f"got shape {inputs.shape}."
            )
        if not (inputs.dtype.is_integer or inputs.dtype.is_floating):
            raise ValueError(f"Pixels must be integers or floats in [0, 255]; got {inputs.dtype.name}.")
        inputs = self._as_rgb(tf.cast(inputs, tf.float32))
        if not (training and self.augments):
            return self.resize_and_scale(inputs)
        if inputs.shape.rank == 3:
            return self.resize_and_scale(self.augment(inputs, self._draw_seeds(1)[0]))
        seeds = self._draw_seeds(tf.shape(inputs)[0])
        return tf.map_fn(
            lambda args: self.resize_and_scale(self.augment(args[0], args[1])),
            (inputs, seeds),
            fn_output_signature=tf.TensorSpec(self.image_size + (3,), tf.float32),
        )

    def _as_rgb(self, images):
        if images.shape[-1] == 1:
            images = tf.repeat(images, 3, axis=-1)
        return images

    def _draw_seeds(self, count):
        """`count` shape-(2,) seeds from this layer's generator (seeded by `self.seed`)."""
        if self._generator is None:
            with tf.init_scope():
                self._generator = (
                    tf.random.Generator.from_non_deterministic_state()
                    if self.seed is None
                    else tf.random.Generator.from_seed(self.seed)
                )
        return tf.transpose(self._generator.make_seeds(count))

    def compute_output_spec(self, inputs, training=False):
        batch = tuple(inputs.shape[:-3]) if inputs.shape and len(inputs.shape) >= 3 else tuple(inputs.shape)
        return keras.KerasTensor(batch + tuple(self.image_size) + (3,), dtype="float32")

    def get_config(self):
        config = super(ImageConverter, self).get_config()
        config.update(
            {
                "image_size": self.image_size,
                "antialias": self.antialias,
                "interpolation": self.interpolation,
                "random_resized_crop": self.random_resized_crop,
                "crop_area_range": self.crop_area_range,
                "crop_aspect_ratio_range": self.crop_aspect_ratio_range,
                "horizontal_flip": self.horizontal_flip,
                "seed": self.seed,
                "jpeg_dct_method": self.jpeg_dct_method,
            }
        )
        return config


def _to_tf(inputs):
    if isinstance(inputs, (tf.Tensor, tf.Variable)):
        return tf.convert_to_tensor(inputs)
    if isinstance(inputs, (str, bytes)) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], (str, bytes))):
        return tf.convert_to_tensor(inputs, tf.string)
    if keras.ops.is_tensor(inputs):
        inputs = keras.ops.convert_to_numpy(inputs)
    return tf.convert_to_tensor(inputs)
