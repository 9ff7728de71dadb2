r"""The main job on your own image-caption files: streamed, resumable, evaluated.

    python -m keras_siglip.train --train_data='data/{00000..00099}.tar' \
        --val_data=val.csv --steps=10000 --batch_size=256 --preset=siglip_base_patch16_224

`keras_siglip.train.run` comes here when `--train_data` is set. The data are
read by `keras_siglip.data` as one endless, seeded stream (`repeat=True`: the
files are reshuffled each pass, so `--steps` never runs out of data and no
shard needs to fit in memory); each process of a multi-host job reads its own
shards. Every `--checkpoint_every` steps the crash-recovery backup is written
and, beside it, the stream position (`data_position.json`, written atomically,
keyed by step): after `kill -9` the same command restores the weights,
optimizer and step and skips the stream to where that step left it (the
samples before are read again, not decoded), so the run ends with the weights
of an uninterrupted one. The progress bar shows `pairs_per_second` and
`images_per_second` (images read, unreadable ones included).
"""

import json
import math
import os
import pathlib
import time

import keras
import numpy as np

from keras_siglip import SigLIP, SigmoidLoss, SoftmaxLoss, evaluation, train
from keras_siglip.callbacks import AtomicWeightsCheckpoint
from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor
from keras_siglip.templates import DEFAULT_TEMPLATES

MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json")


def data_format(spec, declared="auto"):
    """`"manifest"`, `"webdataset"` or `"tfrecord"` for a `--train_data` value (by extension unless declared)."""
    if declared != "auto":
        return declared
    first = spec.split(",")[0].lower()
    if first.endswith(MANIFEST_EXTENSIONS):
        return "manifest"
    if ".tar" in first:
        return "webdataset"
    if ".tfrecord" in first or ".tfrec" in first:
        return "tfrecord"
    raise ValueError(f"Cannot tell the layout of {spec!r} from its name: pass --data_format.")


def read_data(spec, config, tokenizer, preprocessor, batch_size, **options):
    """A reader's `tf.data.Dataset` for `spec` with the job's column / key settings."""
    from keras_siglip.data import readers

    kind = data_format(spec, config["data_format"])
    options.setdefault("shuffle_buffer", config["shuffle_buffer"])
    image_key, caption_key = config["image_key"], config["caption_key"]
    if kind == "manifest":
        keys = {"image_column": image_key or "image", "caption_column": caption_key or "caption"}
        return readers.read_manifest(spec, tokenizer, preprocessor, batch_size, image_root=config["image_root"],
                                     **keys, **options)
    shards = spec.split(",") if "," in spec and "{" not in spec else spec
    if kind == "webdataset":
        keys = {"caption_extension": caption_key or "txt"}
        if image_key:
            keys["image_extensions"] = tuple(image_key.split("|"))
        return readers.read_tar_shards(shards, tokenizer, preprocessor, batch_size, **keys, **options)
    keys = {"image_feature": image_key or "jpg", "caption_feature": caption_key or "txt"}
    return readers.read_tfrecords(shards, tokenizer, preprocessor, batch_size, **keys, **options)


def build(config):
    """`(model, tokenizer, image_preprocessor)`: from `--preset`, or fresh from the width flags."""
    from keras_siglip import SigLIPImagePreprocessor, presets

    tokenizer = preprocessor = None
    if config["preset"]:
        model, tokenizer, preprocessor = presets.load_preset(config["preset"])
    else:
        if config["image_size"] is None:
            raise ValueError("--train_data without --preset needs --image_size.")
        tokenizer = train._tokenizer(config["sequence_length"], config["tokenizer"])
        config = dict(config, vocabulary_size=tokenizer.vocabulary_size())
        model, _ = train.build_model(config)
    if config["tokenizer"] and config["preset"]:
        tokenizer = train._tokenizer(model.text_encoder.sequence_length, config["tokenizer"])
    if tokenizer is None:
        raise ValueError(f"Preset {config['preset']!r} has no tokenizer: pass --tokenizer=path/to/spiece.model.")
    if config["max_num_patches"] is not None:
        if not isinstance(preprocessor, NaFlexImagePreprocessor):
            raise ValueError("--max_num_patches is for NaFlex presets; this model takes fixed-size images "
                             f"({model.image_encoder.image_size} px).")
        preprocessor = NaFlexImagePreprocessor.from_config(
            dict(preprocessor.get_config(), max_num_patches=config["max_num_patches"]))
    if preprocessor is None:
        preprocessor = SigLIPImagePreprocessor(model.image_encoder.image_size)
    if config["lock_image_tower"] and not model.lock_image_tower:
        locked = SigLIP(model.image_encoder, model.text_encoder, log_temperature_init=model.log_temperature_init,
                        bias_init=model.bias_init, lock_image_tower=True)
        locked.log_temperature.assign(model.log_temperature)
        locked.bias.assign(model.bias)
        model = locked
    return model, tokenizer, preprocessor


