"""`NaFlexImagePreprocessor`: images of any sizes to NaFlex patches, on the host."""

import math

import keras
import numpy as np

_PIL_FILTERS = {"bilinear": 2, "bicubic": 3, "nearest": 0}


def size_for_max_num_patches(height, width, patch_size, max_num_patches, tolerance=1e-5):
    """The `(height, width)` an image is resized to: its aspect ratio kept, at most `max_num_patches` patches.

    Both sides are rounded up to multiples of `patch_size` (at least one
    patch); the scale is the largest that fits, found by bisection on
    `[tolerance / 10, 100]` to `tolerance`, as big_vision's
    `resize_to_sequence` and transformers' `Siglip2ImageProcessor` do.

    Example:
    >>> size_for_max_num_patches(100, 200, 16, 256)
    (176, 352)
    """

    def sides(scale):
        return tuple(max(patch_size, math.ceil(side * scale / patch_size) * patch_size) for side in (height, width))

    low, high = tolerance / 10, 100.0
    while high - low >= tolerance:
        middle = (low + high) / 2
        h, w = sides(middle)
        if (h // patch_size) * (w // patch_size) <= max_num_patches:
            low = middle
        else:
            high = middle
    return sides(low)


def _as_images(images):
    """A list of `(H, W, C)` uint8 NumPy arrays from a list of arrays or a batch tensor."""
    if isinstance(images, (list, tuple)):
        images = [np.asarray(keras.ops.convert_to_numpy(image)) for image in images]
    else:
        batch = np.asarray(keras.ops.convert_to_numpy(images))
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4:
            raise ValueError(f"A batch of images must be (B, H, W, 3); got shape {batch.shape}.")
        images = list(batch)
    if not images:
        raise ValueError("NaFlexImagePreprocessor got no images.")
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"Image {i} has shape {image.shape}; expected (H, W, 3) (or (H, W, 1)) pixels.")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"Image {i} has zero size {image.shape}.")
        if image.dtype != np.uint8:
            raise ValueError(f"Image {i} has dtype {image.dtype}; NaFlexImagePreprocessor takes uint8 pixels.")
    return [np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image for image in images]


@keras.saving.register_keras_serializable(package="keras_siglip")
class NaFlexImagePreprocessor:
    """Resizes each image keeping its aspect ratio, cuts it into patches, pads to `max_num_patches`.

    For each image: the largest size whose patch count fits `max_num_patches`
    (`size_for_max_num_patches`), a resize with PIL (bilinear, antialiased),
    pixels mapped to [-1, 1] as `(x / 255 - 0.5) / 0.5`, patches flattened in
    `(row, column, channel)` order, zero padding after the image's `h * w`
    patches. This is transformers' `Siglip2ImageProcessor` on its PIL backend
    (what it uses without torchvision), value for value. Its torchvision
    backend resizes uint8 with torch's antialiased kernel instead, which can
    differ from PIL by one grey level at a few pixels; big_vision resizes in
    float with `tf.image.resize` (no uint8 rounding).

    Runs on the host in NumPy, so its output feeds `fit`, `predict` and
    `SigLIP.encode_images` on every backend.

    Args:
        patch_size: int. The model's patch side.
        max_num_patches: int. Patches per image after padding (256, 576, 784,
            1024 as released); may differ per call.
        interpolation: `"bilinear"` (SigLIP 2), `"bicubic"` or `"nearest"`.

    Call: `preprocessor(images, max_num_patches=None)` with a list of uint8
    `(H, W, 3)` arrays of any sizes, or a `(B, H, W, 3)` batch; returns
    `{"pixel_values": (B, N, 3 * patch_size**2) float32, "pixel_attention_mask":
    (B, N) int32, "spatial_shapes": (B, 2) int32}` NumPy arrays.

    Example:
    >>> import numpy as np
    >>> preprocessor = NaFlexImagePreprocessor(patch_size=16, max_num_patches=64)
    >>> out = preprocessor([np.zeros((30, 90, 3), "uint8"), np.zeros((200, 100, 3), "uint8")])
    >>> out["pixel_values"].shape, out["spatial_shapes"].tolist()
    ((2, 64, 768), [[4, 12], [10, 5]])
    """

    def __init__(self, patch_size=16, max_num_patches=256, interpolation="bilinear"):
        for name, value in (("patch_size", patch_size), ("max_num_patches", max_num_patches)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        if interpolation not in _PIL_FILTERS:
            raise ValueError(f"`interpolation` must be one of {sorted(_PIL_FILTERS)}; got {interpolation!r}.")
        self.patch_size = patch_size
        self.max_num_patches = max_num_patches
        self.interpolation = interpolation

    def patches(self, image, max_num_patches):
        """One uint8 image's `(patches (h*w, 3p^2) float32, (h, w))`."""
        from PIL import Image

        p = self.patch_size
        height, width = size_for_max_num_patches(image.shape[0], image.shape[1], p, max_num_patches)
        resized = np.asarray(Image.fromarray(image).resize((width, height), _PIL_FILTERS[self.interpolation]))
        pixels = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
        pixels = (pixels - np.float32(0.5)) / np.float32(0.5)
        h, w = height // p, width // p
        patches = pixels.reshape(h, p, w, p, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, p * p * 3)
        return patches, (h, w)

    def padded_patches(self, image, max_num_patches=None):
        """One uint8 `(H, W, 3)` image's `(pixel_values (N, 3p^2), pixel_attention_mask (N,), spatial_shapes (2,))`.

        What `__call__` gives for each image of a batch; the readers call it
        per decoded image.
        """
        count = self.max_num_patches if max_num_patches is None else max_num_patches
        patches, shape = self.patches(image, count)
        values = np.zeros((count, 3 * self.patch_size**2), np.float32)
        values[: len(patches)] = patches
        mask = np.zeros((count,), np.int32)
        mask[: len(patches)] = 1
        return values, mask, np.asarray(shape, np.int32)

    def __call__(self, images, max_num_patches=None):
        count = self.max_num_patches if max_num_patches is None else max_num_patches
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"`max_num_patches` must be a positive int; got {count!r}.")
        values, mask, shapes = zip(*(self.padded_patches(image, count) for image in _as_images(images)))
        return {"pixel_values": np.stack(values), "pixel_attention_mask": np.stack(mask),
                "spatial_shapes": np.stack(shapes)}

    def save_to_preset(self, preset_dir):
        """Writes `preprocessor_config.json` (transformers' `Siglip2ImageProcessor` format) to `preset_dir`.

        `keras_siglip.presets.load_preset` reads it back for a NaFlex model.
        """
        import json
        import os

        os.makedirs(preset_dir, exist_ok=True)
        with open(os.path.join(preset_dir, "preprocessor_config.json"), "w") as file:
            json.dump(self.to_transformers_config(), file, indent=2)

    def to_transformers_config(self):
        """This preprocessing as transformers' `Siglip2ImageProcessor` config dict."""
        return {
            "image_processor_type": "Siglip2ImageProcessor",
            "processor_class": "Siglip2Processor",
            "patch_size": self.patch_size,
            "max_num_patches": self.max_num_patches,
            "resample": _PIL_FILTERS[self.interpolation],
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        }

    def get_config(self):
        return {"patch_size": self.patch_size, "max_num_patches": self.max_num_patches,
                "interpolation": self.interpolation}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
