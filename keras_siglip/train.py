r"""The main job: train a SigLIP from scratch and report what it learned.

    KERAS_BACKEND=jax python -m keras_siglip.train

With no flags it trains a small ViT pair on the embedded handwritten digits
(no download) and prints zero-shot accuracy and retrieval recall on held-out
digits. Everything lands in `--workdir`: `backup/` (crash recovery), the
last `checkpoint.weights.h5`, `tensorboard/`, `preset/` (reload with
`keras_siglip.presets.load_preset`), `main_job.png` (loss curve and the
image-text similarity of a held-out batch) and `results.json`.

Kill it at any time and run the same command again: `BackupAndRestore` puts
back the weights, optimizer state and step of the last checkpoint (every
`--checkpoint_every` steps), and the batches are a function of the step
alone, so the resumed run ends with the weights an uninterrupted run would.

Other data: `--dataset=digits --languages=all` (captions in six languages,
per-language accuracy) or `--dataset=shapes` (held-out colour-shape
combinations).

Your own data: `--train_data` names a CSV/TSV/JSONL manifest, webdataset tar
shards (`'data/{00000..00099}.tar'` or a glob) or TFRecord shards; the job
streams it for `--steps` steps (see `keras_siglip.train_on_files`), reports
retrieval Recall@K on `--val_data` and zero-shot accuracy with
`--zero_shot_classes` on `--zero_shot_data`, and resumes both weights and
data stream after a kill. Every setting of a run is written to the workdir
(`flags.txt`, reusable as `--flagfile=WORKDIR/flags.txt`, and `config.json`).
"""

import collections
import json
import math
import os
import pathlib
import time

import keras
import numpy as np

from keras_siglip import SigLIP, SigmoidLoss, SoftmaxLoss, evaluation
from keras_siglip.callbacks import AtomicBackupAndRestore, AtomicWeightsCheckpoint
from keras_siglip.data import digits, shapes
from keras_siglip.data.embedded import EMBEDDED_VOCABULARY, PairBatches
from keras_siglip.models.siglip.towers import ImageEncoder, TextEncoder, variant_config
from keras_siglip.models.siglip import SigLIPTokenizer

Setting = collections.namedtuple("Setting", ["name", "kind", "default", "help", "choices"], defaults=[None])

