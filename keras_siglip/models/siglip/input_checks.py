"""Where SigLIP's inputs are checked: on the host, once per batch, before a step runs.

A token id outside the vocabulary is clamped silently by JAX and GPU gathers,
so values must be checked; but reading values inside the forward pass would
copy them from the accelerator on every step. So the forward pass checks only
what is known at trace time (keys, ranks, shapes, dtypes: `SigLIP.call`), and
the values are checked here, where batches enter `fit`, `evaluate` and
`predict`:

- arrays (NumPy, or tensors of any backend) are checked whole, before Keras
  sees them;
- Python generators and iterators are checked batch by batch as Keras pulls
  them, a whole `steps_per_execution` group before its first batch is handed
  on; at a bad batch the stream ends cleanly and the error is raised once
  Keras has returned, so no step of that group runs;
- `keras.utils.PyDataset`s are checked in `__getitem__`;
- a `tf.data.Dataset` gets an assertion in its pipeline: it runs where tf.data
  runs, on the host.

What `SigLIPTokenizer` and the readers of `keras_siglip.data` produce passes by
construction. A failed check raises `ValueError` naming the problem; nothing of
the model has changed by then.
"""

import re
import types

import keras
import numpy as np

# Marks our messages inside TensorFlow errors, so they come back as ValueError.
ERROR_MARK = "keras_siglip input error: "


