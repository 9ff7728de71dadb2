"""`SigLIP`: an image tower, a text tower, a learnable temperature and bias."""

import contextlib
import math
import re

import keras
import numpy as np
from keras import ops

from keras_siglip import backend
from keras_siglip.models.siglip.towers import ImageEncoder, TextEncoder
from keras_siglip.models.siglip.layers.encoder_block import compile_encoder_blocks
from keras_siglip.losses import SigmoidLoss
from keras_siglip.models.siglip.input_checks import BatchChecker, BatchCounter, error_from_tensorflow, restore_state, state_values
from keras_siglip.models.siglip import finite_steps
from keras_siglip.models.siglip.micro_batches import check_micro_batch_size, encode_in_micro_batches, first_batch_size
from keras_siglip.optimizers import MultipliedLearningRateAdamW


def l2_normalize(x):
    """big_vision's normalisation: `x / (||x|| + 1e-8)`, in float32."""
    x = ops.cast(x, "float32")
    return x / (ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)) + 1e-8)


def is_weight_decayed(variable):
    """big_vision decays kernels only: no biases, norms, embeddings, probe, t' or b."""
    return variable.name == "kernel"


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIP(keras.Model):
    """A two-tower language-image model trained with the pairwise sigmoid loss.

    The call takes `{"images": (B, H, W, 3) floats in [-1, 1], "token_ids": (B, L)
    ints}` and returns `{"image_embeddings", "text_embeddings"}`, both
    L2-normalised float32 `(B, dim)`. Pair i is image i with caption i.
    `fit` needs no labels: `compute_loss` compares every image with every
    caption of the batch, using the forward pass `fit` already ran.

    With `lock_image_tower=True` this is LiT / SigLiT: the (pretrained) image
    tower is frozen and runs in inference mode, and only the text tower, t' and b
    train. Its inputs may then carry precomputed `"image_embeddings"` (B, dim)
    instead of `"images"`, so the image tower does not run at all (see
    `tools/cache_image_embeddings.py`).

    Args:
        image_encoder: an `ImageEncoder` (or any layer mapping images to
            `(B, dim)`).
        text_encoder: a `TextEncoder` with the same output width.
        log_temperature_init: float. Initial t' (t = exp(t')); log(10) as in the
            paper.
        bias_init: float. Initial logit bias; -10 as in the paper.
        lock_image_tower: bool. Freeze the image tower (LiT).
        **kwargs: standard `keras.Model` arguments (`name`, `dtype`).

    Example:
    >>> import numpy as np
    >>> model = SigLIP.from_variant("tiny", image_size=32, patch_size=8,
    ...                             vocabulary_size=100, sequence_length=8)
    >>> model.compile()
    >>> data = {"images": np.random.uniform(-1, 1, (16, 32, 32, 3)).astype("float32"),
    ...         "token_ids": np.random.randint(0, 100, (16, 8))}
    >>> history = model.fit(data, batch_size=8, epochs=1, verbose=0)
    >>> model.predict(data, verbose=0)["image_embeddings"].shape
    (16, 32)
    """

    def __init__(
        self,
        image_encoder,
        text_encoder,
        log_temperature_init=math.log(10.0),
        bias_init=-10.0,
        lock_image_tower=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "siglip")
        super().__init__(**kwargs)
        image_dim = getattr(image_encoder, "embedding_dim", None)
        text_dim = getattr(text_encoder, "embedding_dim", None)
        if None not in (image_dim, text_dim) and image_dim != text_dim:
            raise ValueError(
                f"The towers must embed into the same width; the image encoder gives {image_dim} "
                f"and the text encoder {text_dim}. Set the text encoder's output_dim."
            )
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.log_temperature_init = float(log_temperature_init)
        self.bias_init = float(bias_init)
        self.lock_image_tower = bool(lock_image_tower)
        self.micro_batch_size = None  # set by compile()
        self._traced_batch_size = None  # set by fit() where Keras traces an unknown batch size
        if self.lock_image_tower:
            self.image_encoder.trainable = False
        self.log_temperature = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.log_temperature_init),
            name="log_temperature",
        )
        self.bias = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.bias_init), name="bias"
        )
        self.built = True

    @classmethod
    def from_variant(
        cls,
        variant,
        *,
        image_size=224,
        patch_size=16,
        vocabulary_size=32_000,
        sequence_length=64,
        dtype=None,
        remat=False,
        **kwargs,
    ):
        """A SigLIP model with both towers of a named size (`"B"`, `"L"`, `"So400m"`, `"tiny"`).

        `remat=True` rematerialises the encoder blocks of both towers (see
        `ImageEncoder`), trading about a third more compute for larger batches.

        Example:
        >>> model = SigLIP.from_variant("B", image_size=224, patch_size=16)  # doctest: +SKIP
        """
        image_encoder = ImageEncoder.from_variant(
            variant, image_size=image_size, patch_size=patch_size, dtype=dtype, remat=remat
        )
        text_encoder = TextEncoder.from_variant(
            variant, vocabulary_size=vocabulary_size, sequence_length=sequence_length, dtype=dtype, remat=remat
        )
        return cls(image_encoder, text_encoder, dtype=dtype, **kwargs)

    @staticmethod
    def get_layout_map(device_mesh, model_dim="model", batch_dim="batch"):
        """A `keras.distribution.LayoutMap` splitting both towers' large weights over a mesh.

        See `keras_siglip.distribution.get_layout_map`. Build the model inside the
        distribution's scope: SigLIP creates its weights at construction.

        Example (JAX, 8 devices):
        ```python
        mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"),
                                             keras.distribution.list_devices())
        strategy = keras.distribution.ModelParallel(
            layout_map=SigLIP.get_layout_map(mesh), batch_dim_name="batch")
        with strategy.scope():
            model = SigLIP.from_variant("B")
        ```
        """
        from keras_siglip import distribution

        return distribution.get_layout_map(device_mesh, model_dim=model_dim, batch_dim=batch_dim)

    # -- forward ---------------------------------------------------------

    def encode_images(self, images, training=None):
        """L2-normalised float32 image embeddings `(B, dim)`.

        NumPy images are checked for NaN and infinite values first (they are
        on the host already); tensors are not read.
        """
        if isinstance(images, np.ndarray):
            self.batch_checker.check({"images": images})
        elif isinstance(images, dict) and all(isinstance(v, np.ndarray) for v in images.values()):
            self.batch_checker.check(images)  # a NaFlex batch
        return l2_normalize(self._run_tower(self.image_encoder, images, training))

    def encode_texts(self, token_ids, training=None):
        """L2-normalised float32 text embeddings `(B, dim)`.

        NumPy token ids are checked against the vocabulary first (they are on
        the host already); tensors are not read.
        """
        if isinstance(token_ids, np.ndarray):
            self.batch_checker.check({"token_ids": token_ids})
        return l2_normalize(self._run_tower(self.text_encoder, token_ids, training))

    def _run_tower(self, tower, inputs, training):
        locked = tower is self.image_encoder and self.lock_image_tower
        tower_training = False if locked else training  # a locked tower always runs in inference mode
        if training and self.micro_batch_size:
            return encode_in_micro_batches(
                lambda rows: tower(rows, training=tower_training), inputs, self.micro_batch_size,
                rematerialise=not locked,
            )
        return tower(inputs, training=tower_training)

    def __call__(self, inputs, *args, **kwargs):
        # NumPy values are checked while still NumPy: Keras converts them to
        # the backend's tensors first, and JAX's int32 would wrap an int64 id
        # of 2**32 + 58 to 58.
        arrays = {key: value for key, value in inputs.items() if isinstance(value, np.ndarray)} \
            if isinstance(inputs, dict) else {}
        if arrays:
            self.validate_inputs(inputs)  # shapes and dtypes first: their errors name the tower and the shape
            self.batch_checker.check(arrays)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None):
        images, token_ids = self.validate_inputs(inputs)
        if "image_embeddings" in inputs:  # precomputed by the locked tower
            image_embeddings = l2_normalize(images)
        else:
            image_embeddings = self.encode_images(images, training=training)
        return {
            "image_embeddings": image_embeddings,
            "text_embeddings": self.encode_texts(token_ids, training=training),
        }

    def validate_inputs(self, inputs):
        """Checks an input dict's keys, shapes and dtypes; returns `(images, token_ids)` or raises `ValueError`.

        Only what is known when the forward pass is traced is checked here:
        the values (token ids inside the vocabulary, finite pixels) are
        checked where batches enter `fit`, `evaluate` and `predict`
        (`batch_checker`), never inside the forward pass. With a locked image tower, `"image_embeddings"` may replace `"images"`;
        it then comes back in the `images` slot.
        """
        tower_keys = getattr(self.image_encoder, "input_keys", None)  # a tower taking a dict (NaFlex)
        groups = [tuple(tower_keys) if tower_keys else ("images",)]
        if self.lock_image_tower:
            groups.append(("image_embeddings",))
        keys = set(inputs) if isinstance(inputs, dict) else None
        if keys is None or not any(keys == {*group, "token_ids"} for group in groups):
            got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            expected = " or ".join(", ".join(repr(k) for k in group) for group in groups)
            raise ValueError(f"SigLIP expects a dict with keys {expected} and 'token_ids'; got {got}.")
        if "image_embeddings" in keys:
            images = self._validate_image_embeddings(inputs["image_embeddings"])
        elif tower_keys:
            images = {key: inputs[key] for key in tower_keys}
            self.image_encoder.validate_inputs(images)
        else:
            images = self.image_encoder.validate_inputs(inputs["images"])
        token_ids = self.text_encoder.validate_inputs(inputs["token_ids"])
        if token_ids.shape[1] == 0:
            raise ValueError(f"token ids of shape {tuple(token_ids.shape)} hold no tokens; a caption needs at least one.")
        first_image_input = next(iter(images.values())) if isinstance(images, dict) else images
        image_batch, text_batch = first_image_input.shape[0], token_ids.shape[0]
        if 0 in (image_batch, text_batch):
            raise ValueError("SigLIP got an empty batch (0 pairs); the loss compares the pairs of a batch.")
        if None not in (image_batch, text_batch) and image_batch != text_batch:
            raise ValueError(
                "SigLIP needs one caption per image: got a batch of "
                f"{image_batch} images and {text_batch} token sequences."
            )
        return images, token_ids

    def _validate_image_embeddings(self, embeddings):
        width = getattr(self.image_encoder, "embedding_dim", None)
        shape = tuple(embeddings.shape)
        if len(shape) != 2 or (width is not None and shape[1] != width):
            raise ValueError(
                f"image_embeddings must have shape (batch, {width}), the image tower's output; "
                f"got {shape}."
            )
        return embeddings

    def similarity(self, image_embeddings, text_embeddings):
        """The logits `exp(t') * image @ text.T + b`, shape (images, texts)."""
        scale = ops.exp(ops.cast(self.log_temperature, "float32"))
        return scale * ops.matmul(image_embeddings, ops.transpose(text_embeddings)) + ops.cast(
            self.bias, "float32"
        )

    # -- training ----------------------------------------------------------

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        learning_rate=1e-3,
        weight_decay=1e-4,
        beta_2=0.95,
        global_clipnorm=1.0,
        image_tower_learning_rate_multiplier=None,
        micro_batch_size=None,
        **kwargs,
    ):
        """Configures training with the paper's defaults.

        `optimizer="auto"` is AdamW (learning rate 1e-3, weight decay 1e-4,
        beta_2 0.95, gradients clipped to global norm 1.0, as in big_vision's
        configs); `learning_rate` may be a `keras.optimizers.schedules` schedule
        (for example `CosineDecay` with `warmup_steps`). With any optimizer that
        has weight decay, only kernels are decayed: never biases, norms,
        embeddings, the MAP probe, the temperature or the bias. `loss="auto"` is
        `SigmoidLoss()`; pass `SoftmaxLoss()` for the CLIP baseline.

        `jit_compile=True` on PyTorch compiles each encoder block with
        `torch.compile` (one graph serves every block of a tower) and runs the
        rest of the step eagerly; on JAX and TensorFlow XLA compiles the whole
        step, as Keras does by default.

        `image_tower_learning_rate_multiplier` (for example 0.1) is the paper's
        unlocked LiT variant: a pretrained image tower that trains at that
        fraction of the learning rate and without weight decay (needs
        `optimizer="auto"`).

        `micro_batch_size=m` trains on batches of B pairs with the memory of m:
        the towers run m pairs at a time and are recomputed in the backward
        pass, while the loss sees all B embeddings, so the gradients (and the
        one optimizer step per batch) are exactly those of the full batch, at
        the price of one more forward pass (see
        `keras_siglip.models.siglip.micro_batches`). B must be a multiple of
        m. Unlike Keras's `gradient_accumulation_steps`, which averages
        small-batch gradients and so shows each small batch only its own
        negatives, this keeps the contrastive objective of the whole batch.
        """
        micro_batch_size = check_micro_batch_size(micro_batch_size)
        if micro_batch_size and getattr(self.image_encoder, "input_keys", None):
            raise ValueError("micro_batch_size splits one image tensor; this image tower takes a dict "
                             f"({', '.join(self.image_encoder.input_keys)}). Train it without micro-batches.")
        image_paths = [v.path for v in self.image_encoder.trainable_variables]
        if image_tower_learning_rate_multiplier is not None:
            if optimizer != "auto":
                raise ValueError("image_tower_learning_rate_multiplier needs optimizer='auto'.")
            if not image_paths:
                raise ValueError(
                    "image_tower_learning_rate_multiplier is set but the image tower has no "
                    "trainable weights (is it locked?)."
                )
            optimizer = MultipliedLearningRateAdamW(
                learning_rate_multipliers={
                    "^(" + "|".join(re.escape(p) for p in image_paths) + ")$": image_tower_learning_rate_multiplier
                },
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                beta_2=beta_2,
                global_clipnorm=global_clipnorm,
            )
        elif optimizer == "auto":
            optimizer = keras.optimizers.AdamW(
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                beta_2=beta_2,
                global_clipnorm=global_clipnorm,
            )
        if loss == "auto":
            loss = SigmoidLoss()
        if not callable(loss):
            raise ValueError(
                "SigLIP's loss must be a callable taking (y_true, y_pred_dict), such as "
                f"keras_siglip.SigmoidLoss() or SoftmaxLoss(); got {loss!r}."
            )
        optimizer = keras.optimizers.get(optimizer)
        if micro_batch_size:
            self._check_micro_batching_supported(optimizer)
        self.micro_batch_size = micro_batch_size
        if getattr(optimizer, "weight_decay", None) and hasattr(optimizer, "exclude_from_weight_decay"):
            multiplied = getattr(optimizer, "learning_rate_multiplier", lambda v: 1.0)
            optimizer.exclude_from_weight_decay(
                var_list=[
                    v
                    for v in self.trainable_variables
                    if not is_weight_decayed(v) or multiplied(v) != 1.0
                ]
            )
        # On PyTorch, `jit_compile=True` compiles each encoder block rather than
        # the whole step: Keras's whole-step torch.compile recompiles again and
        # again through its layer machinery.
        self.compiles_encoder_blocks = backend.BACKEND == "torch" and kwargs.get("jit_compile") is True
        compile_encoder_blocks(self, jit_compile=self.compiles_encoder_blocks)
        if self.compiles_encoder_blocks:
            kwargs["jit_compile"] = False
        # fit's logs count the steps skipped for a loss or gradient that is not finite (finite_steps.py).
        self.skipped_steps = keras.metrics.Sum(name="skipped_steps")
        # Keras's own loss container cannot route our dict; keeping it empty also
        # spares train_on_batch a symbolic rebuild per call.
        super().compile(optimizer=optimizer, loss=None, **kwargs)
        self.loss = loss

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:  # {} when never compiled: nothing to re-compile on load
            config["loss"] = keras.saving.serialize_keras_object(self.loss)
            if getattr(self, "compiles_encoder_blocks", False):
                config["jit_compile"] = True
            if self.micro_batch_size:
                config["micro_batch_size"] = self.micro_batch_size
        return config

    def _check_micro_batching_supported(self, optimizer):
        if getattr(optimizer, "gradient_accumulation_steps", None):
            raise ValueError(
                "micro_batch_size already gives the whole batch's gradient; the optimizer's "
                "gradient_accumulation_steps would average several batches' gradients on top of it "
                "(each with only its own negatives). Use one or the other."
            )
        towers = [self.text_encoder] + ([] if self.lock_image_tower else [self.image_encoder])
        batch_statistics = [  # BatchNormalization's running statistics
            v.path for tower in towers for v in tower.variables if v.name in ("moving_mean", "moving_variance")
        ]
        if batch_statistics:
            raise ValueError(
                "micro_batch_size needs towers that treat every example independently; these "
                f"weights are running batch statistics: {batch_statistics[:3]}. Freeze them or train without "
                "micro-batches."
            )

    def compile_from_config(self, config):
        """Re-compiles a loaded model with its saved optimizer and loss."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        self._build_optimizer()

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The contrastive loss of the forward pass `fit` already ran (`y_pred`)."""
        if y_pred is None:
            y_pred = self(x, training=training)
        loss_fn = self.loss if callable(self.loss) else SigmoidLoss()
        loss = loss_fn(
            y,
            {
                "image_embeddings": y_pred["image_embeddings"],
                "text_embeddings": y_pred["text_embeddings"],
                "log_temperature": self.log_temperature,
                "bias": self.bias,
            },
        )
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    # -- where batches enter ---------------------------------------------------
    # Values are checked here, on the host, once per batch (see input_checks.py);
    # the forward pass checks only what is known when it is traced.

    @property
    def batch_checker(self):
        """The `BatchChecker` that `fit`, `evaluate` and `predict` run on every batch."""
        image_size = getattr(self.image_encoder, "image_size", None) if "images" in self.image_input_keys else None
        return BatchChecker(self.text_encoder.vocabulary_size, self.image_input_keys,
                            sequence_length=self.text_encoder.sequence_length, image_size=image_size,
                            text_tower=self.text_encoder.name, image_tower=self.image_encoder.name)

    @property
    def image_input_keys(self):
        """The input keys that may carry the images: also `"image_embeddings"` when the image tower is locked."""
        tower_keys = tuple(getattr(self.image_encoder, "input_keys", None) or ("images",))
        return tower_keys + ("image_embeddings",) if self.lock_image_tower else tower_keys

    def _checked(self, x):
        group_size = self.steps_per_execution
        self._stream_checker = checker = self.batch_checker
        checked = checker.checked(x, group_size=group_size, on_refused=self._stop_at_refused_batch)
        if backend.BACKEND == "jax":
            # Plus one: on accelerators Keras reads one batch ahead.
            checker.check_first_batches(x, group_size + 1)
        return checked

    def _stop_at_refused_batch(self):
        self.stop_training = True

    def _build_optimizer(self):
        # Keras's TensorFlow trainer otherwise creates the optimizer's variables
        # inside the first traced step, which costs ~20 s of tracing even for a
        # tiny model; built here it costs milliseconds, as Keras's JAX and torch
        # trainers do before tracing.
        if self.built and self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, *args, validation_data=None, **kwargs):
        self._build_optimizer()
        if self.micro_batch_size and backend.BACKEND == "tensorflow":
            # Keras's TensorFlow trainer traces PyDatasets and generators with an
            # unknown batch size; micro-batches need it, so the first batch gives it.
            batch_size, x = first_batch_size(x)
            if batch_size != self._traced_batch_size:
                self.train_function = None  # traced for another batch size
            self._traced_batch_size = batch_size
        validation_checker = self.batch_checker
        if isinstance(validation_data, tuple):  # (x,) or (x, y) arrays
            validation_data = (validation_checker.check(validation_data[0]),) + validation_data[1:]
        elif validation_data is not None:
            validation_data = validation_checker.checked(validation_data, on_refused=self._stop_at_refused_batch)
        counter = BatchCounter()
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [counter]
        with self._bad_batches_refused():
            history = super().fit(self._checked(x), *args, validation_data=validation_data, **kwargs)
        self._raise_if_refused()
        counter.raise_if_no_batches()
        if getattr(validation_checker, "refused", None) is not None:
            raise validation_checker.refused
        return history

    def evaluate(self, x=None, *args, **kwargs):
        with self._bad_batches_refused():
            results = super().evaluate(self._checked(x), *args, **kwargs)
        self._raise_if_refused()
        return self._without_skipped_steps(results)

    def predict(self, x, *args, **kwargs):
        with self._bad_batches_refused():
            outputs = super().predict(self._checked(x), *args, **kwargs)
        self._raise_if_refused()
        return outputs

    def _raise_if_refused(self):
        refused, self._stream_checker.refused = self._stream_checker.refused, None
        if refused is not None:
            raise refused

    def train_on_batch(self, x=None, *args, **kwargs):
        self._build_optimizer()
        with self._bad_batches_refused():
            result = super().train_on_batch(self.batch_checker.check(x), *args, **kwargs)
        return self._without_skipped_steps(result)

    def _without_skipped_steps(self, result):
        # The counter of skipped training steps is no result of its own: a list
        # result comes back as it would without it (the loss alone, as a float).
        if isinstance(result, list) and "skipped_steps" in self.metrics_names:
            result = list(result)
            del result[self.metrics_names.index("skipped_steps")]
            result = result[0] if len(result) == 1 else result
        return result

    def test_on_batch(self, x=None, *args, **kwargs):
        with self._bad_batches_refused():
            return self._without_skipped_steps(super().test_on_batch(self.batch_checker.check(x), *args, **kwargs))

    def predict_on_batch(self, x):
        with self._bad_batches_refused():
            return super().predict_on_batch(self.batch_checker.check(x))

    def train_step(self, *args):
        data = args[-1]
        if self._traced_batch_size:
            data = backend.with_static_batch_size(data, self._traced_batch_size)
        # TensorFlow fetches a batch inside the step; this makes every update of
        # the step wait for the batch, so a batch that fails its check changes nothing.
        with backend.updates_wait_for(data, xla=self.jit_compile is True):
            if backend.BACKEND == "jax":
                logs, state = super().train_step(*args[:-1], data)
                state, skipped = finite_steps.keep_if_finite_jax(self, args[0], state, self.skipped_steps)
                return dict(logs, skipped_steps=skipped), state
            before = [ops.copy(v.value) for v in finite_steps.guarded_variables(self)]
            logs = super().train_step(data)
            finite_steps.keep_if_finite_in_place(self, before, self.skipped_steps)
            return dict(logs, skipped_steps=self.skipped_steps.result())

    def test_step(self, *args):
        with backend.updates_wait_for(args[-1], xla=self.jit_compile is True):
            return super().test_step(*args)

    @contextlib.contextmanager
    def _bad_batches_refused(self):
        """Turns our checks' TensorFlow errors into `ValueError`; keeps a JAX model's state readable."""
        saved = state_values(self) if backend.BACKEND == "jax" else None
        try:
            yield
        except Exception as error:
            if backend.BACKEND == "jax":
                try:
                    restore_state(self, saved)
                except Exception as sync_error:
                    error.add_note(f"Restoring the model's state after this error failed too: {sync_error!r}")
            if self._traced_batch_size and backend.is_batch_size_error(error):
                raise ValueError(
                    "With micro_batch_size on the TensorFlow backend, every batch of a PyDataset or generator "
                    f"must have as many pairs as the first ({self._traced_batch_size}); a later batch differs."
                ) from None
            if isinstance(error, UnboundLocalError) and "logs" in str(error):  # Keras's loops, given no batch
                raise ValueError("The data gave no batches (an empty dataset or generator?).") from None
            converted = error_from_tensorflow(error)  # a tf.data pipeline runs on every backend
            if converted is not None:
                raise converted from None
            raise

    # -- serialisation ------------------------------------------------------

    @classmethod
    def from_preset(cls, handle, load_weights=True, dtype=None):
        """A SigLIP from a built-in preset name, a preset folder or a checkpoint handle.

        Accepts a name from `keras_siglip.list_presets()`, a folder written by
        `save_to_preset`, a transformers SigLIP folder or `hf://` handle, a
        keras-hub SigLIP preset (folder, `kaggle://` handle or keras-hub name) and
        a big_vision `.npz`; see `keras_siglip.presets`. `load_weights=False`
        builds the architecture only.

        Example:
        >>> model = SigLIP.from_preset("siglip_tiny_patch4_16")
        >>> model.count_params()
        48258
        """
        from keras_siglip import presets

        return presets.from_preset(handle, load_weights=load_weights, dtype=dtype)

    def save_to_preset(self, preset_dir, tokenizer=None, image_converter=None):
        """Writes config.json, metadata.json and model.weights.h5 (keras-hub's layout) to `preset_dir`.

        A `tokenizer` and `image_converter` given here are saved alongside, with
        their assets, and come back from `keras_siglip.presets.load_preset`.

        Example:
        >>> import tempfile
        >>> model = SigLIP.from_preset("siglip_tiny_patch4_16")
        >>> folder = tempfile.mkdtemp()
        >>> model.save_to_preset(folder)
        >>> SigLIP.from_preset(folder).count_params()
        48258
        """
        from keras_siglip import presets

        presets.save_preset(preset_dir, self, tokenizer=tokenizer, image_converter=image_converter)


    # -- serving -------------------------------------------------------------

    def tower_model(self, tower):
        """The `"image"` or `"text"` tower as a `TowerModel`: embeddings out, `export` with no signature.

        Example:
        >>> model = SigLIP.from_variant("tiny", image_size=32, patch_size=8,
        ...                             vocabulary_size=100, sequence_length=8)
        >>> model.tower_model("image").input_signature()
        InputSpec(dtype=float32, shape=(None, 32, 32, 3), ndim=4)
        """
        from keras_siglip.models.siglip.tower_model import TowerModel

        return TowerModel(self, tower)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, batch_size=None,
               num_patches=None, **kwargs):
        """`keras.Model.export` of the two-tower call, its input signature read from the towers.

        The artifact takes `{"images", "token_ids"}` and returns both
        embeddings; to serve one tower, export `tower_model("image")` or
        `tower_model("text")` (see `TowerModel.export` for the formats each
        backend supports, `batch_size` and a NaFlex tower's `num_patches`).
        """
        from keras_siglip.models.siglip.tower_model import TowerModel

        if input_signature is None:
            image, text = (TowerModel(self, tower) for tower in ("image", "text"))
            batch_size = image.static_batch_size(format, batch_size)
            image.check_patch_count(format, num_patches)
            images = image.input_signature(batch_size, num_patches=num_patches)
            images = images if isinstance(images, dict) else {"images": images}
            input_signature = [{**images, "token_ids": text.input_signature(batch_size)}]
            if batch_size is None:
                kwargs = {**backend.dynamic_batch_export_kwargs(format, input_signature), **kwargs}
        return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature,
                              **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
                "text_encoder": keras.saving.serialize_keras_object(self.text_encoder),
                "log_temperature_init": self.log_temperature_init,
                "bias_init": self.bias_init,
                "lock_image_tower": self.lock_image_tower,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["image_encoder"] = keras.saving.deserialize_keras_object(config["image_encoder"])
        config["text_encoder"] = keras.saving.deserialize_keras_object(config["text_encoder"])
        return cls(**config)
