"""Images/s of the input pipeline: JPEG files to batched `{"images", "token_ids"}`.

Writes `--images` synthetic JPEGs (smooth gradients, shapes and noise, like
photos in size: `--source-size` px, quality 90, as img2dataset stores them) in
all three layouts the readers take, then times each reader at the model
resolution (`--image-size`, 224) with 64-token captions, in evaluation mode
(decode, resize, scale) and in training mode (random resized crop and flip,
shuffling), and with `--modes=naflex` through a SigLIP 2 `NaFlexImagePreprocessor`
(patch 16, `--max-num-patches` 256: aspect ratio kept, resized and cut into
patches by PIL in a `tf.numpy_function`), with tf.data allowed 1 thread and all cores. Prints a Markdown
table with the wall-clock rate and the images per CPU-second (CPU time of all
threads: on a machine shared with other jobs, the cost of the work itself).
Decoding and resizing run in TensorFlow's C++ threads, so the rate grows
about linearly with cores (the last column: per-CPU-second rate x cores) until
the disk or the Python side of the tar reader (one generator per shard) is the
limit.

    KERAS_BACKEND=jax .venv/bin/python tools/benchmark_input.py --images 1024
"""

import argparse
import io
import os
import resource
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_siglip import NaFlexImagePreprocessor, SigLIPImagePreprocessor, SigLIPTokenizer  # noqa: E402
from keras_siglip.data import read_manifest, read_tar_shards, read_tfrecords  # noqa: E402

WORDS = "a photo of the small large red green blue cat dog bird car tree house on in with next to street beach".split()


def synthetic_photo(rng, size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([x, y, (x + y) / 2], -1) * rng.uniform(60, 200, 3) + rng.uniform(0, 50, 3)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1, 3)
        base[(y - cy) ** 2 + (x - cx) ** 2 < (r / 3) ** 2] = rng.uniform(0, 255, 3)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def write_corpus(folder, count, size, shards):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        jpeg = tf.io.encode_jpeg(synthetic_photo(rng, size), quality=90).numpy()
        caption = " ".join(rng.choice(WORDS, rng.integers(5, 15)))
        samples.append((f"{i:06d}", jpeg, caption))
        with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as file:
            file.write(jpeg)
    with open(os.path.join(folder, "pairs.csv"), "w") as file:
        file.write("image,caption\n" + "".join(f"{key}.jpg,{caption}\n" for key, _, caption in samples))
    for shard in range(shards):
        with tarfile.open(os.path.join(folder, f"{shard:05d}.tar"), "w") as archive:
            for key, jpeg, caption in samples[shard::shards]:
                for name, data in ((f"{key}.jpg", jpeg), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        with tf.io.TFRecordWriter(os.path.join(folder, f"{shard:05d}.tfrecord")) as writer:
            for key, jpeg, caption in samples[shard::shards]:
                feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
                           for name, value in (("key", key.encode()), ("jpg", jpeg), ("txt", caption.encode()))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return samples


def make_tokenizer(samples, folder):
    import sentencepiece

    path = os.path.join(folder, "spm.model")
    with open(path, "wb") as file:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter([caption for _, _, caption in samples]), model_writer=file,
            vocab_size=60, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
        )
    return SigLIPTokenizer(path, sequence_length=64)


def images_per_second(dataset, batch_size, min_images, threads):
    options = tf.data.Options()
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    dataset = dataset.repeat().with_options(options)
    iterator = iter(dataset)
    for _ in range(2):  # warm-up: tracing, thread start-up, autotuning
        next(iterator)
    steps = max(1, min_images // batch_size)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    for _ in range(steps):
        batch = next(iterator)
    next(iter(batch.values())).numpy()
    images = steps * batch_size
    return images / (time.perf_counter() - start), images / (cpu_seconds() - cpu_start)


def cpu_seconds():
    """CPU time of all this process's threads: on a shared machine, what the work itself costs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="JPEGs written per layout")
    parser.add_argument("--source-size", type=int, default=256, help="side of the stored JPEGs")
    parser.add_argument("--image-size", type=int, default=224, help="model resolution")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--measure", type=int, default=2048, help="images timed per configuration")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--layouts", default="tar,tfrecord,csv")
    parser.add_argument("--modes", default="eval,train", help="eval, train and/or naflex")
    parser.add_argument("--max-num-patches", type=int, default=256, help="patches per image in naflex mode")
    args = parser.parse_args()

    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        samples = write_corpus(folder, args.images, args.source_size, args.shards)
        tokenizer = make_tokenizer(samples, folder)
        readers = {
            "tar": lambda **k: read_tar_shards(os.path.join(folder, "*.tar"), **k),
            "tfrecord": lambda **k: read_tfrecords(os.path.join(folder, "*.tfrecord"), **k),
            "csv": lambda **k: read_manifest(os.path.join(folder, "pairs.csv"), **k),
        }
        print(f"{args.source_size}-px JPEGs -> {args.image_size}-px float32 images + 64 token ids, "
              f"batch {args.batch_size}, {cores} CPU cores, load average {os.getloadavg()[0]:.1f} at start\n")
        print("| layout | mode | tf.data threads | images/s (wall) | images per CPU-second | "
              f"{cores} idle cores (projected) |")
        print("|---|---|---|---|---|---|")
        for layout in args.layouts.split(","):
            for mode in args.modes.split(","):
                training = mode == "train"
                preprocessor = SigLIPImagePreprocessor(
                    args.image_size, random_resized_crop=training, horizontal_flip=training
                ) if mode != "naflex" else NaFlexImagePreprocessor(16, args.max_num_patches)
                for threads in (1, None):
                    dataset = readers[layout](
                        tokenizer=tokenizer, image_preprocessor=preprocessor, batch_size=args.batch_size,
                        training=training, shuffle_buffer=1000,
                    )
                    rate, per_cpu = images_per_second(dataset, args.batch_size, args.measure, threads)
                    print(f"| {layout} | {mode} | {threads or f'all ({cores})'} | {rate:,.0f} | {per_cpu:,.0f} "
                          f"| {per_cpu * cores:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
