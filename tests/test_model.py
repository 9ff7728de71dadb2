"""The SigLIP model: forward pass, training with fit, saving, mixed precision, bad input."""

import math

import keras
import numpy as np
import pytest
from conftest import TINY, random_pairs, tiny_siglip

from keras_siglip import SigLIP, SoftmaxLoss, sigmoid_loss


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_forward_returns_normalised_embeddings_and_encoders_agree():
    model = tiny_siglip()
    data = random_pairs(4)
    out = model(data)
    assert set(out) == {"image_embeddings", "text_embeddings"}
    for value in out.values():
        value = to_numpy(value)
        assert value.shape == (4, 32) and value.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(value, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(to_numpy(model.encode_images(data["images"])), to_numpy(out["image_embeddings"]), atol=1e-6)
    np.testing.assert_allclose(to_numpy(model.encode_texts(data["token_ids"])), to_numpy(out["text_embeddings"]), atol=1e-6)


def test_temperature_and_bias_start_at_the_paper_values_and_are_configurable():
    model = tiny_siglip()
    assert math.isclose(float(to_numpy(model.log_temperature)), math.log(10.0), rel_tol=1e-6)
    assert float(to_numpy(model.bias)) == -10.0
    other = tiny_siglip(log_temperature_init=0.0, bias_init=0.0)
    assert float(to_numpy(other.log_temperature)) == 0.0 and float(to_numpy(other.bias)) == 0.0


def test_compute_loss_uses_the_given_forward_pass():
    model = tiny_siglip()
    model.compile()
    rng = np.random.default_rng(0)
    y_pred = {
        "image_embeddings": rng.normal(size=(5, 32)).astype("float32"),
        "text_embeddings": rng.normal(size=(5, 32)).astype("float32"),
    }
    # x=None: the loss can only come from y_pred, never from a second forward pass.
    loss = model.compute_loss(x=None, y=None, y_pred=y_pred)
    expected = sigmoid_loss(y_pred["image_embeddings"], y_pred["text_embeddings"], math.log(10.0), -10.0)
    np.testing.assert_allclose(to_numpy(loss), to_numpy(expected), rtol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="needs run_eagerly, which compiles every op separately on JAX (~1 min); jitted steps trace once",
)
def test_fit_runs_each_tower_once_per_step():
    model = tiny_siglip()
    calls = {"image": 0, "text": 0}
    image_call, text_call = model.image_encoder.call, model.text_encoder.call

    def count_image(*args, **kwargs):
        calls["image"] += 1
        return image_call(*args, **kwargs)

    def count_text(*args, **kwargs):
        calls["text"] += 1
        return text_call(*args, **kwargs)

    model.image_encoder.call, model.text_encoder.call = count_image, count_text
    model.compile(run_eagerly=True)
    model.train_on_batch(random_pairs(4))  # the first step may also trace the model symbolically
    calls.update(image=0, text=0)
    model.train_on_batch(random_pairs(4))
    assert calls == {"image": 1, "text": 1}


def test_compile_defaults_follow_the_paper():
    model = tiny_siglip()
    model.compile()
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert math.isclose(float(to_numpy(optimizer.learning_rate)), 1e-3, rel_tol=1e-6)
    assert math.isclose(optimizer.weight_decay, 1e-4) and optimizer.beta_2 == 0.95
    assert optimizer.global_clipnorm == 1.0
    optimizer.build(model.trainable_variables)  # newer Keras asks which variables decay only once built
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert "image_encoder/block_0/attention/query/kernel" in decayed
    assert "text_encoder/head/kernel" in decayed
    for path in decayed:
        assert path.endswith("/kernel"), path
    assert len(decayed) == sum(v.name == "kernel" for v in model.trainable_variables)


def test_fit_memorises_64_random_pairs():
    keras.utils.set_random_seed(0)
    model = tiny_siglip()
    model.compile(learning_rate=3e-3)
    data = random_pairs(64)
    history = model.fit(data, batch_size=64, epochs=40, shuffle=False, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 5
    out = model.predict(data, batch_size=64, verbose=0)
    similarity = out["image_embeddings"] @ out["text_embeddings"].T
    np.testing.assert_array_equal(similarity.argmax(axis=1), np.arange(64))  # image -> text
    np.testing.assert_array_equal(similarity.argmax(axis=0), np.arange(64))  # text -> image


def test_keras_save_and_load_round_trip(tmp_path):
    model = tiny_siglip(log_temperature_init=1.5, bias_init=-3.0)
    model.compile(loss=SoftmaxLoss())
    data = random_pairs(8)
    model.fit(data, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "siglip.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, SigLIP) and isinstance(loaded.loss, SoftmaxLoss)
    expected, got = model.predict(data, verbose=0), loaded.predict(data, verbose=0)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(saved), to_numpy(restored))
    # Training continues identically from the restored state.
    model.train_on_batch(data)
    loaded.train_on_batch(data)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)
    assert loaded.get_config() == model.get_config()


def test_a_batch_of_one_trains():
    model = tiny_siglip()
    model.compile()
    assert np.isfinite(model.train_on_batch(random_pairs(1)))  # the loss alone, as in Keras
    logs = model.train_on_batch(random_pairs(1), return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["skipped_steps"] == 0


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 16, 16), "float32"), "got rank 3"),
        (np.zeros((2, 32, 32, 3), "float32"), r"expects images of shape \(batch, 16, 16, 3\)"),
        (np.zeros((2, 16, 16, 1), "float32"), r"got \(2, 16, 16, 1\)"),
        (np.zeros((2, 16, 16, 3), "uint8"), "expects float images"),
    ],
)
def test_wrong_images_raise_a_clear_error(images, message):
    model = tiny_siglip()
    data = {"images": images, "token_ids": np.ones((2, TINY["sequence_length"]), "int32")}
    with pytest.raises(ValueError, match=message):
        model(data)


