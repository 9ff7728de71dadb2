"""Nothing saved is lost: backups, presets and exports survive a SIGKILL at any moment of their writes."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BACKEND = keras.backend.backend()

# A training command: 4 epochs of a small model with AtomicBackupAndRestore, its final weights to weights.npz.
# KILL_AT makes the process SIGKILL itself at one moment of the second epoch's backup.
TRAIN = textwrap.dedent('''
    import os, shutil, signal, sys
    import h5py, keras, numpy as np
    from keras_siglip import atomic
    from keras_siglip.callbacks import AtomicBackupAndRestore

    workdir, kill_at = sys.argv[1], os.environ.get("KILL_AT")
    saves = {"count": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def on_second_save(function):
        def patched(*args, **kwargs):
            if saves["count"] == 2:
                die()
            return function(*args, **kwargs)
        return patched

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saves["count"] = epoch + 1

    if kill_at == "inside_the_weights":  # the HDF5 file is open and half written
        h5py.File.close = on_second_save(h5py.File.close)
    elif kill_at == "between_weights_and_metadata":
        original = keras.Model.save_weights
        def save_then_die(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if saves["count"] == 2:
                die()
        keras.Model.save_weights = save_then_die
    elif kill_at == "before_the_pointer":
        atomic.os.replace = on_second_save(os.replace)
    elif kill_at == "before_the_old_state_is_removed":
        shutil.rmtree = on_second_save(shutil.rmtree)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.AdamW(1e-2), "mse")
    # Count runs before the backup: on_epoch_end of epoch 1 (0-based) is the second save.
    callbacks = [AtomicBackupAndRestore(os.path.join(workdir, "backup")), Count()]
    callbacks = [callbacks[1], callbacks[0]]
    model.fit(x, y, batch_size=8, epochs=4, shuffle=False, callbacks=callbacks, verbose=0)
    np.savez(os.path.join(workdir, "weights.npz"), *model.get_weights(),
             iterations=keras.ops.convert_to_numpy(model.optimizer.iterations))
''')


def _train(workdir, kill_at=None):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KILL_AT", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", TRAIN, str(workdir)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _weights(workdir):
    with np.load(os.path.join(workdir, "weights.npz")) as arrays:
        return {key: arrays[key] for key in arrays.files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    saved_argv, sys.argv = sys.argv, ["train", str(workdir)]
    try:
        exec(TRAIN, {"__name__": "uninterrupted"})  # the same command, in this process: no kill is armed
    finally:
        sys.argv = saved_argv
    return _weights(workdir)


KILL_POINTS = [
    "inside_the_weights",
    pytest.param("between_weights_and_metadata", marks=pytest.mark.backend_independent),
    pytest.param("before_the_pointer", marks=pytest.mark.backend_independent),
    pytest.param("before_the_old_state_is_removed", marks=pytest.mark.backend_independent),
]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_sigkill_during_a_backup_resumes_to_the_uninterrupted_weights(tmp_path, uninterrupted, kill_at):
    killed = _train(tmp_path, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "weights.npz").exists()
    resumed = _train(tmp_path)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    weights = _weights(tmp_path)
    assert int(weights["iterations"]) == 16  # 4 epochs of 4 steps: none repeated, none missed
    assert weights.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)
    assert not (tmp_path / "backup").exists()  # removed once fit completed


# -- presets and exports -----------------------------------------------------------

SAVE_OVER = textwrap.dedent('''
    import os, signal, sys
    import h5py
    from keras_siglip import SigLIP

    h5py.File.close = lambda self: os.kill(os.getpid(), signal.SIGKILL)  # inside the weights write
    model = SigLIP.from_variant("tiny", image_size=16, patch_size=4, vocabulary_size=64, sequence_length=8)
    model.save_to_preset(sys.argv[1])
''')


def _tokenizer():
    from keras_siglip.data.embedded import EMBEDDED_VOCABULARY
    from keras_siglip.models.siglip import SigLIPTokenizer

    return SigLIPTokenizer(str(EMBEDDED_VOCABULARY), sequence_length=8)


def _same_weights(a, b):
    for x, y in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.backend_independent
def test_a_sigkill_inside_save_to_preset_keeps_the_old_preset(tmp_path):
    from conftest import tiny_siglip

    from keras_siglip import presets

    folder = tmp_path / "preset"
    old = tiny_siglip()
    old.save_to_preset(str(folder), tokenizer=_tokenizer())
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    killed = subprocess.run([sys.executable, "-c", SAVE_OVER, str(folder)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    loaded = presets.load_preset(str(folder))
    _same_weights(loaded.model, old)
    assert loaded.tokenizer is not None
    old.save_to_preset(str(folder))  # the next save clears what the kill left beside it
    assert sorted(os.listdir(tmp_path)) == ["preset"]


def test_saving_a_preset_without_a_tokenizer_leaves_no_stale_tokenizer(tmp_path):
    from conftest import tiny_siglip

    from keras_siglip import presets

    folder = str(tmp_path / "preset")
    tiny_siglip().save_to_preset(folder, tokenizer=_tokenizer())
    assert presets.load_preset(folder).tokenizer is not None
    new = tiny_siglip()
    new.save_to_preset(folder)
    loaded = presets.load_preset(folder)
    assert loaded.tokenizer is None and "tokenizer.json" not in os.listdir(folder)
    _same_weights(loaded.model, new)
    assert sorted(os.listdir(tmp_path)) == ["preset"]  # no temporary folder left


@pytest.mark.backend_independent
@pytest.mark.parametrize("format", ["transformers", "keras_hub", "big_vision"])
def test_a_failed_export_leaves_the_previous_export_whole(tmp_path, monkeypatch, format):
    from conftest import tiny_siglip

    from keras_siglip import atomic, export, presets

    path = str(tmp_path / ("m.npz" if format == "big_vision" else "export"))
    old = tiny_siglip()
    export(old, path, format=format)
    before = sorted(os.listdir(tmp_path))

    def fail(*args, **kwargs):
        raise OSError("disk full")  # in the middle of the write: the new files are partly there

    monkeypatch.setattr(atomic, "sync_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export(tiny_siglip(), path, format=format)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before
    _same_weights(presets.from_preset(path), old)


def test_saving_refuses_to_replace_a_folder_that_is_no_checkpoint(tmp_path):
    from conftest import tiny_siglip

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds files but no config.json"):
        tiny_siglip().save_to_preset(str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.backend_independent
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two renames"])
def test_a_replaced_folder_swaps_whole(tmp_path, monkeypatch, exchange):
    from keras_siglip import atomic

    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    folder = tmp_path / "preset"
    for files in (["config.json", "tokenizer.json"], ["config.json"]):
        with atomic.replaced_folder(folder) as partial:
            for name in files:
                pathlib.Path(partial, name).write_text(str(files))
        assert sorted(os.listdir(folder)) == files
    assert os.listdir(tmp_path) == ["preset"]


@pytest.mark.backend_independent
def test_a_weights_checkpoint_failing_mid_write_keeps_the_last_complete_weights(tmp_path, monkeypatch):
    import h5py

    from keras_siglip.callbacks import AtomicWeightsCheckpoint

    path = tmp_path / "checkpoint.weights.h5"
    x, y = np.ones((4, 3), "float32"), np.ones((4, 2), "float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(x, y, callbacks=[AtomicWeightsCheckpoint(path)], verbose=0)
    saved = model.get_weights()

    def fail(self, *args, **kwargs):
        raise OSError("disk full")  # the new HDF5 file is open and half written

    monkeypatch.setattr(h5py.File, "close", fail)
    with pytest.raises(OSError, match="disk full"):
        model.fit(x, y, callbacks=[AtomicWeightsCheckpoint(path)], verbose=0)
    monkeypatch.undo()
    assert not np.allclose(model.get_weights()[0], saved[0])  # the second epoch trained
    model.load_weights(path)
    for got, want in zip(model.get_weights(), saved):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.weights.h5"]
    with pytest.raises(ValueError, match="end in '.weights.h5'"):
        AtomicWeightsCheckpoint(tmp_path / "weights.keras")
