"""The paper's small-batch studies on the embedded digits: the contrast to tools/study_batch_size.py.

    KERAS_BACKEND=jax python tools/study_batch_size_digits.py               # all parts
    KERAS_BACKEND=jax python tools/study_batch_size_digits.py --parts=batch --run_steps=300 --seeds=3

Prints mean +/- std held-out zero-shot top-1 (%) over seeds for:

- `batch`: sigmoid vs softmax loss at batch 16, 32, 64, 128 (paper Fig. 2 /
  Table 3 at 512..32k);
- `bias`: the sigmoid loss's logit-bias initialisation, b=-10 with t'=log 10
  versus b=0 with t'=log 1 (paper Table 4);
- `noise`: sigmoid vs softmax trained on corrupted pairs, at three levels each,
  of Gaussian image noise, random caption tokens, and shuffled pairs
  (paper Fig. 7); evaluation is on clean held-out digits.

Every run trains the main job's model (`keras_siglip.train` defaults) for
`--run_steps` steps from a fresh seeded initialisation. One compiled training step
is reused per (loss, batch size): each run loads fresh initial weights and
zeroed optimizer state into it, so the table costs training, not compilation.
"""

import math
import time

import keras
import numpy as np
from absl import app, flags

from keras_siglip import SigLIP, SigmoidLoss, SoftmaxLoss, evaluation, train
from keras_siglip.data.embedded import PairBatches

flags.DEFINE_list("parts", ["batch", "bias", "noise"], "Which studies to run.")
flags.DEFINE_integer("run_steps", 300, "Training steps per run.")
flags.DEFINE_integer("seeds", 3, "Seeds per setting.")
flags.DEFINE_list("batch_sizes", ["16", "32", "64", "128"], "Batch sizes for the batch study.")
flags.DEFINE_integer("noise_batch_size", 32, "Batch size of the bias and noise studies.")
FLAGS = flags.FLAGS

NOISE_LEVELS = {
    "image noise (sigma)": (0.25, 0.5, 1.0),
    "token noise (p)": (0.1, 0.3, 0.5),
    "shuffled pairs (fraction)": (0.1, 0.3, 0.5),
}


def corrupt(kind, level, vocabulary_size, eos_id):
    """A `PairBatches` transform adding one kind of noise to training pairs."""

    def transform(batch, rng):
        images, token_ids = batch["images"].copy(), batch["token_ids"].copy()
        if kind.startswith("image"):
            images = images + rng.normal(0.0, level, images.shape).astype("float32")
        elif kind.startswith("token"):
            caption = token_ids != eos_id  # keep the EOS padding the tower pools on
            replace = caption & (rng.random(token_ids.shape) < level)
            token_ids[replace] = rng.integers(3, vocabulary_size, replace.sum())
        else:
            rows = np.flatnonzero(rng.random(len(token_ids)) < level)
            token_ids[rows] = token_ids[rng.permutation(rows)]
        return {"images": images, "token_ids": token_ids}

    return transform