def test_token_ids_outside_the_vocabulary_raise_in_fit_predict_and_encode_texts():
    model = tiny_siglip()
    model.compile()
    data = random_pairs(4)
    message = r"token ids must lie in \[0, vocabulary_size=64\)"
    for bad_id in (-1, TINY["vocabulary_size"]):
        data["token_ids"][2, 3] = bad_id
        with pytest.raises(ValueError, match=message):
            model.encode_texts(data["token_ids"])
        with pytest.raises(ValueError, match=message):
            model.train_on_batch(data)
        with pytest.raises(ValueError, match=message):
            model.fit(data, batch_size=4, verbose=0)
        with pytest.raises(ValueError, match=message):
            model.predict(data, verbose=0)
    # The rejected batches cost nothing: the model still works and trains.
    data["token_ids"][2, 3] = 0
    model.fit(data, batch_size=4, verbose=0)
    assert np.all(np.isfinite(model.predict(data, verbose=0)["image_embeddings"]))


def test_bad_batches_raise_before_an_explicitly_compiled_step():
    # jit_compile=True is XLA on JAX and TensorFlow and compiled encoder blocks on
    # PyTorch: the batch is checked on the host before it reaches the step.
    model = tiny_siglip()
    model.compile(jit_compile=True)
    data = random_pairs(4)
    data["token_ids"][1, 1] = TINY["vocabulary_size"]
    for run in (lambda: model.fit(data, batch_size=4, verbose=0), lambda: model.evaluate(data, batch_size=4, verbose=0),
                lambda: model.predict(data, verbose=0)):
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocabulary_size=64\)"):
            run()
    if keras.backend.backend() == "torch":
        return  # compiling the blocks takes tens of seconds on a CPU; tests/test_fast_path.py trains them
    # Good batches still train through the compiled step, to the end of each epoch.
    data["token_ids"][1, 1] = 0
    history = model.fit(data, batch_size=2, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))
    assert np.isfinite(model.evaluate(data, batch_size=2, verbose=0))


