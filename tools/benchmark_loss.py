#!/usr/bin/env python
"""Benchmark of the sigmoid loss: dense vs chunked on one device, and the ring on 8 simulated devices.

Forward+backward (`jax.value_and_grad` wrt both embeddings, t' and b, jitted)
of the sigmoid loss, embedding width 768, over a sweep of batch sizes. Every
measurement runs in a fresh subprocess, so one that runs out of memory is
recorded as OOM and the others are unaffected, and peak memory is per
measurement:

- time: median wall time of repeated calls after one warm-up (compile) call;
- XLA memory: from XLA's compiled `memory_analysis()` of the step: the
  temporaries it allocates (`temp`) and in all (arguments + outputs + temp);
- device peak (GPU only): the allocator's `peak_bytes_in_use` after the run,
  which counts everything the process put on the device (inputs included);
- CPU: the process's peak resident memory (`ru_maxrss`), which also counts the
  Python interpreter and libraries (about 0.5-1 GiB of it).

With `--gpu` (bfloat16 embeddings, batch up to 1,048,576) it also times a
bfloat16 matrix product to get the machine's matmul rate, and reports each
run's ratio to the roofline `3 * 2*B*B*d / rate`.

The ring section starts a subprocess with 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`) and reports XLA's
per-device temporary memory of the ring and of the dense loss under the same
`DataParallel` distribution (GSPMD splits the dense logits by rows: B^2/8 per
device) next to (B/8)^2 float32 logits.

Usage:
    python tools/benchmark_loss.py                  # CPU sweep + ring, prints one table
    python tools/benchmark_loss.py --gpu            # the GPU sweep (bfloat16, up to B = 2^20)
    python tools/benchmark_loss.py --batch-sizes 1024,4096 --methods chunked --no-ring
    python tools/benchmark_loss.py --json results.json

Only JAX and Keras are needed: the loss modules are loaded without
`keras_siglip/__init__.py` (whose towers pull TensorFlow and keras-hub).
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CPU_BATCHES = (1024, 2048, 4096, 8192, 16384)
GPU_BATCHES = (16384, 32768, 65536, 98304, 131072, 262144, 524288, 1048576)
RING_BATCHES = (2048, 4096, 8192, 16384, 32768, 65536)
GIB = 2**30
MIB = 2**20


# -- inside a measurement subprocess -------------------------------------------------


def _load_losses():
    """Imports keras_siglip.losses without running keras_siglip/__init__.py."""
    import importlib.util
    import types

    if "keras_siglip" not in sys.modules:
        package = types.ModuleType("keras_siglip")
        package.__path__ = [str(ROOT / "keras_siglip")]
        sys.modules["keras_siglip"] = package
    from keras_siglip.losses import sigmoid

    assert importlib.util.find_spec("keras_siglip.losses") is not None
    return sigmoid


def _inputs(batch, dim, dtype, seed=0):
    """Unit-norm embeddings (text i a noisy copy of image i), made on the host in slices of rows.

    Only the two (B, d) arrays in `dtype` ever reach the device, so the device's
    peak memory counts them and nothing else of the set-up.
    """
    import jax
    import jax.numpy as jnp
    import ml_dtypes  # noqa: F401  (NumPy's bfloat16)
    import numpy as np

    rng = np.random.default_rng(seed)
    image = np.empty((batch, dim), dtype=jnp.dtype(dtype))
    text = np.empty((batch, dim), dtype=jnp.dtype(dtype))
    for start in range(0, batch, 32768):
        rows = min(32768, batch - start)
        x = rng.standard_normal((rows, dim), dtype=np.float32)
        y = x + rng.standard_normal((rows, dim), dtype=np.float32)
        image[start : start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
        text[start : start + rows] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return jax.device_put(image), jax.device_put(text), jnp.float32(np.log(10.0)), jnp.float32(-10.0)


def _step(method, chunk_size):
    """Forward+backward of `sigmoid_loss(method=method)`, jitted.

    "chunked" takes the automatic blocks even below the size where "auto"
    computes densely; "ring" needs the distribution the caller set.
    """
    import jax

    sigmoid = _load_losses()

    def loss(image, text, log_temperature, bias):
        return sigmoid.sigmoid_loss(image, text, log_temperature, bias, method=method, chunk_size=chunk_size)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def measure(config):
    """One (method, batch) measurement; prints one JSON line."""
    import resource

    import jax

    result = dict(config)
    batch, dim, dtype = config["batch"], config["dim"], config["dtype"]
    sigmoid = _load_losses()
    args = _inputs(batch, dim, dtype)
    jax.block_until_ready(args)
    if config["method"] in ("chunked", "auto"):
        result["plan"] = repr(sigmoid.plan_sigmoid_loss(args[0], config["method"], config["chunk_size"]))
    step = _step(config["method"], config["chunk_size"])
    compiled = step.lower(*args).compile()
    memory = compiled.memory_analysis()
    if memory is not None:
        result["xla_temp_bytes"] = int(memory.temp_size_in_bytes)
        result["xla_total_bytes"] = int(
            memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
        )
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    first = time.perf_counter() - start
    times = []
    budget = config["min_time"]
    while len(times) < config["repeats"] and (len(times) < 1 or sum(times) < budget):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    result["first_call_s"] = first
    result["times_s"] = times
    result["time_s"] = sorted(times)[len(times) // 2]
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    result["rss_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result), flush=True)


def matmul_rate(config):
    """FLOP/s of a (m, d) @ (d, n) matmul in the benchmark's dtype, float32 accumulation and result."""
    import jax
    import jax.numpy as jnp

    m = n = config["size"]
    dim, dtype = config["dim"], config["dtype"]
    a = jax.random.normal(jax.random.PRNGKey(1), (m, dim), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(2), (n, dim), jnp.float32).astype(dtype)
    product = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                                       preferred_element_type=jnp.float32))
    jax.block_until_ready(product(a, b))
    times = []
    for _ in range(config["repeats"]):
        start = time.perf_counter()
        jax.block_until_ready(product(a, b))
        times.append(time.perf_counter() - start)
    best = min(times)
    print("RESULT " + json.dumps({"rate_flops": 2.0 * m * n * dim / best, "size": m, "time_s": best}), flush=True)


