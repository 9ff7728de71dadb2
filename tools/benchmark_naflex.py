"""NaFlex vs FixRes training step time at the same width and patch count.

A SigLIP step (both towers, sigmoid loss, AdamW) with a `NaFlexImageEncoder`
fed `max_num_patches` patches per image (mixed aspect ratios, padded) against
an `ImageEncoder` on square images with as many patches
(`image_size = sqrt(patches) * patch_size`). Prints one table row per patch
count: the median step time of each and their ratio.

    nice -n 19 python tools/benchmark_naflex.py --patches 256 1024 --width 128 --depth 2
"""

import argparse
import time

import keras
import numpy as np

from keras_siglip import NaFlexImageEncoder, NaFlexImagePreprocessor, SigLIP
from keras_siglip.models.siglip.towers import ImageEncoder, TextEncoder


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    return parser.parse_args()


def towers(args):
    tower = dict(width=args.width, depth=args.depth, num_heads=args.heads, mlp_dim=4 * args.width)
    text = TextEncoder(vocabulary_size=1000, sequence_length=16, output_dim=args.width, **tower)
    return tower, text


def step_time(model, data, steps):
    model.compile()
    model.train_on_batch(data)  # compile
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(data)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    args = parse_args()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 1000, (args.batch_size, 16)).astype("int32")
    print(f"| patches | NaFlex step (ms) | FixRes step (ms) | NaFlex / FixRes |  (backend {keras.backend.backend()}, "
          f"width {args.width}, depth {args.depth}, batch {args.batch_size}, patch {args.patch_size})")
    print("|---|---|---|---|")
    for patches in args.patches:
        tower, text = towers(args)
        naflex = SigLIP(NaFlexImageEncoder(patch_size=args.patch_size, **tower), text)
        sizes = rng.integers(64, 1024, (args.batch_size, 2))
        images = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in sizes]
        inputs = NaFlexImagePreprocessor(args.patch_size, patches)(images)
        naflex_ms = 1000 * step_time(naflex, {**inputs, "token_ids": tokens}, args.steps)
        side = int(round(patches**0.5))
        tower, text = towers(args)
        fixres = SigLIP(ImageEncoder(image_size=side * args.patch_size, patch_size=args.patch_size, **tower), text)
        square = rng.uniform(-1, 1, (args.batch_size, side * args.patch_size, side * args.patch_size, 3))
        fixres_ms = 1000 * step_time(fixres, {"images": square.astype("float32"), "token_ids": tokens}, args.steps)
        print(f"| {patches} | {naflex_ms:.1f} | {fixres_ms:.1f} | {naflex_ms / fixres_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
