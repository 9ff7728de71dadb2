"""A NaFlex SigLIP (mixed image sizes in one batch) under keras.distribution on 8 CPU devices.

Data parallel and model parallel training must follow one device step for step,
and under model parallel every weight must sit where the layout map says.
"""

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


@pytest.fixture(scope="module")
def reference():
    """Initial weights, a mixed-size batch, and the one-device run each distributed run must reproduce."""
    keras.utils.set_random_seed(3)
    initial = {v.path: np.asarray(v.value) for v in naflex_siglip().weights}
    data = mixed_batch()
    assert len({tuple(s) for s in data["spatial_shapes"]}) > 4  # many aspect ratios in each batch
    expected_losses, expected_weights, _ = fit(None, initial, data)
    return initial, data, expected_losses, expected_weights


def assert_matches_reference(reference, losses, weights):
    _, _, expected_losses, expected_weights = reference
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-4)
    for path, expected in expected_weights.items():
        if path.endswith("attention/key/bias"):  # no gradient at all: AdamW moves float noise by +-lr
            assert np.abs(weights[path]).max() <= 2 * 1e-3 * 1.01, path
            continue
        np.testing.assert_allclose(weights[path], expected, rtol=1e-3, atol=1e-5, err_msg=path)


def test_data_parallel_naflex_fit_matches_one_device(reference):
    losses, weights, model = fit(distribution.data_parallel(), reference[0], reference[1])
    assert_matches_reference(reference, losses, weights)
    for variable in model.weights:
        assert variable.value.sharding.is_fully_replicated, variable.path


def test_model_parallel_naflex_fit_matches_one_device(reference):
    strategy = distribution.model_parallel((2, 4))
    losses, weights, model = fit(strategy, reference[0], reference[1])
    assert_matches_reference(reference, losses, weights)
    layout_map = SigLIP.get_layout_map(strategy.device_mesh)
    specs = {}
    for variable in model.weights:
        layout = layout_map[variable.path]  # Keras raises if two rules matched
        expected = tuple(layout.axes) if layout is not None else (None,) * len(variable.shape)
        spec = tuple(variable.value.sharding.spec)
        specs[variable.path] = spec + (None,) * (len(expected) - len(spec))
        assert specs[variable.path] == expected, variable.path
    # The NaFlex patch Dense (patch_dim, width) and position grid (grid, grid, width) split width on "model".
    assert specs["image_encoder/patch_embedding/patch_dense/kernel"] == (None, "model")
    assert specs["image_encoder/patch_embedding/position_embedding"] == (None, None, "model")
    assert specs["image_encoder/block_0/attention/query/kernel"] == ("batch", "model")
