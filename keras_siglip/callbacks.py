"""Training callbacks whose files survive a kill at any moment.

`AtomicBackupAndRestore`: Keras's `BackupAndRestore`, safe against a kill at any moment.

Keras's callback overwrites `latest.weights.h5` and then
`training_metadata.json` in place: a kill inside the weights write leaves a
file no rerun can open, and a kill between the two writes resumes the new
weights at the old epoch (extra steps). Here each epoch's state is a complete
Keras backup of its own, in a folder `epoch-<n>/` (its weights and its
metadata, written by Keras's own `BackupAndRestore`), and
`training_metadata.json` at the top names the newest complete one; it is
replaced in one rename, after the folder is complete, and only then is the
previous state removed. Whenever the kill comes, the rerun restores one
complete state: the last finished epoch's weights, optimizer and step.
"""

import json
import os
import shutil

import keras

from keras_siglip import atomic

METADATA = "training_metadata.json"


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Backs up the training state at the end of every epoch and restores it when `fit` starts again.

    A drop-in for `keras.callbacks.BackupAndRestore(backup_dir,
    save_freq="epoch")` whose backups survive a `kill -9` at any moment: the
    previous state is kept until the new one is complete, so a resumed run
    reaches the weights an uninterrupted run would (given batches that depend
    on the epoch alone). Only `save_freq="epoch"` is offered: Keras resumes a
    run at the start of an epoch, so a state saved mid-epoch would repeat
    that epoch's first steps; make epochs as short as the backups should be
    frequent (`steps_per_epoch`).

    Args:
        backup_dir: str. The folder of the backups, used by this callback only.
        delete_checkpoint: bool. Remove the backups once `fit` completes.

    Example:
    >>> import os, tempfile, numpy as np, keras
    >>> folder = os.path.join(tempfile.mkdtemp(), "backup")
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> backup = AtomicBackupAndRestore(folder, delete_checkpoint=False)
    >>> _ = model.fit(np.ones((4, 2)), np.ones(4), epochs=2, callbacks=[backup], verbose=0)
    >>> sorted(os.listdir(folder))
    ['epoch-000002', 'training_metadata.json']
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        if save_freq != "epoch":
            raise ValueError(
                f"AtomicBackupAndRestore saves at the end of each epoch only (got save_freq={save_freq!r}): Keras "
                "resumes at the start of an epoch, so a mid-epoch state would repeat steps. Shorten the epochs "
                "(steps_per_epoch) instead."
            )
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)
        self._pointer = os.path.join(backup_dir, METADATA)

    def _newest_state(self):
        """The folder of the newest complete state, or None when there is none."""
        if not os.path.exists(self._pointer):
            return None
        with open(self._pointer) as file:
            metadata = json.load(file)
        if "state" not in metadata:
            raise ValueError(
                f"{self._pointer} was written by keras.callbacks.BackupAndRestore, not AtomicBackupAndRestore; "
                "resume it with Keras's callback or remove the folder."
            )
        return os.path.join(self.backup_dir, metadata["state"])

    def on_train_begin(self, logs=None):
        state = self._newest_state()
        self._remove_all_but(state)  # what a kill left half-written or not yet removed
        if state is not None:
            # Keras's own callback reads back the complete state (weights, optimizer, epoch).
            restore = keras.callbacks.BackupAndRestore(state, delete_checkpoint=False)
            restore.set_model(self.model)
            restore.on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        name = f"epoch-{epoch + 1:06d}"
        os.makedirs(self.backup_dir, exist_ok=True)
        state = os.path.join(self.backup_dir, name)
        if os.path.exists(state):
            shutil.rmtree(state)  # an unfinished state of an earlier, killed run
        with atomic.replaced_folder(state) as partial:
            writer = keras.callbacks.BackupAndRestore(partial, delete_checkpoint=False)
            writer.set_model(self.model)
            writer.on_epoch_end(epoch, logs)  # Keras's own layout: latest.weights.h5 + training_metadata.json
        with atomic.replaced_file(self._pointer) as partial:
            with open(partial, "w") as file:
                json.dump({"epoch": epoch + 1, "batch": 0, "state": name}, file)
        self._remove_all_but(state)

    def on_train_batch_end(self, batch, logs=None):
        pass  # saves at epoch ends only

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            # The pointer first: a kill during the removal then means "no backup", never a half-removed state.
            if os.path.exists(self._pointer):
                os.remove(self._pointer)
            shutil.rmtree(self.backup_dir)

    def _remove_all_but(self, keep):
        if not os.path.isdir(self.backup_dir):
            return
        for name in os.listdir(self.backup_dir):
            path = os.path.join(self.backup_dir, name)
            if name == METADATA or (keep is not None and os.path.samefile(path, keep)):
                continue
            if name.startswith("epoch-") or name.startswith(".epoch-") or name.startswith(f".{METADATA}."):
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)


class AtomicWeightsCheckpoint(keras.callbacks.Callback):
    """Saves the model's weights to one `.weights.h5` file at the end of every epoch, atomically.

    Keras's `ModelCheckpoint` rewrites its file in place, so a kill inside the
    write leaves a file `load_weights` cannot open. Here the new weights are
    written under a temporary name and renamed over the file: it always holds
    one complete epoch's weights.

    Args:
        path: str. Where the weights go; must end in `.weights.h5`.

    Example:
    >>> import os, tempfile, numpy as np, keras
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.weights.h5")
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> _ = model.fit(np.ones((4, 2)), np.ones(4), callbacks=[AtomicWeightsCheckpoint(path)], verbose=0)
    >>> os.listdir(os.path.dirname(path))
    ['checkpoint.weights.h5']
    """

    def __init__(self, path):
        super().__init__()
        path = os.fspath(path)
        if not path.endswith(".weights.h5"):
            raise ValueError(f"AtomicWeightsCheckpoint writes Keras weights files, whose names end in "
                             f"'.weights.h5'; got {path!r}.")
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        with atomic.replaced_file(self.path) as partial, _no_distribution():
            named = partial + ".weights.h5"  # Keras's save_weights wants the suffix
            try:
                self.model.save_weights(named)
                os.replace(named, partial)
            finally:
                if os.path.exists(named):
                    os.remove(named)


class _no_distribution:
    """No `keras.distribution` set while saving, so that one process of a multi-host job can save alone.

    Keras's `save_weights` builds a throwaway `Optimizer` each call (to learn
    which attributes to skip). Under a distribution its variables are placed
    across all processes, a step every process must join: a save made by
    process 0 alone would wait for the others forever.
    """

    def __enter__(self):
        self.distribution = keras.distribution.distribution()
        keras.distribution.set_distribution(None)

    def __exit__(self, *exc):
        keras.distribution.set_distribution(self.distribution)
        return False

