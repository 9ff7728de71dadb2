"""Bad batches are refused where they enter fit / evaluate / predict, and change nothing."""

import keras
import numpy as np
import pytest
from conftest import TINY, random_pairs, tiny_siglip

from keras_siglip.models.siglip.input_checks import BatchChecker

BACKEND = keras.backend.backend()
BAD_ID = r"token ids must lie in \[0, vocabulary_size=64\)"


def state_of(model):
    """Every variable of the model and its optimizer, read back as NumPy (fails on a deleted buffer)."""
    variables = model.variables + model.optimizer.variables
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in variables}


def steps(model, state):
    return int(state[model.optimizer.iterations.path])


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    changed = [path for path in before if not np.array_equal(before[path], after[path])]
    assert not changed, f"a rejected batch changed {changed[:5]}"


def bad_pairs(batch_size=8, bad_row=5):
    data = random_pairs(batch_size, seed=1)
    data["token_ids"][bad_row, 2] = TINY["vocabulary_size"]
    return data


def as_tf_dataset(data, batch_size):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)


def as_generator(data, batch_size):
    for start in range(0, len(data["images"]), batch_size):
        yield ({key: value[start : start + batch_size] for key, value in data.items()},)


class PairsDataset(keras.utils.PyDataset):
    def __init__(self, data, batch_size):
        super().__init__()
        self.data, self.batch_size = data, batch_size

    def __len__(self):
        return len(self.data["images"]) // self.batch_size

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return {key: value[rows] for key, value in self.data.items()}


SOURCES = {
    "arrays": lambda data, batch_size: data,
    "tf.data": as_tf_dataset,
    "generator": as_generator,
    "PyDataset": PairsDataset,
}


@pytest.mark.parametrize("source", sorted(SOURCES))
# XLA or not changes how TensorFlow orders a step's updates; elsewhere one compiled step is enough.
@pytest.mark.parametrize("jit_compile", ["auto", False] if BACKEND == "tensorflow" else ["auto"])
def test_a_rejected_batch_changes_nothing_and_the_model_trains_on(source, jit_compile):
    if source == "tf.data" and BACKEND == "torch":
        pytest.importorskip("tensorflow")
    model = tiny_siglip()
    model.compile(jit_compile=jit_compile)
    model.fit(random_pairs(8), batch_size=4, verbose=0)  # the optimizer has slots and a step count
    before = state_of(model)
    batches = SOURCES[source](bad_pairs(), 4)  # the second batch holds the bad id
    with pytest.raises(ValueError, match=BAD_ID):
        kwargs = {"batch_size": 4} if source == "arrays" else {}
        model.fit(batches, verbose=0, **kwargs)
    after = state_of(model)
    # Arrays are checked whole, before the first step; a stream may have
    # trained on its first, good batch (or have been checked ahead of it).
    assert steps(model, after) in (steps(model, before), steps(model, before) + 1)
    if source == "arrays" or steps(model, after) == steps(model, before):
        assert_same_state(before, after)
    history = model.fit(random_pairs(8, seed=2), batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_a_bad_batch_late_in_the_stream_stops_training_there(source):
    model = tiny_siglip()
    model.compile()
    data = bad_pairs(batch_size=16, bad_row=13)  # batches 0-2 are good, batch 3 is not
    reference = tiny_siglip()
    reference.set_weights(model.get_weights())
    reference.compile()
    with pytest.raises(ValueError, match=BAD_ID):
        model.fit(SOURCES[source](data, 4), verbose=0, **({"batch_size": 4} if source == "arrays" else {}))
    trained = state_of(model)  # readable, whatever the backend
    if source == "PyDataset":  # Keras reads a PyDataset ahead: the error may come before the good batches ran
        assert steps(model, trained) <= 3
    elif source != "arrays":  # the three good batches trained, exactly as alone
        good = {key: value[:12] for key, value in data.items()}
        reference.fit(good, batch_size=4, shuffle=False, verbose=0)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(model.bias), keras.ops.convert_to_numpy(reference.bias), rtol=1e-6
        )
        assert steps(model, trained) == 3
    else:
        assert steps(model, trained) == 0


@pytest.mark.skipif(BACKEND == "torch", reason="steps_per_execution groups steps on JAX and TensorFlow")
@pytest.mark.parametrize("source", ["arrays", "generator"])
def test_a_group_of_steps_with_a_bad_batch_runs_no_step(source):
    model = tiny_siglip()
    model.compile(steps_per_execution=2)
    model.fit(random_pairs(8), batch_size=4, verbose=0)
    before = state_of(model)
    with pytest.raises(ValueError, match=BAD_ID):
        model.fit(SOURCES[source](bad_pairs(), 4), verbose=0, **({"batch_size": 4} if source == "arrays" else {}))
    after = state_of(model)
    if BACKEND == "jax" or source == "arrays":
        assert_same_state(before, after)
    else:  # TensorFlow fetches the group's batches one by one inside its loop
        assert steps(model, after) <= steps(model, before) + 1
    model.fit(random_pairs(8, seed=2), batch_size=4, verbose=0)


