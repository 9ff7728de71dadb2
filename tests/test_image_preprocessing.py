"""SigLIPImagePreprocessor: decoding, resizing, scaling and augmentation."""

import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siglip import SigLIPImagePreprocessor


def bilinear_resize(image, out_h, out_w):
    """Bilinear resize with half-pixel centres and no antialias, written out in NumPy."""

    def axis_weights(in_size, out_size):
        centres = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        floor = np.floor(centres)
        lower = np.clip(floor, 0, in_size - 1).astype(int)
        upper = np.clip(np.ceil(centres), 0, in_size - 1).astype(int)
        return lower, upper, centres - floor

    image = image.astype(np.float64)
    top, bottom, dy = axis_weights(image.shape[0], out_h)
    left, right, dx = axis_weights(image.shape[1], out_w)
    rows = image[top] * (1 - dy)[:, None, None] + image[bottom] * dy[:, None, None]
    return rows[:, left] * (1 - dx)[None, :, None] + rows[:, right] * dx[None, :, None]


def smooth_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(3 * x + y) % 256, (2 * y) % 256, (x * y) % 256], axis=-1)
    return np.clip(image + rng.integers(-8, 8, image.shape), 0, 255).astype("uint8")


def as_numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_resize_and_scale_match_reference():
    images = np.stack([smooth_image(37, 53, seed) for seed in range(2)])
    preprocessor = SigLIPImagePreprocessor(image_size=(24, 20))
    out = as_numpy(preprocessor(images))
    assert out.shape == (2, 24, 20, 3) and out.dtype == np.float32
    expected = np.stack([bilinear_resize(image, 24, 20) for image in images]) / 255.0 * 2 - 1
    np.testing.assert_allclose(out, expected, atol=2e-5)
    # Upsampling too, and the [0, 255] -> [-1, 1] end points.
    up = as_numpy(SigLIPImagePreprocessor(image_size=48)(images[0]))
    np.testing.assert_allclose(up, bilinear_resize(images[0], 48, 48) / 255.0 * 2 - 1, atol=2e-5)
    # At the model resolution the resize is skipped; that is exactly what resizing does at scale 1.
    same = as_numpy(SigLIPImagePreprocessor(image_size=(37, 53))(images))
    np.testing.assert_allclose(same, images / 255.0 * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(
        same, tf.image.resize(images, (37, 53)).numpy() / 255.0 * 2 - 1, atol=1e-6
    )
    extremes = np.zeros((4, 4, 3), "uint8")
    extremes[2:] = 255
    scaled = as_numpy(SigLIPImagePreprocessor(image_size=4)(extremes))
    assert scaled.min() == -1.0 and scaled.max() == 1.0
    # Floats in [0, 255] and grayscale give the same result as uint8 RGB.
    np.testing.assert_allclose(as_numpy(preprocessor(images.astype("float32"))), out, atol=1e-6)
    gray = images[..., :1]
    np.testing.assert_allclose(
        as_numpy(preprocessor(gray)), as_numpy(preprocessor(np.repeat(gray, 3, axis=-1))), atol=1e-6
    )


def test_antialias_option():
    image = smooth_image(64, 64)
    plain = as_numpy(SigLIPImagePreprocessor(image_size=16)(image))
    smooth = as_numpy(SigLIPImagePreprocessor(image_size=16, antialias=True)(image))
    expected = tf.image.resize(image, (16, 16), antialias=True).numpy() / 255.0 * 2 - 1
    np.testing.assert_allclose(smooth, expected, atol=1e-5)
    assert np.abs(plain - smooth).max() > 0.05


def test_decodes_png_and_jpeg_like_pil():
    from PIL import Image

    image = smooth_image(30, 40)
    preprocessor = SigLIPImagePreprocessor(image_size=16)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    Image.fromarray(image).save(jpeg, format="JPEG", quality=95)
    np.testing.assert_allclose(as_numpy(preprocessor(png.getvalue())), as_numpy(preprocessor(image)), atol=1e-6)
    # JPEG: the default decodes like big_vision's tf.io.decode_image; the accurate
    # IDCT gives PIL's pixels (what transformers' image processor reads) exactly.
    pil_jpeg = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB"))
    tf_jpeg = tf.io.decode_image(jpeg.getvalue(), channels=3).numpy()
    np.testing.assert_allclose(as_numpy(preprocessor(jpeg.getvalue())), as_numpy(preprocessor(tf_jpeg)), atol=1e-6)
    accurate = SigLIPImagePreprocessor(image_size=16, jpeg_dct_method="INTEGER_ACCURATE")
    np.testing.assert_allclose(as_numpy(accurate(jpeg.getvalue())), as_numpy(accurate(pil_jpeg)), atol=1e-6)
    np.testing.assert_allclose(as_numpy(accurate(png.getvalue())), as_numpy(accurate(image)), atol=1e-6)
    batch = as_numpy(preprocessor([png.getvalue(), jpeg.getvalue()]))
    assert batch.shape == (2, 16, 16, 3)
    # The tf.data path (what the readers run) equals the eager call.
    dataset = tf.data.Dataset.from_tensors(png.getvalue()).map(preprocessor.preprocess_encoded)
    np.testing.assert_allclose(next(iter(dataset)).numpy(), batch[0], atol=1e-6)


def test_augmentation():
    image = smooth_image(40, 40)
    flip = SigLIPImagePreprocessor(image_size=40, horizontal_flip=True, seed=3)
    plain = as_numpy(flip(image))
    np.testing.assert_array_equal(as_numpy(flip(image, training=False)), plain)
    outs = as_numpy(flip(np.stack([image] * 16), training=True))
    mirrored = [np.array_equal(out, plain[:, ::-1]) for out in outs]
    unchanged = [np.array_equal(out, plain) for out in outs]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)

    crop = SigLIPImagePreprocessor(image_size=20, random_resized_crop=True, crop_area_range=(0.1, 0.3), seed=0)
    crops = as_numpy(crop(np.stack([image] * 4), training=True))
    assert crops.shape == (4, 20, 20, 3) and crops.min() >= -1 and crops.max() <= 1
    assert not np.allclose(crops[0], as_numpy(crop(image)))
    assert not np.allclose(crops[0], crops[1])
    # Same seed, same crops; per-example seeds from a reader are honoured.
    again = SigLIPImagePreprocessor(image_size=20, random_resized_crop=True, crop_area_range=(0.1, 0.3), seed=0)
    np.testing.assert_array_equal(as_numpy(again(np.stack([image] * 4), training=True)), crops)
    seed = tf.constant([7, 11], tf.int64)
    a = crop.preprocess_image(tf.constant(image), training=True, seed=seed)
    b = crop.preprocess_image(tf.constant(image), training=True, seed=seed)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A crop covering the whole image is the plain resize.
    whole = SigLIPImagePreprocessor(image_size=20, random_resized_crop=True, crop_area_range=(1.0, 1.0), seed=0)
    np.testing.assert_allclose(as_numpy(whole(image, training=True)), as_numpy(whole(image)), atol=1e-6)


