"""Pairs/s of the main job on 224-px JPEG tar shards, beside the reader alone.

Writes `--images` synthetic photo-like JPEGs (tools/benchmark_input.py's corpus)
as tar shards, then measures (1) the training reader alone (random resized
crop and flip, shuffling, the same settings the job uses) and (2)
`python -m keras_siglip.train --train_data='DIR/{00000..0000N}.tar'` end to
end on a small ViT pair (`--variant`, default Ti at patch 16), reading the
job's own `pairs_per_second` (the median over epochs after the first, which
holds compilation). Prints a Markdown table.

    KERAS_BACKEND=jax nice -n 19 .venv/bin/python tools/benchmark_train_on_files.py
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmark_input import images_per_second, make_tokenizer, write_corpus  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--variant", default="Ti")
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--checkpoint-every", type=int, default=6)
    args = parser.parse_args()

    import keras

    from keras_siglip import SigLIPImagePreprocessor, train
    from keras_siglip.data import read_tar_shards

    folder = tempfile.mkdtemp(prefix="train_on_files_")
    samples = write_corpus(folder, args.images, 256, args.shards)
    tokenizer = make_tokenizer(samples, folder)
    pattern = os.path.join(folder, f"{{00000..{args.shards - 1:05d}}}.tar")
    preprocessor = SigLIPImagePreprocessor(224, random_resized_crop=True, horizontal_flip=True)
    reader = read_tar_shards(pattern, tokenizer, preprocessor, args.batch_size, seed=0, repeat=True)
    reader_rate, _ = images_per_second(reader, args.batch_size, 8 * args.batch_size, threads=None)

    workdir = os.path.join(folder, "workdir")
    config = train.default_config(
        train_data=pattern, tokenizer=os.path.join(folder, "spm.model"), sequence_length=64, variant=args.variant,
        image_size=224, patch_size=args.patch_size, batch_size=args.batch_size, steps=args.steps,
        checkpoint_every=args.checkpoint_every, eval_every=0, warmup_steps=2, random_resized_crop=True,
        horizontal_flip=True, tensorboard=False, verbose=0, workdir=workdir,
    )
    results = train.run(config)
    print(json.dumps({"reader_pairs_per_second": reader_rate, "job": results}, default=str)[:2000])
    print(f"\nKeras {keras.__version__}/{keras.backend.backend()}, {os.cpu_count()} CPUs, "
          f"SigLIP {args.variant}/{args.patch_size} at 224 px, {results['parameters']:,} parameters, "
          f"batch {args.batch_size}, 64 tokens\n")
    print("| what | pairs/s |\n|---|---|")
    print(f"| reader alone (tar shards, train mode) | {reader_rate:,.0f} |")
    print(f"| `python -m keras_siglip.train --train_data=...` | {results['pairs_per_second']:,.1f} |")


if __name__ == "__main__":
    main()