def measure_ring(config):
    """Per-device XLA memory of the ring and the dense loss under DataParallel on 8 simulated devices."""
    import jax
    import keras

    sigmoid = _load_losses()
    strategy = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    devices = len(jax.devices())
    for batch in config["batches"]:
        args = _inputs(batch, config["dim"], config["dtype"])
        with strategy.scope():
            layout = strategy.get_data_layout(args[0].shape).backend_layout
            args = (*[jax.device_put(a, layout) for a in args[:2]], *args[2:])
            plan = sigmoid.plan_sigmoid_loss(args[0], "ring", config["chunk_size"])
            for method in ("ring", "dense"):
                step = _step(method, config["chunk_size"])
                compiled = step.lower(*args).compile()
                memory = compiled.memory_analysis()
                result = {"method": method, "batch": batch, "devices": devices, "dim": config["dim"],
                          "dtype": config["dtype"], "xla_temp_bytes": int(memory.temp_size_in_bytes),
                          "plan": repr(plan) if method == "ring" else None}
                if config["time"]:
                    jax.block_until_ready(compiled(*args))
                    start = time.perf_counter()
                    jax.block_until_ready(compiled(*args))
                    result["time_s"] = time.perf_counter() - start
                print("RESULT " + json.dumps(result), flush=True)


# -- the driver ------------------------------------------------------------------------


def run_child(kind, config, env=None, timeout=None):
    """Runs `kind(config)` in a fresh Python; returns its RESULT lines, or an error string."""
    code = f"import json, runpy; runpy.run_path({__file__!r})[{kind!r}](json.loads({json.dumps(config)!r}))"
    child_env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    try:
        done = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout} s"
    results = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        text = done.stderr + done.stdout
        if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text or done.returncode == -9:
            return "OOM"
        return "error: " + (text.strip().splitlines() or ["exit %d" % done.returncode])[-1][:200]
    return results