def test_decode_and_augment_decodes_the_same_crop_of_a_jpeg():
    preprocessor = SigLIPImagePreprocessor(image_size=20, random_resized_crop=True, horizontal_flip=True)
    image = smooth_image(57, 83)
    for seed in range(8):
        seed = tf.constant([seed, 5], tf.int64)
        for encoded, exact in ((tf.io.encode_png(image), True),
                               (tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False), True),
                               (tf.io.encode_jpeg(image, quality=95), False)):
            expected = preprocessor.augment(preprocessor.decode(encoded), seed).numpy()
            window = preprocessor.decode_and_augment(encoded, seed).numpy()
            assert window.shape == expected.shape
            if exact:  # PNG and 4:4:4 JPEG: the very same pixels
                np.testing.assert_array_equal(window, expected)
            else:  # 4:2:0 JPEG: libjpeg's chroma upsampling at the window's edges
                assert np.abs(window.astype(int) - expected.astype(int)).mean() < 0.5


def test_bad_inputs():
    with pytest.raises(ValueError, match="image_size"):
        SigLIPImagePreprocessor(image_size=0)
    with pytest.raises(ValueError, match="jpeg_dct_method"):
        SigLIPImagePreprocessor(jpeg_dct_method="FLOAT")
    with pytest.raises(ValueError, match="crop_area_range"):
        SigLIPImagePreprocessor(crop_area_range=(0.5, 0.2))
    preprocessor = SigLIPImagePreprocessor(image_size=8)
    with pytest.raises(ValueError, match="got shape"):
        preprocessor(np.zeros((2, 8, 8, 4), "uint8"))
    with pytest.raises(ValueError, match="got shape"):
        preprocessor(np.zeros((8, 8), "uint8"))
    with pytest.raises(Exception):  # not an image: TensorFlow's decoder refuses it
        preprocessor(b"not an image")


def test_config_and_preset_round_trip(tmp_path):
    preprocessor = SigLIPImagePreprocessor(
        image_size=(24, 32), antialias=True, random_resized_crop=True, crop_area_range=(0.3, 1.0),
        horizontal_flip=True, seed=5, jpeg_dct_method="INTEGER_ACCURATE",
    )
    restored = SigLIPImagePreprocessor.from_config(preprocessor.get_config())
    assert restored.get_config() == preprocessor.get_config()
    preprocessor.save_to_preset(str(tmp_path))
    assert (tmp_path / "image_converter.json").exists()
    with open(tmp_path / "config.json", "w") as file:
        json.dump({"module": "keras_siglip.models.siglip.siglip_model", "class_name": "SigLIP", "config": {},
                   "registered_name": "keras_siglip>SigLIP"}, file)
    loaded = SigLIPImagePreprocessor.from_preset(str(tmp_path))
    assert isinstance(loaded, SigLIPImagePreprocessor)
    assert loaded.get_config() == preprocessor.get_config()
    image = smooth_image(50, 40)
    np.testing.assert_allclose(as_numpy(loaded(image)), as_numpy(preprocessor(image)), atol=1e-6)
