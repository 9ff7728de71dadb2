"""The SigLIP paper's small-scale studies on the two-object scenes (`keras_siglip.data.scenes`).

    KERAS_BACKEND=jax python tools/study_batch_size.py                  # every study, then the report
    KERAS_BACKEND=jax python tools/study_batch_size.py --report_only    # tables and plots from the results

Every run trains tiny towers from a fresh seeded initialisation on the same
number of examples (`--examples`), so a batch of 16 takes 32 times the steps
of a batch of 512, and reports held-out retrieval Recall@1 on the `test` split
(scenes of object pairs never seen together in training; the mean of
image->text and text->image), with R@1 on fresh scenes of the training pairs
(`val`) and zero-shot top-1 over the 190 object pairs beside it. Studies:

- `batch`: sigmoid vs softmax loss over `--batch_sizes` (paper Fig. 2 / Table 3),
  with test R@1 at `--curve_points` points of training (the curves);
- `bias`: the sigmoid loss's initial logit bias b in {-10, -5, 0} and
  log-temperature t' in {log 1, log 10} (paper Table 4);
- `siglit`: the same batch sweep with a locked image tower (paper Fig. 2's
  SigLiT), pretrained once by supervised classification of what each of the
  nine cells holds; the text tower trains on its cached embeddings;
- `noise`: sigmoid vs softmax trained on corrupted pairs (paper Fig. 7):
  Gaussian image noise, random caption tokens, shuffled pairs; evaluated clean.

Each finished run is appended as one JSON line to `--results`; a rerun skips
the runs already there, so an interrupted study resumes where it stopped.
One compiled model is reused per (loss, batch size, tower lock): each run
loads fresh weights and zeroed optimizer state into it.
"""

import json
import math
import os
import pathlib
import time

import keras
import numpy as np
from absl import app, flags

from keras_siglip import SigLIP, SigmoidLoss, SoftmaxLoss, evaluation, train
from keras_siglip.data import digits, scenes
from keras_siglip.data.embedded import PairBatches
from keras_siglip.models.siglip.towers import ImageEncoder, TextEncoder

ALL_PARTS = ["batch", "bias", "siglit", "noise"]
flags.DEFINE_list("parts", ALL_PARTS, "Which studies to run, in this order.")
flags.DEFINE_integer("examples", 64_000, "Training examples seen per run (steps = examples / batch).")
flags.DEFINE_integer("seeds", 5, "Seeds per setting.")
flags.DEFINE_list("batch_sizes", ["16", "64", "256", "512"], "Batch sizes of the batch and SigLiT studies.")
flags.DEFINE_integer("study_batch_size", 64, "Batch size of the bias and noise studies.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate at batch 64; scaled by sqrt(batch / 64).")
flags.DEFINE_integer("width", 64, "Tower width.")
flags.DEFINE_integer("depth", 2, "Encoder blocks per tower.")
flags.DEFINE_integer("patch_size", 8, "ViT patch side (32 px images).")
flags.DEFINE_integer("curve_points", 8, "Test evaluations along each run of the batch and SigLiT studies.")
flags.DEFINE_string("results", "tools/results/study_batch_size.jsonl", "One JSON line per finished run.")
flags.DEFINE_string("plots", "docs", "Folder of the PNG plots.")
flags.DEFINE_string("plot_suffix", "", "Appended to each plot's name (e.g. _160k for a longer budget's plots).")
flags.DEFINE_bool("report_only", False, "Print the tables and write the plots from --results; train nothing.")
FLAGS = flags.FLAGS

SEQUENCE_LENGTH = scenes.MAX_CAPTION_TOKENS
BIAS_SETTINGS = [(b, t) for t in (0.0, math.log(10.0)) for b in (-10.0, -5.0, 0.0)]
NOISE_LEVELS = {"image": (0.5, 1.0), "token": (0.2, 0.5), "shuffle": (0.2, 0.5)}
NOISE_NAMES = {
    "image": "image noise (Gaussian sigma)",
    "token": "token noise (replaced fraction)",
    "shuffle": "shuffled pairs (fraction)",
}