def training_preprocessor(preprocessor, config):
    """The evaluation preprocessor with the augmentation flags switched on (NaFlex: refused, it has none)."""
    from keras_siglip import SigLIPImagePreprocessor

    if isinstance(preprocessor, NaFlexImagePreprocessor):
        flags = [f"--{name}" for name in ("random_resized_crop", "horizontal_flip") if config[name]]
        if flags:
            raise ValueError(f"{' and '.join(flags)}: a NaFlex preset keeps each image whole at its own aspect "
                             "ratio, so the main job does not augment its images; drop the flag(s).")
        return preprocessor
    settings = preprocessor.get_config()
    settings.update(random_resized_crop=config["random_resized_crop"], horizontal_flip=config["horizontal_flip"])
    return SigLIPImagePreprocessor.from_config(settings)


def mesh_shape(config):
    """The `(batch, model)` shape of `--mesh`, or None; a ValueError names a malformed or unused one."""
    if not config["mesh"]:
        return None
    if config["distribution"] != "model":
        raise ValueError(f"--mesh={config['mesh']} is the (batch, model) mesh of --distribution=model; "
                         f"got --distribution={config['distribution']}.")
    parts = str(config["mesh"]).split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"--mesh={config['mesh']} must be two positive integers, batch,model (e.g. 2,4).")
    return tuple(int(part) for part in parts)


def check_distribution(config):
    """Raises ValueError for a `--distribution` / `--mesh` the run cannot use, before any work is done.

    Args:
        config: the job's settings.
    """
    mesh_shape(config)
    if config["distribution"] != "none":
        from keras_siglip import distribution

        distribution.require_jax(f"--distribution={config['distribution']}")
    if config["multi_host"] and config["distribution"] != "data":
        raise ValueError(f"--multi_host trains with --distribution=data (each host its own shards, the weights "
                         f"replicated); got --distribution={config['distribution']}.")


def check_multi_host(config, strategy, processes):
    """Raises ValueError for a setting a job of several processes cannot run."""
    if strategy is None:
        raise ValueError(f"This job has {processes} processes: pass --multi_host --distribution=data, so they "
                         "train one model together.")
    evaluated = [f"--{name}" for name in ("val_data", "zero_shot_classes") if config[name]]
    if evaluated:
        raise ValueError(f"{', '.join(evaluated)}: the main job evaluates on one process only; evaluate the "
                         "written preset afterwards (keras_siglip.evaluation) instead.")


def strategy_of(config):
    """The `keras.distribution` set-up of `--distribution` / `--mesh` (JAX), or None."""
    if config["distribution"] == "none":
        return None
    from keras_siglip import distribution

    if config["distribution"] == "data":
        return distribution.data_parallel()
    mesh = mesh_shape(config)
    if mesh is None:
        mesh = (1, len(keras.distribution.list_devices()))
    return distribution.model_parallel(mesh)