# The job's settings, in `--helpfull` order. `kind` picks the absl flag type; the
# flags are defined only by `define_flags`, which the command line (`main`) calls.
SETTINGS = (
    Setting("dataset", "enum", "digits", "Embedded dataset to train on.", ("digits", "shapes")),
    Setting("languages", "string", "en", "Digits caption languages: comma-separated codes or 'all'."),
    Setting("preset", "string", None, "Start from this preset (name, folder, hf://...) instead of a fresh model."),
    Setting("variant", "string", None, "Named tower size from keras_siglip.VARIANTS; overrides the widths below."),
    Setting("width", "integer", 64, "Tower width."),
    Setting("depth", "integer", 2, "Encoder blocks per tower."),
    Setting("num_heads", "integer", 2, "Attention heads."),
    Setting("mlp_dim", "integer", 128, "MLP hidden width."),
    Setting("image_size", "integer", None, "Image side (default 16 for digits, 32 for shapes)."),
    Setting("patch_size", "integer", 4, "ViT patch side."),
    Setting("sequence_length", "integer", 12, "Text tokens per caption."),
    Setting("loss", "enum", "sigmoid", "Contrastive loss.", ("sigmoid", "softmax")),
    Setting("batch_size", "integer", 64, "Pairs per step."),
    Setting("micro_batch_size", "integer", None,
            "Run the towers this many pairs at a time (exact full-batch gradients, less memory)."),
    Setting("steps", "integer", 600, "Training steps."),
    Setting("learning_rate", "float", 3e-3, "Peak learning rate (warmup, then cosine decay)."),
    Setting("warmup_steps", "integer", 100, "Linear warmup steps."),
    Setting("weight_decay", "float", 1e-4, "AdamW weight decay (kernels only)."),
    Setting("checkpoint_every", "integer", 100, "Steps between checkpoints (one Keras epoch)."),
    Setting("eval_every", "integer", 200, "Steps between held-out evaluations during training; 0 for none."),
    Setting("seed", "integer", 0, "Seed for initialisation and data order."),
    Setting("workdir", "string", "siglip_main_job", "Output folder; rerun with the same one to resume."),
    Setting("verbose", "integer", 1, "Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch."),
    Setting("tensorboard", "bool", True, "Write TensorBoard logs."),
    # -- your own data (keras_siglip.train_on_files) --
    Setting("train_data", "string", None,
            "Train on these files instead of --dataset: a .csv/.tsv/.jsonl manifest, tar shards "
            "('data/{00000..00099}.tar' or a glob) or TFRecord shards; comma-separated for several."),
    Setting("data_format", "enum", "auto", "Layout of --train_data/--val_data/--zero_shot_data; auto: by extension.",
            ("auto", "manifest", "webdataset", "tfrecord")),
    Setting("image_key", "string", None,
            "Manifest column / TFRecord feature of the image (default image / jpg; tar: any image extension)."),
    Setting("caption_key", "string", None, "Manifest column / tar extension / TFRecord feature of the caption "
            "(default caption / txt / txt)."),
    Setting("image_root", "string", None, "Folder relative manifest image paths start from (default: the manifest's)."),
    Setting("val_data", "string", None, "Held-out image-caption pairs (same layouts): retrieval Recall@1/5/10."),
    Setting("zero_shot_classes", "string", None, "Text file, one class name per line, for zero-shot accuracy."),
    Setting("zero_shot_templates", "string", None,
            "Text file of prompt templates with one '{}' per line (default: the 80 CLIP templates and '{}')."),
    Setting("zero_shot_data", "string", None, "Labelled images (same layouts): the caption is the class name."),
    Setting("tokenizer", "string", None,
            "SentencePiece .model for captions (default: the preset's, else the embedded vocabulary)."),
    Setting("max_num_patches", "integer", None,
            "NaFlex presets: patches per image (default: the preset's, e.g. 256); images keep their aspect ratio."),
    Setting("random_resized_crop", "bool", False, "Training augmentation: Inception-style random resized crop."),
    Setting("horizontal_flip", "bool", False, "Training augmentation: random left-right flip."),
    Setting("shuffle_buffer", "integer", 5000, "Samples in the training shuffle buffer."),
    Setting("max_skipped_images", "integer", None,
            "Stop with an error once more images than this could not be read (default: never)."),
    Setting("lock_image_tower", "bool", False, "Freeze the image tower (LiT / SigLiT fine-tuning)."),
    Setting("image_tower_learning_rate_multiplier", "float", None,
            "Train the image tower at this fraction of the learning rate (e.g. 0.1; unlocked LiT)."),
    Setting("precision", "enum", "float32", "Keras dtype policy.", ("float32", "mixed_bfloat16")),
    Setting("distribution", "enum", "none", "keras.distribution set-up (JAX).", ("none", "data", "model")),
    Setting("mesh", "string", None, "(batch, model) mesh for --distribution=model, e.g. 2,4."),
    Setting("multi_host", "bool", False,
            "--train_data on many hosts: join the job first (keras.distribution.initialize; on Cloud TPU from its "
            "environment, elsewhere from KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES and _PROCESS_ID). Every "
            "host runs the same command with --distribution=data."),
)

def backup_callback(workdir, suffix=""):
    """The crash-recovery callback (weights, optimizer state and step, every epoch) writing `workdir/backup<suffix>`."""
    return AtomicBackupAndRestore(str(pathlib.Path(workdir) / f"backup{suffix}"))


def write_atomically(path, text):
    """Writes `text` to `path` through a temporary file and `os.replace`: a kill leaves the old or the new file."""
    path = str(path)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def record_settings(config, workdir):
    """Writes every setting of the run to `workdir/flags.txt` (an absl flagfile) and `config.json`."""
    lines = []
    for setting in SETTINGS:
        value = config.get(setting.name)
        if value is None:
            continue
        if setting.kind == "bool":
            lines.append(f"--{setting.name}" if value else f"--no{setting.name}")
        else:
            lines.append(f"--{setting.name}={value}")
    write_atomically(pathlib.Path(workdir) / "flags.txt", "\n".join(lines) + "\n")
    recorded = {setting.name: config.get(setting.name) for setting in SETTINGS}
    write_atomically(pathlib.Path(workdir) / "config.json", json.dumps(recorded, indent=1))


