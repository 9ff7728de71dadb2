"""Training speed of SigLiT from cached image embeddings versus full SigLIP training.

Both runs train the same configuration on the same random data in one process:
full SigLIP runs both towers forward and backward; SigLiT with a locked image
tower reads precomputed image embeddings, so only the text tower runs.

    KERAS_BACKEND=jax python tools/benchmark_lit.py --variant=S --image_size=128 --batch_size=64
"""

import time

from absl import app, flags

flags.DEFINE_string("variant", "S", "Tower size (keras_siglip.VARIANTS).")
flags.DEFINE_integer("image_size", 128, "Image side in pixels.")
flags.DEFINE_integer("patch_size", 16, "Patch side in pixels.")
flags.DEFINE_integer("sequence_length", 16, "Text tokens.")
flags.DEFINE_integer("vocabulary_size", 32_000, "Vocabulary size.")
flags.DEFINE_integer("batch_size", 64, "Pairs per step.")
flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")
FLAGS = flags.FLAGS


def steps_per_second(model, batch, steps):
    model.train_on_batch(batch)  # compile
    model.train_on_batch(batch)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(batch)
    float(loss)  # wait for the device
    return steps / (time.perf_counter() - start)


def main(argv):
    import keras
    import numpy as np

    from keras_siglip import SigLIP

    def build(lock):
        keras.utils.set_random_seed(0)
        return SigLIP.from_variant(
            FLAGS.variant,
            image_size=FLAGS.image_size,
            patch_size=FLAGS.patch_size,
            vocabulary_size=FLAGS.vocabulary_size,
            sequence_length=FLAGS.sequence_length,
            lock_image_tower=lock,
        )

    rng = np.random.default_rng(0)
    size, batch_size = FLAGS.image_size, FLAGS.batch_size
    images = rng.uniform(-1, 1, (batch_size, size, size, 3)).astype("float32")
    token_ids = rng.integers(0, FLAGS.vocabulary_size, (batch_size, FLAGS.sequence_length)).astype("int32")

    full = build(lock=False)
    full.compile()
    full_rate = steps_per_second(full, {"images": images, "token_ids": token_ids}, FLAGS.steps)

    lit = build(lock=True)
    lit.compile()
    cache_start = time.perf_counter()
    embeddings = keras.ops.convert_to_numpy(lit.image_encoder(images))
    cache_seconds = time.perf_counter() - cache_start
    lit_rate = steps_per_second(lit, {"image_embeddings": embeddings, "token_ids": token_ids}, FLAGS.steps)

    print(f"backend {keras.backend.backend()}, {FLAGS.variant}/{FLAGS.patch_size} at {size}px, "
          f"text length {FLAGS.sequence_length}, batch {batch_size}, {FLAGS.steps} timed steps")
    print(f"{'run':<34}{'steps/s':>10}{'pairs/s':>10}")
    print(f"{'SigLIP, both towers':<34}{full_rate:>10.2f}{full_rate * batch_size:>10.0f}")
    print(f"{'SigLiT from cached embeddings':<34}{lit_rate:>10.2f}{lit_rate * batch_size:>10.0f}")
    print(f"speed-up {lit_rate / full_rate:.1f}x (caching one batch took {cache_seconds:.2f} s, once)")


if __name__ == "__main__":
    app.run(main)
