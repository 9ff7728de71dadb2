"""Training speed of keras_siglip against keras-hub's SigLIPBackbone (and transformers' SiglipModel on torch).

Every library trains the same SigLIP configuration on the same random batch,
each in its own process (so peak memory is its own), and the table gives step
time, image-text pairs per second, achieved TFLOP/s from analytic FLOPs, MFU
against `--peak_tflops`, and peak memory (device memory on a GPU, resident set
size on the CPU).

    # CPU, small configuration, beside keras-hub's SigLIPBackbone
    KERAS_BACKEND=jax python tools/benchmark_train.py
    # One GPU: SigLIP B/16-224, text length 64, vocabulary 32k, batch 256, bf16
    KERAS_BACKEND=jax python tools/benchmark_train.py --config=B16 --peak_tflops=989
    KERAS_BACKEND=torch python tools/benchmark_train.py --config=B16 --peak_tflops=989 \\
        --libraries=keras_siglip,transformers --torch_compile
    # Largest batch that trains, with and without rematerialised encoder blocks
    KERAS_BACKEND=jax python tools/benchmark_train.py --config=B16 --libraries=keras_siglip \\
        --batch_sizes=256,512,768,1024,1536,2048 --remat=false,true --steps=3
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

from benchmark_configs import CONFIGS  # noqa: E402  (tools/ is on sys.path when a tool runs)

flags.DEFINE_enum("config", "small", list(CONFIGS), "Model and batch configuration.")
flags.DEFINE_list("libraries", ["keras_siglip", "keras_hub"],
                  "Any of keras_siglip, keras_hub, transformers (transformers needs KERAS_BACKEND=torch).")
flags.DEFINE_list("batch_sizes", [], "Batch sizes to run (default: the configuration's).")
flags.DEFINE_list("remat", ["false"], "keras_siglip only: rematerialise encoder blocks (false, true or both).")
flags.DEFINE_bool("compare_unfused", False, "Add a keras_siglip row with separate attention projections.")
flags.DEFINE_string("dtype", None, "float32 or mixed_bfloat16 (default: the configuration's).")
flags.DEFINE_integer("steps", 10, "Timed steps, after 2 warm-up steps (the first one, compilation included, is timed alone).")
flags.DEFINE_integer("repeats", 3, "Fresh-process measurements per row, taken in turn across libraries; the fastest is shown.")
flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s at this dtype, for MFU (H100 SXM bf16: 989).")
flags.DEFINE_bool("torch_compile", False, "On torch: keras_siglip with jit_compile=True, transformers with torch.compile.")
flags.DEFINE_string("worker", None, "Internal: run one measurement given as JSON and print the result as JSON.")
FLAGS = flags.FLAGS


def training_flops_per_pair(c):
    """Analytic FLOPs (2 per multiply-add) of one pair's forward and backward pass (3x forward)."""
    width, mlp, depth = c["width"], c["mlp_dim"], c["depth"]

    def blocks(tokens):
        projections = 4 * width * width + 2 * width * mlp
        return depth * (2 * tokens * projections + 2 * 2 * tokens * tokens * width)

    patches = (c["image_size"] // c["patch_size"]) ** 2
    patch_embedding = 2 * patches * c["patch_size"] ** 2 * 3 * width
    map_head = 2 * (2 * patches * width * width + 2 * width * width + 2 * patches * width + 2 * width * mlp)
    image = patch_embedding + blocks(patches) + map_head
    text = blocks(c["sequence_length"]) + 2 * width * width  # + the text head
    similarity = 2 * c["batch_size"] * width  # one row of the B x B logits
    return 3 * (image + text + similarity)


def peak_memory_bytes():
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return device.memory_stats()["peak_bytes_in_use"], "device"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated(), "device"
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"], "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host RSS"


def random_batch(c, channels_first=False):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (c["batch_size"], c["image_size"], c["image_size"], 3)
    images = rng.uniform(-1, 1, shape).astype("float32")
    if channels_first:
        images = images.transpose(0, 3, 1, 2).copy()
    token_ids = rng.integers(0, c["vocabulary_size"], (c["batch_size"], c["sequence_length"])).astype("int32")
    return images, token_ids


def optimizer():
    import keras

    # big_vision's SigLIP optimizer, identical for every Keras library.
    return keras.optimizers.AdamW(1e-3, weight_decay=1e-4, beta_2=0.95, global_clipnorm=1.0)


def build_keras_siglip(c):
    from keras_siglip import ImageEncoder, SigLIP, TextEncoder
    from keras_siglip.models.siglip.layers import MultiHeadAttention

    tower = {k: c[k] for k in ("width", "depth", "num_heads", "mlp_dim")}
    image_encoder = ImageEncoder(c["image_size"], c["patch_size"], remat=c["remat"], **tower)
    text_encoder = TextEncoder(c["vocabulary_size"], c["sequence_length"], output_dim=c["width"],
                               remat=c["remat"], **tower)
    model = SigLIP(image_encoder, text_encoder)
    if c.get("unfused"):
        for layer in model._flatten_layers():
            if isinstance(layer, MultiHeadAttention):
                layer.fused_projections = False
    model.compile(optimizer=optimizer(), jit_compile=c["jit_compile"])
    return model


def build_keras_hub(c):
    import keras_hub

    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=c["patch_size"], hidden_dim=c["width"], num_layers=c["depth"], num_heads=c["num_heads"],
        intermediate_dim=c["mlp_dim"], image_shape=(c["image_size"], c["image_size"], 3),
    )
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=c["vocabulary_size"], embedding_dim=c["width"], hidden_dim=c["width"],
        num_layers=c["depth"], num_heads=c["num_heads"], intermediate_dim=c["mlp_dim"],
        max_sequence_length=c["sequence_length"], projection_dim=c["width"],
    )
    model = keras_hub.models.SigLIPBackbone(vision, text)
    model.compile(optimizer=optimizer(), jit_compile=c["jit_compile"])
    return model


