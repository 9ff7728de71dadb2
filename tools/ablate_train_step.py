"""What each piece of an encoder block costs in the whole training step, by taking it out.

A profile of a compiled step on a few CPU cores overstates elementwise work
(XLA runs independent kernels side by side, so their durations overlap). This
measures the marginal cost instead: the same keras_siglip step as
`tools/benchmark_train.py` (small configuration, JAX), once as it is and once
with one piece replaced by something nearly free, each run in a fresh process,
rounds interleaved. The variants compute a different model; only their times
mean anything.

    KERAS_BACKEND=jax python tools/ablate_train_step.py --rounds=2
    KERAS_BACKEND=jax python tools/ablate_train_step.py --variants=as_is,no_gelu
"""

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "as_is": "the step as it is",
    "no_gelu": "the MLP's GELU replaced by the identity",
    "no_layer_norm": "every LayerNorm replaced by the identity",
    "no_attention_core": "softmax(QK^T)V replaced by Q plus the mean of K and V (projections kept)",
}


def take_out(variant):
    import keras
    from keras import ops

    if variant == "no_gelu":
        keras.activations.gelu = lambda x, approximate=False: x
    elif variant == "no_layer_norm":
        keras.layers.LayerNormalization.call = lambda self, x: x
        ops.layer_normalization = lambda x, *args, **kwargs: x
    elif variant == "no_attention_core":
        ops.dot_product_attention = lambda q, k, v, **kwargs: (
            q + ops.mean(k, axis=1, keepdims=True) + ops.mean(v, axis=1, keepdims=True))


def run_worker(variant, steps):
    sys.path.insert(0, os.path.dirname(__file__))
    import benchmark_train  # its model, data and optimizer, so both tools time the same step
    import keras
    from absl import flags
    from keras import ops

    take_out(variant)
    flags.FLAGS(["benchmark_train"])
    config = dict(benchmark_train.CONFIGS["small"], remat=False, jit_compile="auto", library="keras_siglip")
    keras.utils.set_random_seed(0)
    model = benchmark_train.build_keras_siglip(config)
    images, token_ids = benchmark_train.random_batch(config)
    batch = {"images": ops.convert_to_tensor(images), "token_ids": ops.convert_to_tensor(token_ids)}
    for _ in range(2):
        model.train_on_batch(batch)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(batch)
        best = min(best, (time.perf_counter() - start) / steps)
    return {"ms": best * 1e3, "loss": float(loss)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=2, help="fresh-process runs per variant, interleaved")
    parser.add_argument("--steps", type=int, default=5,
                        help="timed steps per repeat (3 repeats, the fastest kept), after 2 warm-up steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: time one variant, print JSON
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.steps)))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    times = {variant: [] for variant in variants}
    for _ in range(args.rounds):
        for variant in variants:
            command = [sys.executable, __file__, f"--worker={variant}", f"--steps={args.steps}"]
            done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, KERAS_BACKEND="jax"))
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if not lines:
                print(f"# {variant}: failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
                continue
            times[variant].append(json.loads(lines[-1])["ms"])
            print(f"# {variant}: {times[variant][-1]:.1f} ms/step", flush=True)
    base = min(times.get("as_is") or [float("nan")])
    print("| variant | what is taken out | ms/step (each run) | saved vs as_is (ms) |\n|---|---|---|---|")
    for variant, runs in times.items():
        if runs:
            best = min(runs)
            each = " / ".join(f"{t:.0f}" for t in runs)
            print(f"| {variant} | {VARIANTS[variant]} | {best:.1f} ({each}) | {base - best:.0f} |")


if __name__ == "__main__":
    main()