def corrupt(kind, level, vocabulary_size, eos_id):
    """A `PairBatches` transform adding one kind of noise to training pairs."""

    def transform(batch, rng):
        images, token_ids = batch["images"].copy(), batch["token_ids"].copy()
        if kind == "image":
            images = images + rng.normal(0.0, level, images.shape).astype("float32")
        elif kind == "token":
            caption = token_ids != eos_id  # keep the EOS padding the tower pools on
            replace = caption & (rng.random(token_ids.shape) < level)
            token_ids[replace] = rng.integers(3, vocabulary_size, replace.sum())
        else:
            rows = np.flatnonzero(rng.random(len(token_ids)) < level)
            token_ids[rows] = token_ids[rng.permutation(rows)]
        return {"images": images, "token_ids": token_ids}

    return transform


def as_embeddings(batch, rng):
    """Feeds cached image embeddings to a locked image tower."""
    del rng
    return {"image_embeddings": batch["images"], "token_ids": batch["token_ids"]}


def cell_labels(data):
    """int `(N, 9)`: per grid cell, 0 if empty, else 1 + the index of its (colour, shape, size)."""
    classes = {(c, s, z): 1 + i for i, (c, s, z) in enumerate(
        (c, s, z) for c, s in scenes.OBJECTS for z in scenes.SIZES)}
    labels = np.zeros((len(data), len(scenes.POSITIONS)), "int32")
    positions = list(scenes.POSITIONS)
    for i in range(len(data)):
        for part in data.captions_of(i)[0].split(", "):
            _, size, colour, shape, *position = part.split(" ")
            labels[i, positions.index(" ".join(position))] = classes[(colour, shape, size)]
    return labels


class CurveCallback(keras.callbacks.Callback):
    """Test R@1 at the given steps."""

    def __init__(self, study, steps):
        super().__init__()
        self.study, self.steps, self.curve, self.step = study, set(steps), [], 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step in self.steps:
            self.curve.append((self.step, self.study.recall(self.model, "test")))