class Study:
    """Shared data, tokenizer and one compiled model per (loss, batch size)."""

    def __init__(self, steps):
        self.config = train.default_config(steps=steps, image_size=16)
        self.train, self.test = train.load_data("digits", "en", 16)
        self.tokenizer = train._tokenizer(self.config["sequence_length"])
        self.config["vocabulary_size"] = self.tokenizer.vocabulary_size()
        texts, self.caption_ids = self.train.caption_table()
        self.token_ids = train.tokenize(self.tokenizer, texts)
        self.prompts = self.test.class_prompts["en"]
        self.models = {}

    def _fresh_weights(self, seed, bias_init, log_temperature_init):
        keras.utils.set_random_seed(seed)
        model, _ = train.build_model(self.config)
        fresh = SigLIP(model.image_encoder, model.text_encoder, log_temperature_init=log_temperature_init,
                       bias_init=bias_init)
        return fresh.get_weights()

    def _compiled(self, loss, batch_size):
        key = (loss, batch_size)
        if key not in self.models:
            model, _ = train.build_model(self.config)
            steps = self.config["steps"]
            model.compile(
                loss=SigmoidLoss() if loss == "sigmoid" else SoftmaxLoss(),
                learning_rate=train.learning_rate_schedule(
                    self.config["learning_rate"], min(self.config["warmup_steps"], steps // 5), steps
                ),
                weight_decay=self.config["weight_decay"],
            )
            self.models[key] = model
        return self.models[key]

    def run(self, loss, batch_size, seed, bias_init=-10.0, log_temperature_init=math.log(10.0),
            transform=None):
        """Held-out zero-shot top-1 of one training run."""
        model = self._compiled(loss, batch_size)
        model.set_weights(self._fresh_weights(seed, bias_init, log_temperature_init))
        if model.optimizer.built:
            for variable in model.optimizer.variables:
                variable.assign(np.zeros(variable.shape, variable.dtype))
        batches = PairBatches(self.train.images, self.caption_ids, self.token_ids, batch_size,
                              self.config["steps"], seed=seed, transform=transform)
        model.fit(batches, epochs=1, verbose=0, shuffle=False)
        classifier = evaluation.ZeroShotClassifier(model, self.tokenizer, class_prompts=self.prompts)
        return 100 * classifier.evaluate(self.test.images, self.test.labels, ks=(1,))["top1"]


def summarise(values):
    return f"{np.mean(values):5.1f} +/- {np.std(values):4.1f}"


def print_table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def main(argv):
    del argv
    started = time.time()
    study = Study(FLAGS.run_steps)
    seeds = range(FLAGS.seeds)
    print(f"Held-out digits zero-shot top-1 (%), mean +/- std over {FLAGS.seeds} seeds, {FLAGS.run_steps} steps "
          f"per run, Keras/{keras.backend.backend()}; chance 10%.")
    if "batch" in FLAGS.parts:
        rows = []
        for batch_size in map(int, FLAGS.batch_sizes):
            scores = {loss: [study.run(loss, batch_size, seed) for seed in seeds] for loss in ("sigmoid", "softmax")}
            rows.append([batch_size, summarise(scores["sigmoid"]), summarise(scores["softmax"])])
            print(f"  batch {batch_size} done ({time.time() - started:.0f} s)", flush=True)
        print_table("Batch size: sigmoid vs softmax", ["batch", "sigmoid", "softmax"], rows)
    batch_size = FLAGS.noise_batch_size
    if "bias" in FLAGS.parts:
        settings = [("b=-10, t'=log 10", -10.0, math.log(10.0)), ("b=0, t'=log 1", 0.0, 0.0)]
        rows = [
            [name, summarise([study.run("sigmoid", batch_size, s, bias, temperature) for s in seeds])]
            for name, bias, temperature in settings
        ]
        print_table(f"Sigmoid loss initialisation (batch {batch_size})", ["init", "top-1"], rows)
    if "noise" in FLAGS.parts:
        eos = study.tokenizer.eos_id
        vocabulary = study.config["vocabulary_size"]
        clean = {loss: summarise([study.run(loss, batch_size, s) for s in seeds]) for loss in ("sigmoid", "softmax")}
        rows = [["none", 0, clean["sigmoid"], clean["softmax"]]]
        for kind, levels in NOISE_LEVELS.items():
            for level in levels:
                transform = corrupt(kind, level, vocabulary, eos)
                scores = {
                    loss: summarise([study.run(loss, batch_size, s, transform=transform) for s in seeds])
                    for loss in ("sigmoid", "softmax")
                }
                rows.append([kind, level, scores["sigmoid"], scores["softmax"]])
            print(f"  {kind} done ({time.time() - started:.0f} s)", flush=True)
        print_table(f"Noise robustness (batch {batch_size})", ["noise", "level", "sigmoid", "softmax"], rows)
    print(f"\n{time.time() - started:.0f} s in all.")


if __name__ == "__main__":
    app.run(main)