class BatchChecker:
    """Checks the values of SigLIP input batches on the host.

    Args:
        vocabulary_size: int. Token ids must lie in `[0, vocabulary_size)`.
        image_keys: the keys that may hold the image input (`"images"`, and
            `"image_embeddings"` for a locked image tower).
        sequence_length: int or `None`. The most tokens the text tower takes.
        image_size: `(height, width)` or `None`. What the `"images"` must be.
        text_tower, image_tower: the towers' names, for the messages.

    Shapes are checked when the model is traced (`SigLIP.call`), except the
    dimensions a `tf.data.Dataset` leaves unknown: those are checked in its
    pipeline, with `sequence_length` and `image_size`.

    Example:
    >>> import numpy as np
    >>> checker = BatchChecker(vocabulary_size=10)
    >>> checker.check({"images": np.zeros((2, 4, 4, 3)), "token_ids": np.array([[1], [10]])})
    Traceback (most recent call last):
    ...
    ValueError: token ids must lie in [0, vocabulary_size=10); found 1 outside, e.g. [10].
    """

    def __init__(self, vocabulary_size, image_keys=("images",), sequence_length=None, image_size=None,
                 text_tower="text_encoder", image_tower="image_encoder"):
        self.vocabulary_size = int(vocabulary_size)
        self.image_keys = tuple(image_keys)
        self.sequence_length = sequence_length
        self.image_size = tuple(image_size) if image_size is not None else None
        self.text_tower, self.image_tower = text_tower, image_tower

    # -- one batch (or whole arrays) on the host ------------------------------

    def check(self, x):
        """Raises `ValueError` when the batch dict `x` holds bad values; returns `x`."""
        if not isinstance(x, dict):
            return x  # SigLIP.call names the expected structure
        lengths = {key: _length(value) for key, value in x.items()}
        lengths = {key: n for key, n in lengths.items() if n is not None}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"SigLIP needs one caption per image; got arrays of different lengths {lengths}.")
        if 0 in lengths.values():
            raise ValueError(f"SigLIP got an empty batch (0 pairs): {lengths}.")
        if "token_ids" in x:
            ids = _to_numpy(x["token_ids"])
            if ids.ndim == 2 and ids.shape[1] == 0:
                raise ValueError(f"token ids of shape {ids.shape} hold no tokens; a caption needs at least one.")
            self._check_token_ids(ids)
        for key in self.image_keys:
            if key in x:
                self._check_finite(key, _to_numpy(x[key]))
        from keras_siglip.models.siglip.naflex_image_encoder import INPUT_KEYS, naflex_value_problem

        if all(key in x for key in INPUT_KEYS):  # a NaFlex batch: its mask and patch grids must agree
            problem = naflex_value_problem(*(_to_numpy(x[key]) for key in INPUT_KEYS))
            if problem:
                raise ValueError(problem + ".")
        return x

    def _check_token_ids(self, ids):
        if ids.dtype.kind not in "iu":
            return  # SigLIP.call refuses non-integer ids by dtype
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocabulary_size):
            bad = ids[(ids < 0) | (ids >= self.vocabulary_size)]
            raise ValueError(
                f"token ids must lie in [0, vocabulary_size={self.vocabulary_size}); "
                f"found {bad.size} outside, e.g. {bad[:5].tolist()}."
            )

    @staticmethod
    def _check_finite(key, values):
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            count = int(values.size - np.isfinite(values).sum())
            raise ValueError(f"{key} hold {count} NaN or infinite values; a step on them would ruin every weight.")

    # -- every kind of data fit / evaluate / predict take ----------------------

    def checked(self, x, group_size=1, on_refused=None):
        """`x` with its values checked as it is read: arrays now, streams batch by batch.

        A stream (generator, iterator) that reaches a bad batch ends cleanly
        before it: Keras sees the end of the data, the steps already taken
        are kept, `on_refused()` is called (`SigLIP` stops training there) and
        the error waits in `refused`, for the caller to raise once Keras has
        returned. A `PyDataset` raises from the bad batch's `__getitem__`, a
        `tf.data.Dataset` from its pipeline.

        Args:
            x: what `fit`, `evaluate` or `predict` were given as `x`.
            group_size: int. Batches read and checked together before the first
                of them is handed on (`steps_per_execution`), so no step of a
                group that holds a bad batch runs.
            on_refused: called with no arguments when a stream ends at a bad batch.
        """
        self.refused = None
        if _is_tf_dataset(x):
            return self._checked_tf_dataset(x)
        if isinstance(x, keras.utils.PyDataset):
            return _CheckedPyDataset(x, self._check_data)
        if isinstance(x, (types.GeneratorType, map, filter)) or (
            hasattr(x, "__next__") and not hasattr(x, "shape")
        ):
            return self._checked_stream(x, group_size, on_refused)
        if isinstance(x, dict):
            return self.check(x)
        return x

    def check_first_batches(self, x, count):
        """Checks the first `count` batches of a `tf.data.Dataset` or `PyDataset` now, on the host.

        Keras's JAX loops move the model's state out of its variables for the
        first step; an error while it is out would lose it, so `SigLIP` checks
        what that step (and the batches read ahead of it) will read first.
        """
        if _is_tf_dataset(x):
            for batch in x.take(count).as_numpy_iterator():
                self._check_data(batch)
        elif isinstance(x, keras.utils.PyDataset):
            count += x.max_queue_size  # Keras's workers read that far ahead
            for index in range(min(count, x.num_batches or count)):
                self._check_data(x[index])

    def _check_data(self, data):
        x = data[0] if isinstance(data, tuple) else data
        self.check(x)
        return data

    def _checked_stream(self, iterator, group_size, on_refused):
        group, handed_on = [], False
        try:
            for data in iterator:
                group.append(self._check_data(data))
                if len(group) >= group_size:
                    yield from group
                    group, handed_on = [], True
        except ValueError as error:
            if not handed_on:
                raise  # Keras is still looking at the first batches: no step has run
            self.refused = error
            if on_refused is not None:
                on_refused()
            return
        yield from group

    def _checked_tf_dataset(self, dataset):
        import tensorflow as tf

        vocabulary_size = self.vocabulary_size
        image_keys = self.image_keys
        shape_checks = self._tf_shape_assertions

        def assert_valid(*data):
            x = data[0]
            if not isinstance(x, dict):
                return data
            checks = []
            if "token_ids" in x and x["token_ids"].dtype.is_integer:
                ids = tf.cast(x["token_ids"], tf.int64)
                checks.append(
                    tf.debugging.assert_equal(
                        tf.reduce_all((ids >= 0) & (ids < vocabulary_size)),
                        True,
                        message=f"{ERROR_MARK}token ids must lie in [0, vocabulary_size={vocabulary_size}).",
                    )
                )
            checks.extend(shape_checks(x))
            for key in image_keys:
                if key in x and x[key].dtype.is_floating:
                    checks.append(
                        tf.debugging.assert_all_finite(
                            x[key], message=f"{ERROR_MARK}{key} hold NaN or infinite values."
                        )
                    )
            if all(key in x for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes")):  # NaFlex
                from keras_siglip.models.siglip.naflex_image_encoder import naflex_tf_assertions

                checks.extend(naflex_tf_assertions(x, ERROR_MARK))
            sizes = [tf.shape(value)[0] for value in x.values() if value.shape.rank]
            for size in sizes[1:]:
                checks.append(
                    tf.debugging.assert_equal(
                        size, sizes[0], message=f"{ERROR_MARK}SigLIP needs one caption per image; the batch sizes differ."
                    )
                )
            with tf.control_dependencies(checks):
                return tf.nest.map_structure(tf.identity, data)

        return dataset.map(assert_valid)

    def _tf_shape_assertions(self, x):
        """Run-time checks of the dimensions the pipeline leaves unknown (the rest were checked when traced)."""
        import tensorflow as tf

        checks = []

        def shape_text(value):
            dims = tf.strings.as_string(tf.shape(value))
            return tf.strings.join(["(", tf.strings.reduce_join(dims, separator=", "), ")"])

        ids = x.get("token_ids")
        if self.sequence_length is not None and ids is not None and ids.shape.rank == 2 and ids.shape[1] is None:
            message = tf.strings.join([
                f"{ERROR_MARK}{self.text_tower} takes at most {self.sequence_length} tokens; got token ids of shape ",
                shape_text(ids), "."])
            checks.append(tf.debugging.Assert(tf.shape(ids)[1] <= self.sequence_length, [message]))
        images = x.get("images")
        if self.image_size is not None and images is not None and images.shape.rank == 4 and (
            None in images.shape[1:3]
        ):
            height, width = self.image_size
            message = tf.strings.join([
                f"{ERROR_MARK}{self.image_tower} expects images of shape (batch, {height}, {width}, 3); got ",
                shape_text(images), "."])
            fits = tf.reduce_all(tf.equal(tf.shape(images)[1:3], [height, width]))
            checks.append(tf.debugging.Assert(fits, [message]))
        return checks


class BatchCounter(keras.callbacks.Callback):
    """Counts the epochs begun and batches trained in one `fit`, to refuse data that gave no batch."""

    def __init__(self):
        super().__init__()
        self.epochs = self.batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs += 1

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def raise_if_no_batches(self):
        if self.epochs and not self.batches:
            raise ValueError("The data gave no batches (an empty dataset or generator?).")


def state_values(model):
    """The current value of every variable of `model`, its optimizer and metrics (references, not copies)."""
    return [(variable, variable.value) for variable in _state_variables(model)]


def restore_state(model, saved):
    """After a failed `fit` / `evaluate` / `predict` on JAX: every variable readable again, as before the call.

    Keras's JAX loops move the state out of the variables while they run
    (the variables hold None) and keep the newest state aside; a failure
    inside a step loses both unless put back: the newest state from
    `jax_state_sync`, and where a variable is still empty or its buffer was
    consumed by a step that failed, its value from before the call.
    """
    model.jax_state_sync()
    for variable, value in saved:
        if _unreadable(variable) and not _is_deleted(value):
            variable.assign(value)
    unreadable = [variable.path for variable in _state_variables(model) if _unreadable(variable)]
    if unreadable:
        raise RuntimeError(f"{len(unreadable)} variables could not be restored, e.g. {unreadable[:3]}")


def _state_variables(model):
    optimizer = getattr(model, "optimizer", None)
    return list(model.variables) + (list(optimizer.variables) if optimizer is not None else []) + list(
        model.metrics_variables
    )


def _is_deleted(value):
    return value is None or bool(getattr(value, "is_deleted", lambda: False)())


def _unreadable(variable):
    try:
        value = variable.value  # an emptied variable raises here
    except TypeError:
        return True
    return _is_deleted(value)


def error_from_tensorflow(error):
    """The `ValueError` behind a TensorFlow error raised by one of our checks, or None."""
    message = getattr(error, "message", str(error))
    start = message.find(ERROR_MARK)
    if start < 0:
        # A check that ran in Python inside a TensorFlow pipeline (a PyDataset's
        # or generator's batches): TensorFlow reports the ValueError as text.
        if not type(error).__module__.startswith("tensorflow"):
            return None
        found = re.search(r"ValueError: (.*)", message)
        return ValueError(found.group(1).strip()) if found else None
    text = message[start + len(ERROR_MARK) :].split("\n")[0]
    for end in ("]", " [[", "\t"):
        text = text.split(end)[0]
    return ValueError(text.strip())


class _CheckedPyDataset(keras.utils.PyDataset):
    """A `PyDataset` whose batches are checked as they are read."""

    def __init__(self, dataset, check_data):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self._dataset = dataset
        self._check_data = check_data

    @property
    def num_batches(self):
        return self._dataset.num_batches

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        return self._check_data(self._dataset[index])

    def on_epoch_begin(self):
        self._dataset.on_epoch_begin()

    def on_epoch_end(self):
        self._dataset.on_epoch_end()


def _is_tf_dataset(x):
    module = type(x).__module__ or ""
    return module.startswith("tensorflow") and hasattr(x, "element_spec")


def _length(value):
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) == 0:
        return None
    return shape[0]


def _to_numpy(value):
    return value if isinstance(value, np.ndarray) else keras.ops.convert_to_numpy(value)