def time_keras(model, c):
    from keras import ops

    images, token_ids = random_batch(c)
    batch = {"images": ops.convert_to_tensor(images), "token_ids": ops.convert_to_tensor(token_ids)}
    start = time.perf_counter()
    loss = model.train_on_batch(batch)  # compiles (XLA, or torch.compile's encoder blocks)
    first = time.perf_counter() - start
    loss = model.train_on_batch(batch)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        loss = model.train_on_batch(batch)
    float(loss)  # train_on_batch returns host values, so the device has finished
    return (time.perf_counter() - start) / FLAGS.steps, float(loss), first


def time_transformers(c):
    import torch
    from transformers import SiglipConfig, SiglipModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tower = dict(hidden_size=c["width"], intermediate_size=c["mlp_dim"], num_hidden_layers=c["depth"],
                 num_attention_heads=c["num_heads"], hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    config = SiglipConfig(
        text_config=dict(tower, vocab_size=c["vocabulary_size"], max_position_embeddings=c["sequence_length"]),
        vision_config=dict(tower, image_size=c["image_size"], patch_size=c["patch_size"]),
    )
    config._attn_implementation = "sdpa"
    model = SiglipModel(config).to(device).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=1e-4)
    images, token_ids = random_batch(c, channels_first=True)
    images, token_ids = torch.from_numpy(images).to(device), torch.from_numpy(token_ids).long().to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=c["dtype"] == "mixed_bfloat16")

    def step():
        with autocast:
            loss = model(input_ids=token_ids, pixel_values=images, return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        return loss

    if c["jit_compile"]:
        step = torch.compile(step)
    start = time.perf_counter()
    float(step())
    first = time.perf_counter() - start
    step()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        loss = step()
    loss = float(loss)  # waits for the device
    return (time.perf_counter() - start) / FLAGS.steps, loss, first


def run_worker(c):
    import keras

    keras.config.set_dtype_policy(c["dtype"])
    keras.utils.set_random_seed(0)
    if c["library"] == "transformers":
        seconds, loss, first = time_transformers(c)
    else:
        model = (build_keras_siglip if c["library"] == "keras_siglip" else build_keras_hub)(c)
        seconds, loss, first = time_keras(model, c)
    memory, memory_kind = peak_memory_bytes()
    return dict(seconds=seconds, loss=loss, first_step_seconds=first, memory=memory, memory_kind=memory_kind)


def measure(c):
    """Runs one measurement in a fresh process; returns its result, or the error it ended with."""
    command = [sys.executable, __file__, f"--worker={json.dumps(c)}", f"--steps={FLAGS.steps}"]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    lines = (done.stderr or done.stdout).strip().splitlines()
    reason = next((l for l in reversed(lines) if "Error" in l or "error" in l), lines[-1] if lines else "?")
    return {"error": reason[-100:]}


def main(argv):
    if FLAGS.worker:
        print(json.dumps(run_worker(json.loads(FLAGS.worker))))
        return
    import keras

    backend = keras.backend.backend()
    base = dict(CONFIGS[FLAGS.config])
    if FLAGS.dtype:
        base["dtype"] = FLAGS.dtype
    # XLA compilation on JAX and TF is Keras's "auto"; torch compiles only on request.
    base["jit_compile"] = FLAGS.torch_compile if backend == "torch" else "auto"
    remats = [value.lower() == "true" for value in FLAGS.remat]
    batch_sizes = [int(b) for b in FLAGS.batch_sizes] or [base["batch_size"]]

    print(f"backend {backend}, config {FLAGS.config} ({base['dtype']}), {FLAGS.steps} timed steps, "
          f"best of {FLAGS.repeats} runs; "
          f"{'torch.compile' if base['jit_compile'] is True else 'XLA' if backend != 'torch' else 'eager'}")
    header = (f"| library | batch | remat | ms/step (each run) | first step (s) | pairs/s | TFLOP/s | MFU | "
              f"peak memory (GiB) | loss |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for batch_size in batch_sizes:
        for library in FLAGS.libraries:
            if library == "transformers" and backend != "torch":
                raise app.UsageError("transformers runs only with KERAS_BACKEND=torch.")
            for remat in remats if library == "keras_siglip" else [False]:
                rows.append(dict(base, batch_size=batch_size, library=library, remat=remat))
                if library == "keras_siglip" and FLAGS.compare_unfused and not remat:
                    rows.append(dict(base, batch_size=batch_size, library=library, remat=remat, unfused=True))
    # Round-robin repeats: a shared or throttled machine slows every library alike,
    # and the fastest of a row's runs is its least disturbed one.
    results = [[] for _ in rows]
    for _ in range(FLAGS.repeats):
        for row, runs in zip(rows, results):
            runs.append(measure(row))
            # Each measurement as it lands: a run cut short by a time limit still leaves its figures.
            print(f"# {row['library']}, batch {row['batch_size']}, remat {row['remat']}: {json.dumps(runs[-1])}",
                  flush=True)
    print(header, flush=True)
    rates = {}
    for c, runs in zip(rows, results):
        library, batch_size, remat = c["library"], c["batch_size"], c["remat"]
        if c.get("unfused"):
            library += " (unfused projections)"
        finished = [r for r in runs if "error" not in r]
        if not finished:
            print(f"| {library} | {batch_size} | {remat} | failed: {runs[-1]['error']} ||||||||", flush=True)
            continue
        result = min(finished, key=lambda r: r["seconds"])
        seconds = result["seconds"]
        pairs = batch_size / seconds
        tflops = training_flops_per_pair(c) * pairs / 1e12
        mfu = f"{tflops / FLAGS.peak_tflops:.1%}" if FLAGS.peak_tflops else "-"
        memory = f"{result['memory'] / 2**30:.2f} ({result['memory_kind']})"
        spread = " / ".join(f"{r['seconds'] * 1e3:.0f}" for r in finished)
        rates[(library, batch_size, remat)] = pairs
        first = min(r["first_step_seconds"] for r in finished)
        print(f"| {library} | {batch_size} | {remat} | {seconds * 1e3:.1f} ({spread}) | {first:.1f} | {pairs:,.0f} | "
              f"{tflops:.2f} | "
              f"{mfu} | {memory} | {result['loss']:.4f} |", flush=True)
    for (library, batch_size, remat), pairs in rates.items():
        peer = rates.get(("keras_hub", batch_size, False)) or rates.get(("transformers", batch_size, False))
        if library == "keras_siglip" and peer:
            print(f"keras_siglip (batch {batch_size}, remat {remat}) / peer pairs/s: {pairs / peer:.2f}x")


if __name__ == "__main__":
    app.run(main)
