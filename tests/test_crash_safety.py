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