class StreamPosition(keras.callbacks.Callback):
    """Resumes the training stream where the restored step left it, and records where each checkpoint is.

    Placed after the backup callback: at `on_train_begin` the step is the
    restored one; its stream position (read from `path`) is put in
    `start_variable`, which the dataset reads when `fit` iterates it. Every
    `every` steps the position after that step is added to `path` (atomically,
    the last few steps kept), before the epoch's backup is written.

    Args:
        positions: the dataset's `StreamPositions`.
        start_variable: the int64 `tf.Variable` the dataset skips by.
        path: the JSON file of `{step: position}`.
        every: steps between checkpoints.
    """

    def __init__(self, positions, start_variable, path, every):
        super().__init__()
        self.positions, self.start_variable, self.path, self.every = positions, start_variable, path, every
        self.end = 0

    def recorded(self):
        if not os.path.exists(self.path):
            return {}
        with open(self.path) as f:
            return {int(step): int(end) for step, end in json.load(f).items()}

    def on_train_begin(self, logs=None):
        self.first_step = self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        recorded = self.recorded()
        if self.first_step and self.first_step not in recorded:
            raise ValueError(f"The checkpoint at step {self.first_step} has no data position in {self.path} "
                             f"(recorded steps: {sorted(recorded)}); remove the workdir's backup/ to start over.")
        self.start = recorded.get(self.first_step, 0)
        self.end = self.start
        self.start_variable.assign(self.start)

    def on_train_batch_end(self, batch, logs=None):
        self.end = self.positions.end_of(self.step - self.first_step, self.start)
        self.step += 1
        if self.step % self.every == 0:
            recorded = self.recorded()
            recorded[self.step] = self.end
            kept = dict(sorted(recorded.items())[-5:])
            train.write_atomically(self.path, json.dumps({str(k): v for k, v in kept.items()}))


class Throughput(keras.callbacks.Callback):
    """Puts `pairs_per_second` and `images_per_second` (images read) of the current epoch in the logs."""

    def __init__(self, batch_size, images_read):
        super().__init__()
        self.batch_size, self.images_read = batch_size, images_read
        self.rates = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.batches, self.read_before = time.perf_counter(), 0, self.images_read()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        seconds = max(time.perf_counter() - self.started, 1e-9)
        if logs is not None:
            logs["pairs_per_second"] = self.batch_size * self.batches / seconds
            logs["images_per_second"] = (self.images_read() - self.read_before) / seconds

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        self.rates.append(self.batch_size * self.batches / seconds)


class SkipLimit(keras.callbacks.Callback):
    """Stops training with a ValueError once more than `limit` images could not be read."""

    def __init__(self, skipped, limit):
        super().__init__()
        self.skipped, self.limit = skipped, limit

    def on_train_batch_end(self, batch, logs=None):
        if self.skipped.count > self.limit:
            raise ValueError(f"{self.skipped.count} images or rows could not be read, over "
                             f"--max_skipped_images={self.limit}; the first: {', '.join(self.skipped.names)}. "
                             "The last checkpoint is kept.")


def zero_shot_set(config, tokenizer, preprocessor):
    """`(classifier_prompts, images, labels)` of `--zero_shot_classes` on `--zero_shot_data`, or None."""
    if not config["zero_shot_classes"]:
        return None
    if not config["zero_shot_data"]:
        raise ValueError("--zero_shot_classes needs --zero_shot_data (images whose caption is the class name).")
    names = [line.strip() for line in open(config["zero_shot_classes"]) if line.strip()]
    templates = list(DEFAULT_TEMPLATES)
    if config["zero_shot_templates"]:
        templates = [line.rstrip("\n") for line in open(config["zero_shot_templates"]) if line.strip()]
    data = evaluation.collect_batches(read_data(config["zero_shot_data"], config, tokenizer, preprocessor, 64,
                                                training=False, drop_remainder=False, with_captions=True,
                                                shard=(0, 1)))
    index = {name: i for i, name in enumerate(names)}
    captions = [c.decode("utf-8").strip() for c in data["captions"]]
    unknown = sorted(set(captions) - set(index))
    if unknown:
        raise ValueError(f"--zero_shot_data has classes not in {config['zero_shot_classes']}: {unknown[:5]}.")
    return names, templates, evaluation.image_inputs(data), np.array([index[c] for c in captions])


