"""`compile(micro_batch_size=m)`: the exact full-batch gradient from m pairs at a time, on every backend."""

import keras
import numpy as np
import pytest

from conftest import random_pairs, tiny_siglip
from keras_siglip import SoftmaxLoss
from keras_siglip.models.siglip import micro_batches

BATCH = 8
# TensorFlow unrolls the micro-batches and XLA takes minutes per step function here: the exactness test
# runs on it for m = 1 and m = B, the other paths on JAX and PyTorch (the same Keras code on every backend).
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
cpu_costly_on_tensorflow = pytest.mark.skipif(ON_TENSORFLOW, reason="minutes of XLA compilation per test on TensorFlow")


def flat_weights(model):
    return np.concatenate([keras.ops.convert_to_numpy(v.value).ravel() for v in model.trainable_variables])


def relative_error(actual, expected):
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def trained_weights(micro_batch_size, steps, data, seed=0, **compile_kwargs):
    """Weights after each of `steps` train_on_batch steps, from the same initial weights."""
    keras.utils.set_random_seed(seed)
    model = tiny_siglip(**compile_kwargs.pop("model_kwargs", {}))
    model.compile(micro_batch_size=micro_batch_size, **compile_kwargs)
    after = []
    for _ in range(steps):
        model.train_on_batch(data)
        after.append(flat_weights(model))
    return after, model


@pytest.fixture(scope="module")
def full_batch_run():
    data = random_pairs(BATCH)
    return data, trained_weights(None, 3, data)[0]


@pytest.mark.parametrize("micro_batch_size", [1, 2, BATCH])
def test_micro_batches_give_the_weights_of_the_full_batch(full_batch_run, micro_batch_size):
    data, expected = full_batch_run
    actual, model = trained_weights(micro_batch_size, 3, data)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3  # one step per global batch
    for step in (0, 2):  # after one and after three steps
        assert relative_error(actual[step], expected[step]) < 1e-5, step
    assert relative_error(expected[2], expected[0]) > 1e-3  # and the weights did move


@cpu_costly_on_tensorflow
def test_each_weight_gets_the_full_batch_gradient():
    # Plain SGD: every weight moves by exactly its gradient, so each one is compared on its own.
    data = random_pairs(BATCH, seed=1)
    sgd = lambda: keras.optimizers.SGD(learning_rate=0.5)  # noqa: E731
    keras.utils.set_random_seed(0)
    full = tiny_siglip()
    full.compile(optimizer=sgd())
    micro = tiny_siglip()
    micro.set_weights(full.get_weights())
    micro.compile(optimizer=sgd(), micro_batch_size=2)
    initial = [keras.ops.convert_to_numpy(v.value) for v in full.trainable_variables]
    full.train_on_batch(data)
    micro.train_on_batch(data)
    for start, a, b in zip(initial, full.trainable_variables, micro.trainable_variables):
        full_step = keras.ops.convert_to_numpy(a.value) - start
        micro_step = keras.ops.convert_to_numpy(b.value) - start
        # Each step is a difference of float32 weights: it carries their rounding (a few ulps of the weight).
        ulps = 4 * np.finfo("float32").eps * max(1.0, float(np.abs(start).max()))
        np.testing.assert_allclose(micro_step, full_step, rtol=1e-4, atol=ulps, err_msg=a.path)


@cpu_costly_on_tensorflow
def test_softmax_loss_with_rematerialised_towers():
    # Rematerialised blocks compute what plain ones do (test_fast_path), so the
    # plain full batch is the reference for micro-batches of remat towers.
    data = random_pairs(BATCH, seed=2)
    expected, _ = trained_weights(None, 2, data, loss=SoftmaxLoss())
    actual, model = trained_weights(4, 2, data, loss=SoftmaxLoss(), model_kwargs={"remat": True})
    assert model.text_encoder.remat and model.image_encoder.remat
    assert relative_error(actual[-1], expected[-1]) < 1e-5


@cpu_costly_on_tensorflow
def test_locked_image_tower_from_images_and_from_cached_embeddings():
    data = random_pairs(BATCH, seed=3)
    expected, model = trained_weights(None, 2, data, model_kwargs={"lock_image_tower": True})
    actual, _ = trained_weights(2, 2, data, model_kwargs={"lock_image_tower": True})
    assert relative_error(actual[-1], expected[-1]) < 1e-5
    cached = {
        "image_embeddings": keras.ops.convert_to_numpy(model.image_encoder(data["images"])),
        "token_ids": data["token_ids"],
    }
    expected, _ = trained_weights(None, 2, cached, model_kwargs={"lock_image_tower": True})
    actual, _ = trained_weights(2, 2, cached, model_kwargs={"lock_image_tower": True})
    assert relative_error(actual[-1], expected[-1]) < 1e-5