def test_token_ids_outside_the_vocabulary_raise_from_a_tf_dataset():
    import tensorflow as tf

    model = tiny_siglip()
    model.compile()
    data = random_pairs(8)
    data["token_ids"][5, 0] = 1000
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)  # batch dimension unknown
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocabulary_size=64\)"):
        model.fit(dataset, verbose=0)


def test_float_token_ids_and_too_long_sequences_raise():
    model = tiny_siglip()
    data = random_pairs(2)
    with pytest.raises(ValueError, match="expects integer token ids"):
        model({"images": data["images"], "token_ids": data["token_ids"].astype("float32")})
    with pytest.raises(ValueError, match="takes at most 8 tokens"):
        model({"images": data["images"], "token_ids": np.ones((2, 9), "int32")})
    with pytest.raises(ValueError, match="got rank 1"):
        model({"images": data["images"], "token_ids": np.ones((8,), "int32")})


def test_different_batch_sizes_raise_in_call_fit_and_from_a_tf_dataset():
    import tensorflow as tf

    model = tiny_siglip()
    model.compile()
    images, texts = random_pairs(4)["images"], random_pairs(3)["token_ids"]
    with pytest.raises(ValueError, match="got a batch of 4 images and 3 token sequences"):
        model({"images": images, "token_ids": texts})
    with pytest.raises(ValueError, match="arrays of different lengths"):
        model.fit({"images": images, "token_ids": texts}, verbose=0)
    # A dataset whose two sides disagree only at run time.
    uneven = tf.data.Dataset.zip(
        (
            tf.data.Dataset.from_tensor_slices(random_pairs(4)["images"]).batch(4),
            tf.data.Dataset.from_tensor_slices(random_pairs(3)["token_ids"]).batch(3),
        )
    ).map(lambda i, t: {"images": i, "token_ids": t})
    with pytest.raises(ValueError, match="one caption per image"):
        model.fit(uneven, verbose=0)


def test_missing_input_keys_raise():
    model = tiny_siglip()
    with pytest.raises(ValueError, match="expects a dict with keys 'images' and 'token_ids'"):
        model({"images": random_pairs(2)["images"]})


def test_towers_of_different_widths_are_rejected():
    from keras_siglip import ImageEncoder, TextEncoder

    image_encoder = ImageEncoder.from_variant("tiny", image_size=16, patch_size=4)
    text_encoder = TextEncoder.from_variant("tiny", vocabulary_size=10, sequence_length=4, output_dim=16)
    with pytest.raises(ValueError, match="same width; the image encoder gives 32 and the text encoder 16"):
        SigLIP(image_encoder, text_encoder)


_WITHOUT_TENSORFLOW = """
import numpy as np
import keras_siglip
from keras_siglip import SigLIP
model = SigLIP.from_variant("tiny", image_size=16, patch_size=4, vocabulary_size=64, sequence_length=8)
model.compile()
rng = np.random.default_rng(0)
batch = {"images": rng.uniform(-1, 1, (4, 16, 16, 3)).astype("float32"),
         "token_ids": rng.integers(0, 64, (4, 8)).astype("int32")}
loss = float(model.train_on_batch(batch))
assert np.isfinite(loss), loss
for name in ("SigLIPTokenizer", "SigLIPImagePreprocessor"):
    try:  # the ImportError comes at first use, which is the attribute look-up
        getattr(keras_siglip, name)()
    except ImportError as error:
        print("clear error:", error)
print("trained, loss", loss)
"""


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="the TensorFlow backend needs TensorFlow")
def test_model_and_loss_train_without_tensorflow_installed(tmp_path):
    # A GPU image with JAX or PyTorch but no TensorFlow (the benchmarks' machines):
    # the model, losses and Keras training need no tf.data and no tensorflow-text.
    import os
    import subprocess
    import sys

    for module in ("tensorflow", "tensorflow_text", "tf_keras"):
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(f"raise ImportError('{module} is not installed')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained, loss" in done.stdout
    assert "clear error: SigLIPTokenizer needs tensorflow" in done.stdout
    assert "clear error: SigLIPImagePreprocessor needs tensorflow" in done.stdout