def run(config):
    """Trains on `config["train_data"]`, evaluates, writes the workdir; returns the results dict.

    The run computes under the dtype policy `--precision`; the global policy
    the caller had is put back afterwards, whether the run ends or fails.

    Args:
        config: the job's settings (`keras_siglip.train.default_config`).
    """
    if config["steps"] < 1 or config["checkpoint_every"] < 1:
        raise ValueError("--steps and --checkpoint_every must be positive.")
    check_distribution(config)
    if config["multi_host"]:
        from keras_siglip import distribution

        distribution.initialize_multi_host()  # before any other JAX work
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config["precision"])
    try:
        return _train_and_report(config)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _train_and_report(config):
    import tensorflow as tf

    from keras_siglip import backend
    from keras_siglip.data import readers

    started = time.time()
    strategy = strategy_of(config)
    process, processes = backend.process_index_and_count()
    if config["batch_size"] % processes:
        raise ValueError(f"--batch_size={config['batch_size']} must be divisible by {processes} processes.")
    if processes > 1:
        check_multi_host(config, strategy, processes)
        strategy.auto_shard_dataset = False  # each process's reader already reads only its own shards
    workdir = pathlib.Path(config["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    if process == 0:
        train.record_settings(config, workdir)
    local_batch = config["batch_size"] // processes
    keras.utils.set_random_seed(config["seed"])
    # Distribution.scope() is a one-shot context manager: each block asks for a new one.
    scope = strategy.scope if strategy is not None else _no_scope
    with scope():
        model, tokenizer, preprocessor = build(config)

    epochs = math.ceil(config["steps"] / config["checkpoint_every"])
    total_steps = epochs * config["checkpoint_every"]
    start = tf.Variable(0, dtype=tf.int64, trainable=False)
    positions = readers.StreamPositions()
    skipped = readers.SkippedImages()
    dataset = read_data(config["train_data"], config, tokenizer, training_preprocessor(preprocessor, config),
                        local_batch, seed=config["seed"], repeat=True, start_position=start, positions=positions,
                        skipped=skipped)
    val = None
    if config["val_data"]:
        val = evaluation.collect_batches(read_data(config["val_data"], config, tokenizer, preprocessor, 64,
                                                   training=False, drop_remainder=False, shard=(0, 1),
                                                   with_captions=True))
    zero_shot = zero_shot_set(config, tokenizer, preprocessor)

    with scope():
        model.compile(
            loss=SigmoidLoss() if config["loss"] == "sigmoid" else SoftmaxLoss(),
            learning_rate=train.learning_rate_schedule(config["learning_rate"], config["warmup_steps"], total_steps),
            weight_decay=config["weight_decay"],
            micro_batch_size=config["micro_batch_size"],
            image_tower_learning_rate_multiplier=config["image_tower_learning_rate_multiplier"],
        )
    # In a multi-host job every process keeps its own backup and stream position (each restores its own);
    # the files that are the same on every process (checkpoint, loss log, TensorBoard) come from process 0.
    suffix = "" if processes == 1 else f".{process}-of-{processes}"
    stream = StreamPosition(positions, start, str(workdir / f"data_position{suffix}.json"), config["checkpoint_every"])
    throughput = Throughput(local_batch, lambda: stream.end)
    callbacks = [train.backup_callback(workdir, suffix), stream, throughput]
    if process == 0:
        callbacks.append(train.StepLossLog(str(workdir / "loss.csv")))
    if config["max_skipped_images"] is not None:
        callbacks.append(SkipLimit(skipped, config["max_skipped_images"]))
    if config["eval_every"]:
        schedule = dict(every_n_steps=config["eval_every"], every_n_epochs=None)
        if val is not None:
            callbacks.append(evaluation.RetrievalCallback(pairs=val, ks=(1, 5, 10), **schedule))
        if zero_shot is not None:
            names, templates, images, labels = zero_shot
            classifier = evaluation.ZeroShotClassifier(model, tokenizer, names, templates)
            callbacks.append(evaluation.ZeroShotCallback(classifier, images, labels, **schedule))
    if process == 0:
        callbacks.append(AtomicWeightsCheckpoint(str(workdir / "checkpoint.weights.h5")))
    if config["tensorboard"] and process == 0:
        callbacks.append(keras.callbacks.TensorBoard(str(workdir / "tensorboard"), update_freq="epoch"))
    with scope():  # under the distribution, fit splits each batch over the devices
        model.fit(dataset, epochs=epochs, steps_per_epoch=config["checkpoint_every"], callbacks=callbacks,
                  verbose=config["verbose"], shuffle=False)
    train_seconds = time.time() - started

    results = {
        "train_data": config["train_data"],
        "backend": keras.backend.backend(),
        "steps": total_steps,
        "batch_size": config["batch_size"],
        "loss": config["loss"],
        "parameters": int(model.count_params()),
        "skipped_images": {"count": skipped.count, "first": skipped.names},
        "truncated_captions": {"count": dataset.captions.truncated, "of": dataset.captions.seen,
                               "sequence_length": model.text_encoder.sequence_length},
        "pairs_per_second": round(float(np.median(throughput.rates[1:] or throughput.rates)), 1),
        "train_seconds": round(train_seconds, 1),
    }
    if val is not None:
        results["retrieval"] = evaluation.pair_retrieval_recall(model, val)
    if zero_shot is not None:
        names, templates, images, labels = zero_shot
        classifier = evaluation.ZeroShotClassifier(model, tokenizer, names, templates)
        results["zero_shot"] = dict(classifier.evaluate(images, labels), examples=len(labels), classes=len(names),
                                    templates=len(templates))
    if process == 0:
        preset_dir = workdir / "preset"
        model.save_to_preset(str(preset_dir), tokenizer=tokenizer, image_converter=preprocessor)
        similarity, captions = held_out_similarity(model, val) if val is not None else (np.zeros((1, 1)), [""])
        train.plot(str(workdir / "main_job.png"), train.read_loss_log(str(workdir / "loss.csv")),
                   similarity, captions, f"{config['train_data']}: {total_steps} steps x {config['batch_size']}")
    results["total_seconds"] = round(time.time() - started, 1)
    if process == 0:
        train.write_atomically(workdir / "results.json", json.dumps(results, indent=1, default=str))
        print_report(results, workdir)
    return results


def held_out_similarity(model, val, count=12):
    """`sigmoid(t * img @ txt + b)` of the first `count` `--val_data` pairs, and their captions (cut to 40 characters).

    Args:
        model: the trained `SigLIP`.
        val: `{"images" (or NaFlex's patch inputs), "token_ids", "captions"}` arrays.
        count: int, pairs to show.
    """
    images, token_ids = evaluation.first_images(evaluation.image_inputs(val), count), val["token_ids"][:count]
    similarity = train.pair_probabilities(model, evaluation.encode_images(model, images),
                                          evaluation.encode_token_ids(model, token_ids))
    captions = [bytes(c).decode("utf-8", "replace")[:40] for c in val["captions"][:count]]
    return similarity, captions


class _no_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def print_report(results, workdir):
    if "retrieval" in results:
        i2t, t2i = results["retrieval"]["image_to_text"], results["retrieval"]["text_to_image"]
        print(f"\nHeld-out retrieval recall on {results['retrieval']['pairs']} pairs (image->text | text->image):")
        print(f"  R@1 {i2t[1]:.1%} R@5 {i2t[5]:.1%} R@10 {i2t[10]:.1%} | "
              f"R@1 {t2i[1]:.1%} R@5 {t2i[5]:.1%} R@10 {t2i[10]:.1%}")
    if "zero_shot" in results:
        print(f"Zero-shot accuracy: top-1 {results['zero_shot']['top1']:.1%}  top-5 {results['zero_shot']['top5']:.1%}")
    skipped, truncated = results["skipped_images"], results["truncated_captions"]
    print(f"Skipped {skipped['count']} unreadable images{': ' + ', '.join(skipped['first']) if skipped['count'] else ''}; "
          f"truncated {truncated['count']} of {truncated['of']} captions to {truncated['sequence_length']} tokens.")
    print(f"{results['steps']} steps in {results['train_seconds']} s of training ({results['pairs_per_second']} "
          f"pairs/s), {results['total_seconds']} s in all. Wrote {workdir}/: preset/, checkpoint.weights.h5, "
          "loss.csv, results.json, flags.txt, config.json")