@cpu_costly_on_tensorflow
def test_mixed_bfloat16_trains_like_the_full_batch():
    keras.config.set_dtype_policy("mixed_bfloat16")
    data = random_pairs(16, seed=4)
    losses = {}
    for micro_batch_size in (None, 4):
        keras.utils.set_random_seed(0)
        model = tiny_siglip()
        assert model.text_encoder.compute_dtype == "bfloat16"
        model.compile(micro_batch_size=micro_batch_size)
        losses[micro_batch_size] = model.fit(data, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert losses[4][-1] < losses[4][0]
    np.testing.assert_allclose(losses[4], losses[None], rtol=2e-2)  # bfloat16 rounding, not a different objective


@cpu_costly_on_tensorflow
def test_fit_saves_and_loads_with_its_micro_batch_size(tmp_path):
    model = tiny_siglip()
    model.compile(micro_batch_size=4)
    history = model.fit(random_pairs(16), batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    path = str(tmp_path / "micro.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.micro_batch_size == 4
    np.testing.assert_array_equal(flat_weights(loaded), flat_weights(model))
    loaded.fit(random_pairs(8, seed=1), batch_size=8, epochs=1, verbose=0)


def test_bad_micro_batch_sizes_are_named():
    model = tiny_siglip()
    for bad in (0, -2, 2.0, True, "4"):
        with pytest.raises(ValueError, match="micro_batch_size must be a positive int"):
            model.compile(micro_batch_size=bad)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        model.compile(optimizer=keras.optimizers.AdamW(gradient_accumulation_steps=2), micro_batch_size=2)
    model.compile(micro_batch_size=3)
    with pytest.raises(ValueError, match="A batch of 8 pairs does not split into micro-batches of 3"):
        model.train_on_batch(random_pairs(8))
    model.compile(micro_batch_size=16)
    with pytest.raises(ValueError, match="micro_batch_size=16 is larger than the batch of 8 pairs"):
        model.train_on_batch(random_pairs(8))
    # Inference never splits the batch.
    assert model.predict(random_pairs(6), batch_size=6, verbose=0)["text_embeddings"].shape == (6, 32)


def test_towers_with_batch_statistics_are_refused():
    from keras_siglip import SigLIP

    convolutional = keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Conv2D(32, 3), keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(),
    ])
    model = SigLIP(convolutional, tiny_siglip().text_encoder)
    with pytest.raises(ValueError, match="running batch statistics"):
        model.compile(micro_batch_size=2)


def test_split_and_merge_are_inverse_and_strided():
    x = np.arange(24, dtype="float32").reshape(12, 2)
    parts = keras.ops.convert_to_numpy(micro_batches.split(x, 4))
    assert parts.shape == (3, 4, 2)
    np.testing.assert_array_equal(parts[0][:, 0], [0, 6, 12, 18])  # rows 0, 3, 6, 9
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(micro_batches.merge(parts)), x)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="jit_compile=True compiles encoder blocks on PyTorch")
def test_compiled_encoder_blocks_on_pytorch(full_batch_run):
    data, expected = full_batch_run
    keras.utils.set_random_seed(0)
    model = tiny_siglip()
    model.compile(micro_batch_size=2, jit_compile=True)
    assert model.compiles_encoder_blocks
    for _ in range(3):
        model.train_on_batch(data)
    assert relative_error(flat_weights(model), expected[2]) < 1e-5


class _Batches(keras.utils.PyDataset):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def _fit_model(micro_batch_size):
    keras.utils.set_random_seed(0)
    model = tiny_siglip()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), micro_batch_size=micro_batch_size)
    return model


def test_a_pydataset_and_a_generator_train_like_arrays():
    # Keras's TensorFlow trainer traces these two with an unknown batch size.
    data = random_pairs(2 * BATCH)
    halves = [{key: value[i * BATCH : (i + 1) * BATCH] for key, value in data.items()} for i in range(2)]
    reference = _fit_model(micro_batch_size=None)
    reference.train_on_batch(halves[0])
    after_first = flat_weights(reference)
    reference.train_on_batch(halves[1])
    for source in (_Batches(halves), ((batch,) for batch in halves)):
        model = _fit_model(micro_batch_size=2)
        model.fit(source, epochs=1, verbose=0, shuffle=False)
        assert relative_error(flat_weights(model), flat_weights(reference)) < 1e-5, type(source)
    # A later batch that does not split is refused; the first batch's step is kept.
    uneven = _Batches([halves[0], {key: value[:3] for key, value in halves[1].items()}])
    model = _fit_model(micro_batch_size=2)
    with pytest.raises(ValueError, match="multiple of micro_batch_size|as many pairs as the first"):
        model.fit(uneven, epochs=1, verbose=0, shuffle=False)
    assert relative_error(flat_weights(model), after_first) < 1e-5