def describe(config):
    """The JAX backend and devices, from a child (the driver never initialises a GPU itself)."""
    import jax

    print("RESULT " + json.dumps({"backend": jax.default_backend(), "jax": jax.__version__,
                                  "devices": [str(d.device_kind) for d in jax.devices()]}), flush=True)


def machine_description(found):
    line = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    try:
        with open("/proc/cpuinfo") as f:
            names = [entry.split(":", 1)[1].strip() for entry in f if entry.startswith("model name")]
        if names:
            line = f"{names[0]}, {os.cpu_count()} CPU cores visible"
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024
        line += f", {total / GIB:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    if found["backend"] != "cpu":
        line += "; " + ", ".join(found["devices"])
    return line + f"; JAX {found['jax']} ({found['backend']}), Python {platform.python_version()}"


def fmt_bytes(value):
    if value is None:
        return "-"
    if value >= GIB:
        return f"{value / GIB:.2f} GiB"
    return f"{value / MIB:.0f} MiB" if value >= 10 * MIB else f"{value / MIB:.2f} MiB"


def fmt_time(value):
    if value is None:
        return "-"
    return f"{value * 1e3:.0f} ms" if value < 10 else f"{value:.1f} s"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="GPU sweep: bfloat16, B up to 2^20, roofline ratio")
    parser.add_argument("--batch-sizes", help="comma-separated batch sizes (default: by --gpu)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--dtype", help="embedding dtype (default float32 on CPU, bfloat16 with --gpu)")
    parser.add_argument("--methods", default="dense,chunked",
                        help="sigmoid_loss methods: dense (B x B, autodiff), chunked (the automatic blocks, "
                             "forced), auto (what sigmoid_loss chooses)")
    parser.add_argument("--chunk-size", type=int, default=None, help="force a chunk size (default: automatic)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls at most (after a warm-up call)")
    parser.add_argument("--min-time", type=float, default=3.0, help="stop repeating once this many seconds ran")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement subprocess")
    parser.add_argument("--skip-dense-above", type=int, default=None,
                        help="do not run dense past this batch (default: 16384 on CPU, 131072 with --gpu)")
    parser.add_argument("--no-ring", action="store_true", help="skip the 8-simulated-device ring section")
    parser.add_argument("--ring-only", action="store_true", help="only the ring section")
    parser.add_argument("--ring-batch-sizes", default=",".join(map(str, RING_BATCHES)))
    parser.add_argument("--ring-time", action="store_true", help="also time the ring on the simulated devices")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args(argv)

    gpu = args.gpu
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else list(GPU_BATCHES if gpu
                                                                                           else CPU_BATCHES)
    dense_limit = args.skip_dense_above or (131072 if gpu else 16384)
    methods = [] if args.ring_only else args.methods.split(",")
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.95"} if gpu else {"JAX_PLATFORMS": "cpu"}

    found = run_child("describe", {}, env, 300)
    if isinstance(found, str):
        sys.exit(f"JAX did not start: {found}")
    if gpu and found[0]["backend"] != "gpu":
        sys.exit(f"--gpu: JAX sees no GPU here (its backend is {found[0]['backend']!r}).")
    print(f"# Machine: {machine_description(found[0])}", flush=True)
    print(f"# width {args.dim}, {dtype} embeddings, forward+backward wrt embeddings, t' and b", flush=True)

    rate = None
    if gpu:
        found = run_child("matmul_rate", {"size": 16384, "dim": args.dim, "dtype": dtype, "repeats": 20}, env)
        if isinstance(found, list):
            rate = found[0]["rate_flops"]
            print(f"# matmul rate ({dtype} 16384x{args.dim} @ {args.dim}x16384, float32 result): "
                  f"{rate / 1e12:.1f} TFLOP/s", flush=True)
        else:
            print(f"# matmul rate: {found}", flush=True)

    records = []
    rows = []
    for batch in batches:
        for method in methods:
            if method == "dense" and batch > dense_limit:
                continue
            config = {"method": method, "batch": batch, "dim": args.dim, "dtype": dtype,
                      "chunk_size": args.chunk_size, "repeats": args.repeats, "min_time": args.min_time}
            found = run_child("measure", config, env, args.timeout)
            record = found[0] if isinstance(found, list) else dict(config, error=found)
            records.append(record)
            rows.append(record)
            print("# " + json.dumps(record), flush=True)

    header = ["B", "method", "time", "XLA temp", "XLA total"]
    header += ["device peak", "x roofline"] if gpu else ["process RSS peak"]
    header += ["plan"]
    table = [header]
    for r in rows:
        line = [str(r["batch"]), r["method"]]
        if "error" in r:
            line += [r["error"]] + ["-"] * (len(header) - 3)
            table.append(line)
            continue
        line += [fmt_time(r["time_s"]), fmt_bytes(r.get("xla_temp_bytes")), fmt_bytes(r.get("xla_total_bytes"))]
        if gpu:
            roofline = 3 * 2.0 * r["batch"] ** 2 * args.dim / rate if rate else None
            line += [fmt_bytes(r.get("device_peak_bytes")),
                     f"{r['time_s'] / roofline:.2f}" if roofline else "-"]
        else:
            line += [fmt_bytes(r.get("rss_peak_bytes"))]
        plan = r.get("plan") or "-"
        line += [plan.replace("LossPlan(", "").replace(")", "") if plan != "-" else "B x B"]
        table.append(line)

    if len(table) > 1:
        print()
        print(_markdown(table))
    ratios = _ratios(rows)
    if ratios:
        print()
        print(_markdown([["B", "chunked/dense time", "chunked/dense XLA temp", "chunked/dense XLA total"]] + ratios))

    if not args.no_ring:
        ring_config = {"batches": [int(b) for b in args.ring_batch_sizes.split(",")], "dim": args.dim,
                       "dtype": "float32", "chunk_size": None, "time": args.ring_time}
        ring_env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
        found = run_child("measure_ring", ring_config, ring_env, args.timeout)
        print()
        if isinstance(found, str):
            print(f"ring: {found}")
        else:
            records += found
            ring_table = [["B", "B/8", "block of logits", "ring temp / device", "x previous B", "(B/8)^2 float32", "ring / (B/8)^2",
                           "dense temp / device", "dense / ring"]
                          + (["ring time", "dense time"] if args.ring_time else [])]
            by = {(r["method"], r["batch"]): r for r in found}
            previous = None
            for batch in ring_config["batches"]:
                ring_r, dense_r = by[("ring", batch)], by[("dense", batch)]
                local = (batch // 8) ** 2 * 4
                growth = f"{ring_r['xla_temp_bytes'] / previous:.2f}" if previous else "-"
                previous = ring_r["xla_temp_bytes"]
                block = f"{batch // 8} x {_plan_field(ring_r['plan'], 'col_chunk')}"
                line = [str(batch), str(batch // 8), block, fmt_bytes(ring_r["xla_temp_bytes"]), growth, fmt_bytes(local),
                        f"{ring_r['xla_temp_bytes'] / local:.2f}", fmt_bytes(dense_r["xla_temp_bytes"]),
                        f"{dense_r['xla_temp_bytes'] / ring_r['xla_temp_bytes']:.1f}"]
                if args.ring_time:
                    line += [fmt_time(ring_r.get("time_s")), fmt_time(dense_r.get("time_s"))]
                ring_table.append(line)
            print("Ring, 8 simulated CPU devices (DataParallel), float32, per-device XLA temporaries:")
            print(_markdown(ring_table))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(records, indent=1))


def _plan_field(plan, name):
    import re

    found = re.search(name + r"=([^,)]+)", plan or "")
    return found.group(1) if found else "?"


def _ratios(rows):
    by = {(r["method"], r["batch"]): r for r in rows if "error" not in r}
    out = []
    for (method, batch), r in sorted(by.items(), key=lambda item: item[0][1]):
        dense = by.get(("dense", batch))
        if method != "chunked" or dense is None:
            continue
        out.append([str(batch), f"{r['time_s'] / dense['time_s']:.2f}",
                    f"{r['xla_temp_bytes'] / dense['xla_temp_bytes']:.3f}" if "xla_temp_bytes" in r else "-",
                    f"{r['xla_total_bytes'] / dense['xla_total_bytes']:.3f}" if "xla_total_bytes" in r else "-"])
    return out


def _markdown(table):
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
