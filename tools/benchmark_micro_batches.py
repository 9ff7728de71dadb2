"""Memory and time of a training step with and without `compile(micro_batch_size=m)` (JAX).

For each global batch B, the table gives the XLA working memory of the compiled
training step (`temp_size_in_bytes` of its memory analysis: activations and
everything else the step allocates besides its inputs and outputs) and the
median step time, for the full batch and for micro-batches of m pairs.

    KERAS_BACKEND=jax python tools/benchmark_micro_batches.py
    KERAS_BACKEND=jax python tools/benchmark_micro_batches.py --micro_batch_size=16 --batch_sizes=16,64,256 --steps=3
    # One GPU: B/16-224 in bfloat16, batch 256 in full beside 32,768 in micro-batches of 256
    KERAS_BACKEND=jax python tools/benchmark_micro_batches.py --config=B16 --micro_batch_size=256 \\
        --batch_sizes=256,32768 --full_batch_sizes=256 --steps=2
"""

import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("micro_batch_size", 16, "Pairs per micro-batch.")
flags.DEFINE_list("batch_sizes", ["16", "64", "256"], "Global batch sizes.")
flags.DEFINE_integer("steps", 3, "Timed steps per setting (after one untimed).")
flags.DEFINE_boolean("time_steps", True, "Also time the steps (memory alone is quick).")
flags.DEFINE_enum("config", "small", ["small", "B16"], "Model size.")
flags.DEFINE_list("full_batch_sizes", None, "Batch sizes to also run without micro-batches (default: all).")
FLAGS = flags.FLAGS

from benchmark_configs import CONFIGS  # noqa: E402  (benchmark_train.py's configurations)


def build(micro_batch_size, config):
    import keras

    from keras_siglip import ImageEncoder, SigLIP, TextEncoder

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(config["dtype"])
    tower = {k: config[k] for k in ("width", "depth", "num_heads", "mlp_dim")}
    model = SigLIP(
        ImageEncoder(image_size=config["image_size"], patch_size=config["patch_size"], **tower),
        TextEncoder(vocabulary_size=config["vocabulary_size"], sequence_length=config["sequence_length"], **tower),
    )
    model.compile(micro_batch_size=micro_batch_size)
    model.optimizer.build(model.trainable_variables)
    return model


def batch(size, config):
    import numpy as np

    rng = np.random.default_rng(0)
    side = config["image_size"]
    return {
        "images": rng.uniform(-1, 1, (size, side, side, 3)).astype("float32"),
        "token_ids": rng.integers(0, config["vocabulary_size"], (size, config["sequence_length"])).astype("int32"),
    }


def working_memory(model, data):
    """XLA's working memory of the compiled training step, in bytes."""
    import jax

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
        [v.value for v in model.metrics_variables],
    )
    compiled = jax.jit(model.train_step).lower(state, data).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def step_seconds(model, data, steps):
    model.train_on_batch(data)  # compiles
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(_):
    import jax

    m = FLAGS.micro_batch_size
    config = CONFIGS[FLAGS.config]
    sizes = [int(b) for b in FLAGS.batch_sizes]
    full_sizes = sizes if FLAGS.full_batch_sizes is None else [int(b) for b in FLAGS.full_batch_sizes]
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; {FLAGS.config} {config}")
    print(f"{'batch':>6} | {'full MiB':>9} | {f'm={m} MiB':>9} | {'full s':>7} | {f'm={m} s':>7} | "
          f"{'full pairs/s':>12} | {f'm={m} pairs/s':>12}")
    for size in sizes:
        data = batch(size, config)
        cells = []
        for micro_batch_size in (None, m):
            if micro_batch_size is None and size not in full_sizes or micro_batch_size and size < m:
                cells.append(None)
                continue
            model = build(micro_batch_size, config)
            memory = working_memory(model, data)  # before training: Keras's JAX loop then holds the state
            seconds = step_seconds(model, data, FLAGS.steps) if FLAGS.time_steps else None
            cells.append((memory, seconds))
            del model
        memory = [f"{c[0] / 2**20:>9.1f}" if c else f"{'-':>9}" for c in cells]
        times = [f"{c[1]:>7.3f}" if c and c[1] else f"{'-':>7}" for c in cells]
        rates = [f"{size / c[1]:>12.1f}" if c and c[1] else f"{'-':>12}" for c in cells]
        print(f"{size:>6} | {memory[0]} | {memory[1]} | {times[0]} | {times[1]} | {rates[0]} | {rates[1]}", flush=True)


if __name__ == "__main__":
    app.run(main)
