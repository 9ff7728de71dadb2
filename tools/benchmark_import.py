"""How long `import keras_siglip` takes against `import keras`, per backend, and what it loads.

    .venv/bin/python tools/benchmark_import.py [--rounds 5] [--backends jax,tensorflow,torch]

Each measurement is a fresh interpreter timing one import statement (interpreter
start-up not included); rounds alternate the order of the two statements and the
table gives medians. `heavy` lists which of tensorflow, tensorflow_text, keras_hub
and torch are in `sys.modules` after the import (on the TensorFlow and PyTorch
backends Keras itself imports its backend). The target is `import keras_siglip`
at most 1.3x `import keras`.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

HEAVY = ("tensorflow", "tensorflow_text", "keras_hub", "torch")
BACKEND_MODULE = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}
TARGET = 1.3

_PROBE = """
import sys, time, json
start = time.perf_counter()
import {module}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def measure(module, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", _PROBE.format(module=module, heavy=HEAVY)], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"import {module} on {backend} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark(backend, rounds):
    times = {"keras": [], "keras_siglip": []}
    heavy = {}
    for round_ in range(rounds):
        order = ("keras", "keras_siglip") if round_ % 2 == 0 else ("keras_siglip", "keras")
        for module in order:
            result = measure(module, backend)
            times[module].append(result["seconds"])
            heavy[module] = result["heavy"]
    keras_s, ours_s = (statistics.median(times[m]) for m in ("keras", "keras_siglip"))
    return {"backend": backend, "keras_s": keras_s, "keras_siglip_s": ours_s, "ratio": ours_s / keras_s,
            "heavy_keras": heavy["keras"], "heavy_keras_siglip": heavy["keras_siglip"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        if importlib.util.find_spec(BACKEND_MODULE[backend]) is None:
            print(f"{backend}: not installed, skipped", flush=True)
            continue
        rows.append(benchmark(backend, args.rounds))
        print(f"{backend}: done", flush=True)
    print(f"\nmedian of {args.rounds} fresh interpreters per cell (import statement only)\n")
    print("| backend | import keras | import keras_siglip | ratio | heavy after keras | heavy after keras_siglip |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        flag = "" if row["ratio"] <= TARGET else f" (over {TARGET}x)"
        print(f"| {row['backend']} | {row['keras_s']:.2f} s | {row['keras_siglip_s']:.2f} s | "
              f"{row['ratio']:.2f}x{flag} | {', '.join(row['heavy_keras']) or '-'} | "
              f"{', '.join(row['heavy_keras_siglip']) or '-'} |")


if __name__ == "__main__":
    main()