def _tokenizer(sequence_length, proto=None):
    return SigLIPTokenizer(proto or str(EMBEDDED_VOCABULARY), sequence_length=sequence_length)


def tokenize(tokenizer, texts):
    """int32 NumPy token ids of a list of strings."""
    return np.asarray(keras.ops.convert_to_numpy(tokenizer(list(texts))), "int32")


def load_data(dataset, languages, image_size, seed=0):
    """`(train, test, zero_shot_languages)` of an embedded dataset."""
    if dataset == "digits":
        if languages == "all":
            languages = digits.LANGUAGES
        elif isinstance(languages, str):
            languages = tuple(code.strip() for code in languages.split(",") if code.strip())
        train = digits.load_digits("train", image_size=image_size, languages=languages, seed=seed)
        test = digits.load_digits("test", image_size=image_size, languages=languages, seed=seed)
        return train, test
    train = shapes.load_shapes("train", image_size=image_size, seed=seed)
    test = shapes.load_shapes("test", image_size=image_size, seed=seed)
    return train, test


def build_model(config):
    """A fresh `SigLIP` from the width flags, or the one a preset holds."""
    if config["preset"]:
        from keras_siglip import presets

        loaded = presets.load_preset(config["preset"])
        return loaded.model, loaded.tokenizer
    if config["variant"]:
        towers = variant_config(config["variant"])
    else:
        towers = {key: config[key] for key in ("width", "depth", "num_heads", "mlp_dim")}
    image_encoder = ImageEncoder(image_size=config["image_size"], patch_size=config["patch_size"], **towers)
    text_encoder = TextEncoder(
        vocabulary_size=config["vocabulary_size"],
        sequence_length=config["sequence_length"],
        output_dim=towers["width"],
        **towers,
    )
    return SigLIP(image_encoder, text_encoder), None


def learning_rate_schedule(peak, warmup_steps, total_steps):
    """Linear warmup to `peak`, then cosine decay to 0 at `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


class StepLossLog(keras.callbacks.Callback):
    """Writes each step's loss to a CSV file, kept consistent across resumes.

    Args:
        path: the CSV file (`step,loss` rows).
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_train_begin(self, logs=None):
        # Runs after BackupAndRestore: drop rows the restored state has not reached.
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        rows = read_loss_log(self.path)
        with open(self.path, "w") as f:
            f.writelines(f"{s},{v!r}\n" for s, v in rows if s <= self.step)

    def on_epoch_begin(self, epoch, logs=None):
        self.previous_mean, self.batches = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        # Keras reports the running mean over the epoch; recover this step's loss.
        self.batches += 1
        self.step += 1
        mean = float(logs["loss"])
        loss = self.batches * mean - (self.batches - 1) * self.previous_mean
        self.previous_mean = mean
        with open(self.path, "a") as f:
            f.write(f"{self.step},{loss!r}\n")


def read_loss_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(int(s), float(v)) for s, v in (line.strip().split(",") for line in f if line.strip())]


def pair_probabilities(model, image_embeddings, text_embeddings):
    """`sigmoid(t * img @ txt + b)` as NumPy: the plot's matrix of how likely each image and caption pair up."""
    logits = np.asarray(keras.ops.convert_to_numpy(model.similarity(image_embeddings, text_embeddings)))
    return 1 / (1 + np.exp(-logits))