class Study:
    def __init__(self):
        self.tokenizer = train._tokenizer(SEQUENCE_LENGTH)
        self.vocabulary_size = self.tokenizer.vocabulary_size()
        self.data = {split: scenes.load_scenes(split) for split in ("train", "val", "test")}
        texts, self.caption_ids = self.data["train"].caption_table()
        self.token_ids = train.tokenize(self.tokenizer, texts)
        self.retrieval = {}
        for split in ("val", "test"):
            texts, relevance = self.data[split].retrieval_set()
            self.retrieval[split] = (texts, relevance)
        self.models = {}
        self.image_tower = None

    def towers(self):
        config = dict(width=FLAGS.width, depth=FLAGS.depth, num_heads=2, mlp_dim=2 * FLAGS.width)
        return (
            ImageEncoder(image_size=32, patch_size=FLAGS.patch_size, **config),
            TextEncoder(vocabulary_size=self.vocabulary_size, sequence_length=SEQUENCE_LENGTH,
                        output_dim=FLAGS.width, **config),
        )

    def pretrained_image_tower(self):
        """An image tower trained once to name what each of the nine cells holds (SigLiT's locked tower)."""
        if self.image_tower is None:
            keras.utils.set_random_seed(1234)
            tower, _ = self.towers()
            images = keras.Input((32, 32, 3))
            logits = keras.layers.Dense(len(scenes.POSITIONS) * (1 + 2 * len(scenes.OBJECTS)))(tower(images))
            logits = keras.layers.Reshape((len(scenes.POSITIONS), -1))(logits)
            classifier = keras.Model(images, logits)
            steps = 10 * len(self.data["train"]) // 128
            classifier.compile(
                keras.optimizers.AdamW(train.learning_rate_schedule(2e-3, steps // 10, steps), weight_decay=1e-4),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            history = classifier.fit(self.data["train"].images, cell_labels(self.data["train"]), batch_size=128,
                                     epochs=10, verbose=0)
            accuracy = classifier.evaluate(self.data["test"].images, cell_labels(self.data["test"]), verbose=0)[1]
            print(f"  image tower pretrained: cell accuracy {history.history['accuracy'][-1]:.3f} train, "
                  f"{accuracy:.3f} test", flush=True)
            self.image_tower = tower
            self.image_tower_weights = tower.get_weights()
            embed = keras.Model(images, tower(images))
            self.train_embeddings = np.asarray(embed.predict(self.data["train"].images, batch_size=256, verbose=0))
        return self.image_tower

    def model(self, loss, batch_size, locked, steps):
        key = (loss, batch_size, locked, steps)
        if key not in self.models:
            image_tower, text_tower = self.towers()
            if locked:
                image_tower = self.pretrained_image_tower()
            model = SigLIP(image_tower, text_tower, lock_image_tower=locked)
            model.compile(
                loss=SigmoidLoss() if loss == "sigmoid" else SoftmaxLoss(),
                learning_rate=train.learning_rate_schedule(
                    FLAGS.learning_rate * math.sqrt(batch_size / 64), steps // 10, steps),
                weight_decay=1e-4,
            )
            self.models[key] = model
        return self.models[key]

    def recall(self, model, split):
        texts, relevance = self.retrieval[split]
        images = evaluation.encode_images(model, self.data[split].images)
        texts = evaluation.encode_texts(model, self.tokenizer, texts)
        recall = evaluation.retrieval_recall(images, texts, relevance=relevance, ks=(1,))
        return 100 * (recall["image_to_text"][1] + recall["text_to_image"][1]) / 2

    def run(self, spec):
        """Trains one run described by `spec`; returns its results."""
        started = time.time()
        batch_size, locked = spec["batch"], spec["study"] == "siglit"
        steps = FLAGS.examples // batch_size
        model = self.model(spec["loss"], batch_size, locked, steps)
        keras.utils.set_random_seed(spec["seed"])
        image_tower, text_tower = self.towers()
        fresh = SigLIP(image_tower, text_tower, log_temperature_init=spec["t"], bias_init=spec["b"])
        weights = fresh.get_weights()
        model.set_weights(weights)
        if locked:
            self.pretrained_image_tower()
            model.image_encoder.set_weights(self.image_tower_weights)
        for variable in model.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))
        transform = None
        if spec["noise"] != "none":
            transform = corrupt(spec["noise"], spec["level"], self.vocabulary_size, self.tokenizer.eos_id)
        images = self.train_embeddings if locked else self.data["train"].images
        batches = PairBatches(images, self.caption_ids, self.token_ids, batch_size, steps, seed=spec["seed"],
                              transform=as_embeddings if locked else transform)
        callbacks = []
        if spec["study"] in ("batch", "siglit"):
            points = np.linspace(0, steps, FLAGS.curve_points + 1)[1:-1].round().astype(int)
            callbacks.append(CurveCallback(self, points))
        history = model.fit(batches, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        del history
        test = self.recall(model, "test")
        classifier = evaluation.ZeroShotClassifier(model, self.tokenizer,
                                                   class_prompts=self.data["test"].class_prompts["en"])
        zero_shot = classifier.evaluate(self.data["test"].images, self.data["test"].labels, ks=(1,))["top1"]
        curve = (callbacks[0].curve if callbacks else []) + [(steps, test)]
        return dict(
            spec,
            steps=steps,
            test_r1=test,
            val_r1=self.recall(model, "val"),
            zero_shot_top1=100 * zero_shot,
            curve=[(int(s) * batch_size, r) for s, r in curve],
            final_t=float(np.exp(keras.ops.convert_to_numpy(model.log_temperature))),
            final_b=float(keras.ops.convert_to_numpy(model.bias)),
            seconds=round(time.time() - started, 1),
        )


def spec(study, loss, batch, seed, b=-10.0, t=math.log(10.0), noise="none", level=0.0):
    # The bias and noise studies' clean default run is the batch study's run at their batch size.
    if study in ("bias", "noise") and (b, t, noise) == (-10.0, math.log(10.0), "none"):
        study = "batch"
    return dict(study=study, loss=loss, batch=batch, seed=seed, b=b, t=round(t, 6), noise=noise, level=level)


def key(s):
    return json.dumps({k: s[k] for k in ("study", "loss", "batch", "seed", "b", "t", "noise", "level")},
                      sort_keys=True)


def planned_runs(parts):
    """The runs of `parts`, seed after seed (an unfinished study has every setting at fewer seeds)."""
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    runs = []
    for part in parts:
        for s in range(FLAGS.seeds):
            if part in ("batch", "siglit"):
                runs += [spec(part, loss, b, s) for b in batch_sizes for loss in ("sigmoid", "softmax")]
            elif part == "bias":
                runs += [spec("bias", "sigmoid", FLAGS.study_batch_size, s, b, t) for b, t in BIAS_SETTINGS]
            elif part == "noise":
                runs += [spec("noise", loss, FLAGS.study_batch_size, s, noise=kind, level=level)
                         for kind, levels in NOISE_LEVELS.items() for level in levels
                         for loss in ("sigmoid", "softmax")]
    unique = {}
    for run in runs:
        if run["study"] in parts:  # the clean default runs belong to the batch study
            unique.setdefault(key(run), run)
    return list(unique.values())


def read_results(path):
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {key(row): row for row in rows}


def mean_ci(values):
    """`(mean, half-width of the 95% t interval)`."""
    from scipy import stats

    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def cell(rows, field="test_r1"):
    if not rows:
        return "(missing)"
    mean, half = mean_ci([r[field] for r in rows])
    return f"{mean:5.1f} +/- {half:4.1f} (n={len(rows)})"


def select(results, **match):
    return [r for r in results.values() if all(r[k] == v for k, v in match.items())]


def print_table(title, header, rows):
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def duplicate_rates(batch_sizes):
    train_ids = scenes.load_scenes("train").caption_table()[1]
    digit_data = digits.load_digits("train", image_size=8)
    digit_ids = digit_data.caption_table()[1]
    rows = []
    for b in batch_sizes:
        rows.append([b, f"{100 * scenes.duplicate_caption_rate(train_ids, b):.1f}",
                     f"{100 * scenes.duplicate_caption_rate(digit_ids, b):.1f}",
                     f"{100 * scenes.duplicate_caption_rate(digit_data.labels, b):.1f}"])
    print_table("Pairs whose caption another pair of the batch shares (%)",
                ["batch", "scenes", "digits: same caption", "digits: same class"], rows)


def report(results):
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    sb = FLAGS.study_batch_size
    duplicate_rates(sorted(set(batch_sizes + [32, 128])))
    for study, title in (("batch", "Batch size"), ("siglit", "SigLiT (locked pretrained image tower)")):
        if study not in FLAGS.parts:
            continue
        rows = []
        for b in batch_sizes:
            row = [b]
            for loss in ("sigmoid", "softmax"):
                row.append(cell(select(results, study=study, loss=loss, batch=b)))
            for loss in ("sigmoid", "softmax"):
                row.append(cell(select(results, study=study, loss=loss, batch=b), "zero_shot_top1"))
            rows.append(row)
        print_table(f"{title}: held-out test R@1 (%), mean +/- 95% CI over seeds; then zero-shot top-1 (%)",
                    ["batch", "sigmoid R@1", "softmax R@1", "sigmoid zero-shot", "softmax zero-shot"], rows)
    if "bias" in FLAGS.parts:
        rows = []
        for b, t in BIAS_SETTINGS:
            s = spec("bias", "sigmoid", sb, 0, b, t)
            found = select(results, study=s["study"], loss="sigmoid", batch=sb, b=b, t=s["t"], noise="none")
            rows.append([f"{b:g}", "log 10" if t else "log 1", cell(found), cell(found, "val_r1")])
        print_table(f"Sigmoid loss initialisation (batch {sb}): R@1 (%)", ["b", "t'", "test R@1", "val R@1"], rows)
    if "noise" in FLAGS.parts:
        rows = [["none", 0] + [cell(select(results, study="batch", loss=loss, batch=sb))
                               for loss in ("sigmoid", "softmax")]]
        for kind, levels in NOISE_LEVELS.items():
            for level in levels:
                rows.append([NOISE_NAMES[kind], level] + [
                    cell(select(results, study="noise", loss=loss, batch=sb, noise=kind, level=level))
                    for loss in ("sigmoid", "softmax")])
        print_table(f"Noise robustness (batch {sb}): clean held-out test R@1 (%)",
                    ["noise", "level", "sigmoid", "softmax"], rows)
    missing = [run for run in planned_runs(FLAGS.parts) if key(run) not in results]
    seconds = sum(r["seconds"] for r in results.values())
    print(f"\n{len(results)} runs, {seconds / 60:.0f} min of training and evaluation; {len(missing)} planned runs missing.")
    for run in missing:
        print("  missing:", key(run))
    plot(results)


def plot(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(FLAGS.plots)
    out.mkdir(parents=True, exist_ok=True)
    examples = scenes.load_scenes("test", num_images=6)
    figure, axes = plt.subplots(1, 6, figsize=(15, 3.2))
    for i, axis in enumerate(axes):
        axis.imshow((examples.images[i] + 1) / 2)
        axis.set_title(examples.captions_of(i)[0].replace(", ", ",\n"), fontsize=7)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(out / "scenes_examples.png", dpi=100)
    plt.close(figure)
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    colours = {"sigmoid": "tab:blue", "softmax": "tab:orange"}
    for study, name in (("batch", "study_batch_size"), ("siglit", "study_siglit")):
        if study not in FLAGS.parts:
            continue
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for loss in ("sigmoid", "softmax"):
            stats = [mean_ci([r["test_r1"] for r in select(results, study=study, loss=loss, batch=b)] or [np.nan])
                     for b in batch_sizes]
            means, halves = np.array(stats).T
            left.errorbar(batch_sizes, means, yerr=halves, marker="o", capsize=3, label=loss, color=colours[loss])
        left.set(xscale="log", xlabel="batch size", ylabel="held-out test R@1 (%)",
                 title=f"{FLAGS.examples:,} examples seen per run, mean and 95% CI")
        left.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        left.minorticks_off()
        left.legend()
        styles = dict(zip(batch_sizes, ("-", "--", "-.", ":", (0, (1, 3)))))
        for b in batch_sizes:
            for loss in ("sigmoid", "softmax"):
                rows = select(results, study=study, loss=loss, batch=b)
                if rows:
                    curve = np.mean([[r for _, r in row["curve"]] for row in rows], axis=0)
                    seen = [e for e, _ in rows[0]["curve"]]
                    right.plot(seen, curve, linestyle=styles[b], color=colours[loss], label=f"{loss} {b}")
        right.set(xlabel="examples seen", ylabel="held-out test R@1 (%)", title="curves (mean over seeds)")
        right.legend(fontsize=7, ncol=2)
        figure.suptitle("Two-object scenes: sigmoid vs softmax" + (", locked image tower" if study == "siglit" else ""))
        figure.tight_layout()
        figure.savefig(out / f"{name}{FLAGS.plot_suffix}.png", dpi=100)
        plt.close(figure)

    if not {"bias", "noise"} & set(FLAGS.parts):
        return
    sb = FLAGS.study_batch_size
    figure, axes = plt.subplots(1, 4, figsize=(16, 4))
    labels, means, halves = [], [], []
    for b, t in BIAS_SETTINGS:
        s = spec("bias", "sigmoid", sb, 0, b, t)
        found = select(results, study=s["study"], loss="sigmoid", batch=sb, b=b, t=s["t"], noise="none")
        mean, half = mean_ci([r["test_r1"] for r in found] or [np.nan])
        labels.append(f"b={b:g}\nt'=log{10 if t else 1}")
        means.append(mean)
        halves.append(half)
    axes[0].bar(range(len(labels)), means, yerr=halves, capsize=3)
    axes[0].set_xticks(range(len(labels)), labels, fontsize=7)
    axes[0].set(ylabel="held-out test R@1 (%)", title=f"sigmoid initialisation, batch {sb}")
    for axis, (kind, levels) in zip(axes[1:], NOISE_LEVELS.items()):
        for loss in ("sigmoid", "softmax"):
            stats = [mean_ci([r["test_r1"] for r in select(results, study="batch", loss=loss, batch=sb)] or [np.nan])]
            stats += [mean_ci([r["test_r1"] for r in select(results, study="noise", loss=loss, batch=sb, noise=kind,
                                                             level=level)] or [np.nan]) for level in levels]
            m, h = np.array(stats).T
            axis.errorbar([0, *levels], m, yerr=h, marker="o", capsize=3, label=loss, color=colours[loss])
        axis.set(xlabel=NOISE_NAMES[kind], ylabel="clean test R@1 (%)", title=f"{kind} noise, batch {sb}")
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / f"study_bias_noise{FLAGS.plot_suffix}.png", dpi=100)
    plt.close(figure)


def main(argv):
    del argv
    results = read_results(FLAGS.results)
    if not FLAGS.report_only:
        pathlib.Path(FLAGS.results).parent.mkdir(parents=True, exist_ok=True)
        todo = [run for run in planned_runs(FLAGS.parts) if key(run) not in results]
        print(f"{len(todo)} runs to do ({len(results)} done), {FLAGS.examples} examples each, "
              f"Keras/{keras.backend.backend()}.", flush=True)
        evaluation._CACHE_SIZE = 64  # keep every compiled encoder: runs alternate between models
        study = Study()
        started = time.time()
        for i, run in enumerate(todo):
            row = study.run(run)
            with open(FLAGS.results, "a") as f:
                f.write(json.dumps(row) + "\n")
            results[key(row)] = row
            print(f"  [{i + 1}/{len(todo)}] {key(run)}: test R@1 {row['test_r1']:.1f}, val R@1 "
                  f"{row['val_r1']:.1f}, {row['seconds']} s ({time.time() - started:.0f} s in all)", flush=True)
    report(results)


if __name__ == "__main__":
    app.run(main)
