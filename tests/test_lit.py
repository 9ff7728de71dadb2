"""LiT / SigLiT: a locked image tower, precomputed image embeddings, the unlocked 0.1x variant."""

import keras
import numpy as np
import pytest
from conftest import random_pairs, tiny_siglip


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def snapshot(variables):
    return {v.path: to_numpy(v).copy() for v in variables}


def test_locked_image_tower_stays_bit_identical_while_the_text_tower_trains():
    model = tiny_siglip(lock_image_tower=True)
    model.compile(learning_rate=1e-2)
    image_before = snapshot(model.image_encoder.weights)
    text_before = snapshot(model.text_encoder.weights)
    scalars_before = snapshot([model.log_temperature, model.bias])
    model.fit(random_pairs(16), batch_size=8, epochs=2, verbose=0)
    for path, value in snapshot(model.image_encoder.weights).items():
        np.testing.assert_array_equal(value, image_before[path], err_msg=path)
    for path, value in snapshot(model.text_encoder.weights).items():
        assert not np.array_equal(value, text_before[path]), f"{path} did not train"
    for path, value in snapshot([model.log_temperature, model.bias]).items():
        assert not np.array_equal(value, scalars_before[path]), f"{path} did not train"
    # No optimizer slots for the frozen tower.
    image_paths = {v.path for v in model.image_encoder.weights}
    assert not model.image_encoder.trainable_variables
    assert len(model.optimizer.variables) < 2 + 2 * len(model.trainable_variables) + 2 * len(image_paths)


def test_loss_is_the_same_from_cached_embeddings_and_from_the_tower():
    model = tiny_siglip(lock_image_tower=True)
    model.compile()
    data = random_pairs(8)
    cached = {
        "image_embeddings": to_numpy(model.image_encoder(data["images"])),
        "token_ids": data["token_ids"],
    }
    from_tower = model.evaluate(data, batch_size=8, verbose=0)
    from_cache = model.evaluate(cached, batch_size=8, verbose=0)
    np.testing.assert_allclose(from_cache, from_tower, rtol=1e-6)
    # And fit trains from the cache alone.
    history = model.fit(cached, batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_cached_embeddings_of_the_wrong_width_are_rejected():
    model = tiny_siglip(lock_image_tower=True)
    bad = {"image_embeddings": np.zeros((4, 16), "float32"), "token_ids": random_pairs(4)["token_ids"]}
    with pytest.raises(ValueError, match=r"image_embeddings must have shape \(batch, 32\)"):
        model(bad)
    unlocked = tiny_siglip()
    with pytest.raises(ValueError, match="expects a dict with keys 'images' and 'token_ids'"):
        unlocked({"image_embeddings": np.zeros((4, 32), "float32"), "token_ids": bad["token_ids"]})


def test_unlocked_variant_trains_the_image_tower_at_a_tenth_of_the_rate_without_decay():
    multiplied = tiny_siglip()
    multiplied.compile(weight_decay=0.0, image_tower_learning_rate_multiplier=0.1)
    reference = tiny_siglip()
    reference.set_weights(multiplied.get_weights())
    reference.compile(weight_decay=0.0)
    before = snapshot(multiplied.weights)
    data = random_pairs(8)
    multiplied.train_on_batch(data)
    reference.train_on_batch(data)
    for ours, theirs in zip(multiplied.weights, reference.weights):
        step, reference_step = to_numpy(ours) - before[ours.path], to_numpy(theirs) - before[ours.path]
        factor = 0.1 if ours.path.startswith("image_encoder/") else 1.0
        # atol: a few float32 ulps of weights ~0.1 (7e-9 each), far below the ~1e-4 steps compared.
        np.testing.assert_allclose(step, factor * reference_step, rtol=1e-3, atol=5e-8, err_msg=ours.path)
    decayed = tiny_siglip()
    decayed.compile(image_tower_learning_rate_multiplier=0.1)
    decayed.optimizer.build(decayed.trainable_variables)  # newer Keras asks which variables decay only once built
    for variable in decayed.trainable_variables:
        uses_decay = decayed.optimizer._use_weight_decay(variable)
        expected = variable.name == "kernel" and not variable.path.startswith("image_encoder/")
        assert uses_decay == expected, variable.path


def test_locked_model_saves_and_loads(tmp_path):
    model = tiny_siglip(lock_image_tower=True)
    model.compile(image_tower_learning_rate_multiplier=None)
    path = str(tmp_path / "lit.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.lock_image_tower and not loaded.image_encoder.trainable_variables


def test_unlocked_variant_survives_save_and_load(tmp_path):
    model = tiny_siglip()
    model.compile(image_tower_learning_rate_multiplier=0.1)
    model.train_on_batch(random_pairs(4))
    path = str(tmp_path / "unlocked.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    image_kernel = loaded.image_encoder.blocks[0].attention.query.kernel
    assert loaded.optimizer.learning_rate_multiplier(image_kernel) == 0.1
    assert not loaded.optimizer._use_weight_decay(image_kernel)