def test_evaluate_predict_and_on_batch_calls_refuse_bad_batches():
    model = tiny_siglip()
    model.compile()
    model.fit(random_pairs(4), batch_size=4, verbose=0)
    before = state_of(model)
    data = bad_pairs()
    for run in (
        lambda: model.evaluate(data, batch_size=4, verbose=0),
        lambda: model.predict(data, batch_size=4, verbose=0),
        lambda: model.train_on_batch(data),
        lambda: model.test_on_batch(data),
        lambda: model.predict_on_batch(data),
        lambda: model.evaluate(as_generator(data, 4), verbose=0),
        lambda: model.fit(random_pairs(8), validation_data=bad_pairs(), batch_size=4, verbose=0),
    ):
        with pytest.raises(ValueError, match=BAD_ID):
            run()
    after = state_of(model)
    changed = [p for p in before if not np.array_equal(before[p], after[p])]
    assert all("adamw" in p or "siglip" in p or "encoder" in p for p in changed)  # only the validation fit trained
    assert np.all(np.isfinite(model.predict(random_pairs(4), verbose=0)["text_embeddings"]))


def test_non_finite_pixels_are_refused():
    model = tiny_siglip()
    model.compile()
    data = random_pairs(4)
    data["images"][1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="images hold 1 NaN or infinite values"):
        model.fit(data, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.encode_images(data["images"])


def test_the_checker_names_each_problem():
    checker = BatchChecker(vocabulary_size=10)
    images = np.zeros((2, 4, 4, 3), "float32")
    with pytest.raises(ValueError, match=r"found 2 outside, e.g. \[-1, 12\]"):
        checker.check({"images": images, "token_ids": np.array([[-1, 3], [12, 0]])})
    with pytest.raises(ValueError, match=r"arrays of different lengths \{'images': 2, 'token_ids': 3\}"):
        checker.check({"images": images, "token_ids": np.zeros((3, 2), "int32")})
    # int64 ids past 2**32 would wrap to small ids in an int32 gather: refused while still int64.
    with pytest.raises(ValueError, match="found 1 outside"):
        checker.check({"images": images, "token_ids": np.array([[2**32 + 3], [1]], "int64")})
    assert checker.check({"images": images, "token_ids": np.array([[9], [0]])})["token_ids"].shape == (2, 1)


@pytest.mark.skipif(BACKEND != "torch", reason="device-to-host copies are a PyTorch (and GPU) concern")
def test_a_torch_forward_pass_copies_nothing_to_the_host(monkeypatch):
    import torch

    model = tiny_siglip()
    data = {key: torch.as_tensor(value) for key, value in random_pairs(4).items()}
    model(data)  # built and warm

    def host_copy(*args, **kwargs):
        raise AssertionError("the forward pass copied a tensor to the host")

    for method in ("cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, method, host_copy)
    monkeypatch.setattr(keras.ops, "convert_to_numpy", host_copy)
    outputs = model(data)
    model.compute_loss(data, y_pred=outputs)
    monkeypatch.undo()
    assert outputs["image_embeddings"].shape == (4, 32)


# -- every input problem is a ValueError that names it, and the model is as before ------------------------

GROUPED = 1 if BACKEND == "torch" else 2  # steps_per_execution > 1 exists on JAX and TensorFlow only


def trained_model(steps_per_execution=GROUPED, micro_batch_size=None):
    model = tiny_siglip()
    model.compile(steps_per_execution=steps_per_execution, micro_batch_size=micro_batch_size)
    model.fit(random_pairs(8), batch_size=4, verbose=0)
    return model


def tf_dataset_of(batches, images_shape=(None, 16, 16, 3), ids_shape=(None, 8)):
    tf = pytest.importorskip("tensorflow")
    return tf.data.Dataset.from_generator(lambda: iter(batches), output_signature={
        "images": tf.TensorSpec(images_shape, tf.float32), "token_ids": tf.TensorSpec(ids_shape, tf.int32)})


def test_int64_token_ids_past_2_to_the_32_are_refused_everywhere():
    model = trained_model()
    before = state_of(model)
    data = random_pairs(4)
    data["token_ids"] = data["token_ids"].astype("int64")
    data["token_ids"][0, 0] = 2**32 + 58  # an int32 gather would read id 58
    for run in (lambda: model(data), lambda: model.train_on_batch(data), lambda: model.predict(data, verbose=0),
                lambda: model.fit(data, batch_size=4, verbose=0)):
        with pytest.raises(ValueError, match=r"found 1 outside, e\.g\. \[4294967354\]"):
            run()
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("source", ["call", "train_on_batch", "arrays", "tf.data", "generator"])
def test_non_finite_pixels_are_refused_on_every_path(source):
    model = trained_model()
    before = state_of(model)
    data = random_pairs(8)
    data["images"][5, 1, 2, 0] = np.inf
    run = {
        "call": lambda: model(data),
        "train_on_batch": lambda: model.train_on_batch(data),
        "arrays": lambda: model.fit(data, batch_size=4, verbose=0),
        "tf.data": lambda: model.fit(as_tf_dataset(data, 4), verbose=0),
        "generator": lambda: model.fit(as_generator(data, 4), verbose=0),
    }[source]
    with pytest.raises(ValueError, match="images hold (1 )?NaN or infinite values"):
        run()
    after = state_of(model)
    if source in ("call", "train_on_batch", "arrays") or steps(model, after) == steps(model, before):
        assert_same_state(before, after)
    assert steps(model, after) <= steps(model, before) + 1  # a stream may have trained on its good first batch


def test_empty_batches_empty_captions_and_empty_data_are_refused_and_change_nothing():
    model = trained_model()
    before = state_of(model)
    no_tokens = random_pairs(4)
    no_tokens["token_ids"] = no_tokens["token_ids"][:, :0]
    no_pairs = {key: value[:0] for key, value in random_pairs(4).items()}
    for run, problem in [
        (lambda: model.fit(no_tokens, batch_size=4, verbose=0), r"shape \(4, 0\) hold no tokens"),
        (lambda: model.predict(no_tokens, verbose=0), r"shape \(4, 0\) hold no tokens"),
        (lambda: model.train_on_batch(no_pairs), r"empty batch \(0 pairs\)"),
        (lambda: model.fit(no_pairs, batch_size=4, verbose=0), r"empty batch \(0 pairs\)"),
        (lambda: model.predict(no_pairs, verbose=0), r"empty batch \(0 pairs\)"),
        (lambda: model.fit(tf_dataset_of([]), verbose=0), "gave no batches"),
        (lambda: model.fit(iter([]), verbose=0), "gave no batches|empty"),
    ]:
        with pytest.raises(ValueError, match=problem):
            run()
        assert_same_state(before, state_of(model))
    assert np.isfinite(model.fit(random_pairs(8, seed=3), batch_size=4, verbose=0).history["loss"][-1])


def test_captions_longer_than_the_text_tower_are_refused_from_a_tf_dataset_of_unknown_length():
    model = trained_model()
    before = state_of(model)
    long = random_pairs(4, sequence_length=12)
    with pytest.raises(ValueError, match=r"takes at most 8 tokens; got token ids of shape \(4, 12\)"):
        model.fit(tf_dataset_of([long], ids_shape=(None, None)), verbose=0)
    assert_same_state(before, state_of(model))


def test_images_of_the_wrong_size_are_refused_from_a_tf_dataset_of_unknown_height_and_width():
    model = trained_model()
    before = state_of(model)
    wrong = dict(random_pairs(4), images=np.zeros((4, 20, 12, 3), "float32"))
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 16, 16, 3\); got \(4, 20, 12, 3\)"):
        model.fit(tf_dataset_of([wrong], images_shape=(None, None, None, 3)), verbose=0)
    assert_same_state(before, state_of(model))


def test_a_tf_dataset_of_unknown_height_and_width_trains():
    model = trained_model()
    history = model.fit(tf_dataset_of([random_pairs(4), random_pairs(4, seed=1)], images_shape=(None, None, None, 3)),
                        verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert steps(model, state_of(model)) == 4


# Micro-batches compute the gradients their own way (towers recomputed in the backward pass); the check still holds.
@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_a_step_whose_loss_is_not_finite_is_skipped_counted_and_changes_nothing(micro_batch_size):
    model = trained_model(micro_batch_size=micro_batch_size)
    model.log_temperature.assign(1e30)  # exp(t') overflows: the loss and every gradient are not finite
    before = state_of(model)
    history = model.fit(random_pairs(8, seed=4), batch_size=4, verbose=0)
    assert history.history["skipped_steps"] == [2.0]
    assert_same_state(before, state_of(model))  # weights, optimizer slots and step count as they were
    model.log_temperature.assign(np.log(10.0))
    history = model.fit(random_pairs(8, seed=4), batch_size=4, verbose=0)
    assert history.history["skipped_steps"] == [0.0] and np.isfinite(history.history["loss"][-1])
    assert steps(model, state_of(model)) == steps(model, before) + 2
