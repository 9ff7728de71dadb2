"""A NaFlex SigLIP (mixed image sizes in one batch) under keras.distribution: data parallel on 8 CPU devices."""

import contextlib

import keras
import numpy as np
import pytest

from keras_siglip import SigLIP, distribution
from keras_siglip.models.siglip.naflex_image_encoder import NaFlexImageEncoder
from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor
from keras_siglip.models.siglip.towers import TextEncoder

pytestmark = pytest.mark.multi_device

BATCH, VOCABULARY, LENGTH = 16, 64, 8


def naflex_siglip():
    image = NaFlexImageEncoder.from_variant("tiny", patch_size=4, position_grid_size=4)
    text = TextEncoder.from_variant("tiny", vocabulary_size=VOCABULARY, sequence_length=LENGTH)
    return SigLIP(image, text)


def mixed_batch(seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 40, (2 * BATCH, 2))
    images = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in sizes]
    return {**NaFlexImagePreprocessor(patch_size=4, max_num_patches=24)(images),
            "token_ids": rng.integers(0, VOCABULARY, (2 * BATCH, LENGTH)).astype("int32")}


def fit(strategy, initial, data):
    losses = []
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = naflex_siglip()
        for variable in model.weights:
            variable.assign(initial[variable.path])
        model.compile(learning_rate=1e-3)
        callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(logs["loss"]))
        model.fit(data, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[callback])
    return losses, {v.path: np.asarray(v.value) for v in model.weights}, model


def test_data_parallel_naflex_fit_matches_one_device():
    keras.utils.set_random_seed(3)
    initial = {v.path: np.asarray(v.value) for v in naflex_siglip().weights}
    data = mixed_batch()
    assert len({tuple(s) for s in data["spatial_shapes"]}) > 4  # many aspect ratios in each batch
    expected_losses, expected_weights, _ = fit(None, initial, data)
    losses, weights, model = fit(distribution.data_parallel(), initial, data)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
    for path, expected in expected_weights.items():
        if path.endswith("attention/key/bias"):  # no gradient at all: AdamW moves float noise by +-lr
            assert np.abs(weights[path]).max() <= 2 * 1e-3 * 1.01, path
            continue
        np.testing.assert_allclose(weights[path], expected, rtol=1e-3, atol=1e-5, err_msg=path)
    for variable in model.weights:
        assert variable.value.sharding.is_fully_replicated, variable.path