def plot(path, losses, similarity, captions, title):
    """Loss curve beside the sigmoid(similarity) matrix of a held-out batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.2]})
    steps, values = zip(*losses) if losses else ((), ())
    left.plot(steps, values, lw=0.6, alpha=0.5, label="per step")
    if len(values) >= 20:
        window = max(len(values) // 50, 5)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        left.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
    left.set(xlabel="step", ylabel="loss", title="training loss", yscale="log")
    left.legend()
    image = right.imshow(similarity, cmap="viridis", vmin=0, vmax=1)
    right.set(title="sigmoid(t * img @ txt + b), held-out batch", xlabel="caption", ylabel="image")
    right.set_xticks(range(len(captions)), captions, rotation=90, fontsize=7)
    figure.colorbar(image, ax=right, fraction=0.046)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def evaluate(model, tokenizer, test, ks_zero_shot=(1, 5)):
    """Zero-shot accuracy (per prompt language) and retrieval recall on the test split."""
    image_embeddings = evaluation.encode_images(model, test.images)
    results = {"zero_shot": {}, "retrieval": {}}
    for language, class_prompts in test.class_prompts.items():
        classifier = evaluation.ZeroShotClassifier(model, tokenizer, class_prompts=class_prompts)
        results["zero_shot"][language] = classifier.evaluate(
            test.images, test.labels, ks_zero_shot, image_embeddings=image_embeddings
        )
    for language in sorted(set(test.caption_languages)):
        texts, relevance = test.retrieval_set(language)
        recall = evaluation.retrieval_recall(
            image_embeddings, evaluation.encode_texts(model, tokenizer, texts), relevance=relevance
        )
        results["retrieval"][language] = recall
    return results


def _seen_classes(test):
    return len(test.class_prompts[next(iter(test.class_prompts))])


def run(config):
    """Trains, evaluates and writes the outputs; returns the results dict."""
    config = dict(config)
    if config.get("train_data"):
        from keras_siglip import train_on_files

        return train_on_files.run(config)
    started = time.time()
    workdir = pathlib.Path(config["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    record_settings(config, workdir)
    if config["image_size"] is None:
        config["image_size"] = 16 if config["dataset"] == "digits" else 32
    if config["steps"] < 1 or config["checkpoint_every"] < 1:
        raise ValueError("--steps and --checkpoint_every must be positive.")
    keras.utils.set_random_seed(config["seed"])

    tokenizer = _tokenizer(config["sequence_length"])
    config["vocabulary_size"] = tokenizer.vocabulary_size()
    model, preset_tokenizer = build_model(config)
    if preset_tokenizer is not None:
        tokenizer = preset_tokenizer
    image_size = model.image_encoder.image_size[0]  # a preset's, when one is given
    train, test = load_data(config["dataset"], config["languages"], image_size, config["seed"])
    texts, caption_ids = train.caption_table()
    batches = PairBatches(
        train.images,
        caption_ids,
        tokenize(tokenizer, texts),
        batch_size=config["batch_size"],
        steps_per_epoch=config["checkpoint_every"],
        seed=config["seed"],
    )
    epochs = math.ceil(config["steps"] / config["checkpoint_every"])
    total_steps = epochs * config["checkpoint_every"]
    model.compile(
        loss=SigmoidLoss() if config["loss"] == "sigmoid" else SoftmaxLoss(),
        learning_rate=learning_rate_schedule(config["learning_rate"], config["warmup_steps"], total_steps),
        weight_decay=config["weight_decay"],
        micro_batch_size=config["micro_batch_size"],
    )

    prompts = next(iter(test.class_prompts.values()))
    retrieval_texts, relevance = test.retrieval_set()
    callbacks = [
        backup_callback(workdir),
        batches.epoch_callback(),
        StepLossLog(str(workdir / "loss.csv")),
    ]
    if config["eval_every"]:
        schedule = dict(every_n_steps=config["eval_every"], every_n_epochs=None)
        classifier = evaluation.ZeroShotClassifier(model, tokenizer, class_prompts=prompts)
        callbacks += [
            evaluation.ZeroShotCallback(classifier, test.images, test.labels, **schedule),
            evaluation.RetrievalCallback(
                tokenizer, test.images, retrieval_texts, relevance=relevance, ks=(1, 5), **schedule
            ),
        ]
    callbacks.append(
        AtomicWeightsCheckpoint(str(workdir / "checkpoint.weights.h5"))
    )
    if config["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(str(workdir / "tensorboard"), update_freq="epoch"))
    # `shuffle=False`: the batches are already shuffled, by step; Keras would reorder them
    # with the global NumPy RNG, which a resumed process does not reproduce.
    model.fit(batches, epochs=epochs, callbacks=callbacks, verbose=config["verbose"], shuffle=False)
    train_seconds = time.time() - started

    results = evaluate(model, tokenizer, test)
    results.update(
        dataset=config["dataset"],
        backend=keras.backend.backend(),
        steps=total_steps,
        batch_size=config["batch_size"],
        loss=config["loss"],
        parameters=int(model.count_params()),
        chance_top1=1.0 / _seen_classes(test),
        train_seconds=round(train_seconds, 1),
    )

    preset_dir = workdir / "preset"
    model.save_to_preset(str(preset_dir), tokenizer=tokenizer)  # replaces an earlier preset whole

    # Held-out images grouped by class (12 at most), so matches lie on the diagonal.
    classes = np.unique(test.labels)
    per_class = max(12 // len(classes), 1)
    sample = [int(i) for label in classes for i in np.flatnonzero(test.labels == label)[:per_class]][:12]
    captions = [test.captions_of(i)[0] for i in sample]
    similarity = pair_probabilities(model, evaluation.encode_images(model, test.images[sample]),
                                    evaluation.encode_texts(model, tokenizer, captions))
    top1 = np.mean([r["top1"] for r in results["zero_shot"].values()])
    plot(
        str(workdir / "main_job.png"),
        read_loss_log(str(workdir / "loss.csv")),
        similarity,
        captions,
        f"{config['dataset']}, {config['loss']} loss, {total_steps} steps x {config['batch_size']}, "
        f"Keras/{keras.backend.backend()}: held-out zero-shot top-1 {top1:.1%}",
    )
    results["total_seconds"] = round(time.time() - started, 1)
    write_atomically(workdir / "results.json", json.dumps(results, indent=1, default=str))
    print_report(results, workdir)
    return results


def print_report(results, workdir):
    chance = results["chance_top1"]
    print(f"\nHeld-out zero-shot accuracy ({results['dataset']}, chance top-1 {chance:.1%}):")
    for language, accuracy in results["zero_shot"].items():
        print(f"  {language}: top-1 {accuracy['top1']:.1%}  top-5 {accuracy['top5']:.1%}")
    print("Held-out retrieval recall (image->text | text->image):")
    for language, recall in results["retrieval"].items():
        i2t, t2i = recall["image_to_text"], recall["text_to_image"]
        print(
            f"  {language}: R@1 {i2t[1]:.1%} R@5 {i2t[5]:.1%} R@10 {i2t[10]:.1%} | "
            f"R@1 {t2i[1]:.1%} R@5 {t2i[5]:.1%} R@10 {t2i[10]:.1%}"
        )
    print(
        f"{results['steps']} steps in {results['train_seconds']} s of training "
        f"({results['total_seconds']} s in all). Wrote {workdir}/: preset/, main_job.png, "
        "tensorboard/, checkpoint.weights.h5, loss.csv, results.json"
    )


def default_config(**overrides):
    """The settings' defaults as a dict for `run`, with `overrides` (for scripts and tests).

    Example:
    >>> config = default_config(steps=10)
    >>> config["steps"], config["dataset"], config["batch_size"]
    (10, 'digits', 64)
    >>> default_config(step=10)
    Traceback (most recent call last):
    ...
    ValueError: Unknown settings ['step']; known: [...].
    """
    names = [setting.name for setting in SETTINGS]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"Unknown settings {unknown}; known: {names}.")
    config = {setting.name: setting.default for setting in SETTINGS}
    config.update(overrides)
    return config


def define_flags(flag_values=None):
    """Defines one absl flag per entry of `SETTINGS` (the command line's; importing defines none).

    Example:
    >>> from absl import flags
    >>> own = flags.FlagValues()
    >>> define_flags(own)
    >>> own(["train", "--steps=5", "--loss=softmax"])
    ['train']
    >>> own.steps, own.loss, own.batch_size
    (5, 'softmax', 64)
    """
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    for setting in SETTINGS:
        define = getattr(flags, f"DEFINE_{setting.kind}")
        extra = {"enum_values": list(setting.choices)} if setting.kind == "enum" else {}
        define(name=setting.name, default=setting.default, help=setting.help, flag_values=flag_values, **extra)


def main(argv):
    """The command line's job: `run` on the parsed flags."""
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run({setting.name: flags.FLAGS[setting.name].value for setting in SETTINGS})


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
