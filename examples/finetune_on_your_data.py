"""Fine-tune a preset on a folder of images with captions, evaluate it, and export it to transformers.

    KERAS_BACKEND=jax python examples/finetune_on_your_data.py \
        --images=my_photos/ --preset=siglip_base_patch16_224 --steps=500 --out=finetuned

The folder holds `name.jpg` (or .png, ...) with its caption in `name.txt`
beside it. The script writes a manifest of the pairs (`captions.csv`), keeps
every tenth pair for evaluation, trains through the main job
(`python -m keras_siglip.train`, the same streaming, checkpoints and resume),
prints retrieval recall on the held-out pairs before and after, and exports
the fine-tuned model with `keras_siglip.export(..., format="transformers")`.
`--preset` takes any handle `keras_siglip.presets.load_preset` accepts: a
built-in name, a preset folder (the main job's `preset/`), `hf://...`.
"""

import csv
import os
import pathlib

from absl import app, flags

flags.DEFINE_string("images", None, "Folder of images, each with a .txt caption of the same name.")
flags.DEFINE_string("preset", None, "Preset to start from.")
flags.DEFINE_integer("finetune_steps", 100, "Training steps.")
flags.DEFINE_integer("finetune_batch_size", 32, "Pairs per step.")
flags.DEFINE_float("finetune_learning_rate", 1e-4, "Peak learning rate.")
flags.DEFINE_string("out", "finetuned", "Output folder (workdir, manifests, export).")
FLAGS = flags.FLAGS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def write_manifests(folder, out):
    """`(train.csv, val.csv)`: every image with a caption file, every tenth one held out."""
    folder = pathlib.Path(folder)
    pairs = []
    for image in sorted(folder.iterdir()):
        caption = image.with_suffix(".txt")
        if image.suffix.lower() in IMAGE_EXTENSIONS and caption.exists():
            pairs.append((str(image.resolve()), caption.read_text().strip()))
    if len(pairs) < 10:
        raise ValueError(f"{folder} has {len(pairs)} captioned images; fine-tuning needs at least 10.")
    paths = []
    for name, rows in (("train", [p for i, p in enumerate(pairs) if i % 10]), ("val", pairs[::10])):
        path = pathlib.Path(out) / f"{name}.csv"
        with open(path, "w", newline="") as file:
            csv.writer(file).writerows([("image", "caption"), *rows])
        paths.append(str(path))
    return paths


def finetune(images, preset, out, steps=100, batch_size=32, learning_rate=1e-4):
    """Trains `preset` on the captioned `images` folder; returns `(recall before, results after, export folder)`."""
    import keras_siglip
    from keras_siglip import evaluation, train
    from keras_siglip.presets import load_preset
    from keras_siglip.train_on_files import read_data

    os.makedirs(out, exist_ok=True)
    train_csv, val_csv = write_manifests(images, out)
    config = train.default_config(preset=preset, train_data=train_csv, val_data=val_csv, steps=steps,
                                  batch_size=batch_size, learning_rate=learning_rate, warmup_steps=max(steps // 10, 1),
                                  checkpoint_every=min(50, steps), eval_every=0, random_resized_crop=True,
                                  horizontal_flip=True, workdir=os.path.join(out, "workdir"), verbose=2)
    model, tokenizer, preprocessor = load_preset(preset)
    val = read_data(val_csv, config, tokenizer, preprocessor, 64, training=False, drop_remainder=False, shard=(0, 1))
    before = evaluation.pair_retrieval_recall(model, val)
    results = train.run(config)
    finetuned, tokenizer, preprocessor = load_preset(os.path.join(out, "workdir", "preset"))
    exported = os.path.join(out, "transformers")
    keras_siglip.export(finetuned, exported, format="transformers", tokenizer=tokenizer, image_converter=preprocessor)
    return before, results, exported


def main(argv):
    if not FLAGS.images or not FLAGS.preset:
        raise app.UsageError("Pass --images and --preset.")
    before, results, exported = finetune(FLAGS.images, FLAGS.preset, FLAGS.out, FLAGS.finetune_steps,
                                         FLAGS.finetune_batch_size, FLAGS.finetune_learning_rate)
    for name, recall in (("before", before), ("after", results["retrieval"])):
        print(f"{name}: image->text R@1 {recall['image_to_text'][1]:.1%}, text->image R@1 "
              f"{recall['text_to_image'][1]:.1%} on {recall['pairs']} held-out pairs")
    print(f"Exported to {exported} (transformers.SiglipModel.from_pretrained reads it).")


if __name__ == "__main__":
    app.run(main)
