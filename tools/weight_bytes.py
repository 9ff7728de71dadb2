"""Per-device weight bytes of SigLIP So400m and multilingual B: replicated vs model parallel.

    python tools/weight_bytes.py            # from shapes and layouts, allocates nothing
    python tools/weight_bytes.py --measure  # also builds each model under each model-parallel
                                            # mesh and adds up the shards device 0 really holds

Runs on 8 simulated CPU devices unless real accelerators are present. Each
mesh is (batch, model); "replicated" is `DataParallel` over the 8 devices.
Model parallel must hold at most 1/6 of the replicated bytes per device. AdamW's
two slots per weight take the same layouts, so weights + optimizer state scale
the same way (x3).
"""

import argparse
import math
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
if "device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_siglip import SigLIP, distribution  # noqa: E402

CONFIGS = {
    # name: (variant, from_variant arguments), the released models' shapes.
    "So400m/14-224": ("So400m", dict(image_size=224, patch_size=14, vocabulary_size=32_000, sequence_length=16)),
    "B/16-i18n-256": ("B", dict(image_size=256, patch_size=16, vocabulary_size=250_000, sequence_length=64)),
}
MESHES = ((1, 8), (2, 4), (4, 2), (8, 1))
LIMIT = 1 / 6


def strategies():
    yield "replicated (8-way data)", distribution.data_parallel(keras.distribution.list_devices()[:8])
    for shape in MESHES:
        yield f"model parallel {shape[0]}x{shape[1]}", distribution.model_parallel(shape)


def abstract_model(variant, arguments):
    """The model's variables with shapes and paths, none of them allocated."""
    with keras.StatelessScope(initialize_variables=False):
        return SigLIP.from_variant(variant, **arguments)


def per_device_bytes(variables, strategy):
    """Bytes of weights one device holds under `strategy` (every split is even)."""
    sizes = dict(zip(strategy.device_mesh.axis_names, strategy.device_mesh.shape))
    total = 0
    for variable in variables:
        layout = strategy.get_variable_layout(variable)  # raises if a split is uneven
        ways = math.prod(sizes[axis] for axis in layout.axes if axis is not None)
        total += math.prod(variable.shape) * np.dtype(variable.dtype).itemsize // ways
    return total


def measured_bytes(variant, arguments, strategy):
    """Bytes device 0 really holds after building the model under `strategy`."""
    keras.utils.clear_session()
    with strategy.scope():
        model = SigLIP.from_variant(variant, **arguments)
    device = strategy.device_mesh.backend_mesh.devices.flat[0]
    held = sum(s.data.nbytes for v in model.weights for s in v.value.addressable_shards if s.device == device)
    del model
    keras.utils.clear_session()
    return held


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", action="store_true", help="also allocate and measure (slow)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args()
    import jax

    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; float32 weights")
    header = "| config | params | largest weight | set-up | MiB per device | vs replicated | <= 1/6 |"
    if args.measure:
        header += " measured MiB (device 0) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    failures = 0
    for name in args.configs:
        variant, arguments = CONFIGS[name]
        model = abstract_model(variant, arguments)
        params = sum(math.prod(v.shape) for v in model.weights)
        largest = max(model.weights, key=lambda v: math.prod(v.shape))
        replicated = None
        for label, strategy in strategies():
            held = per_device_bytes(model.weights, strategy)
            replicated = replicated or held
            ratio = held / replicated
            ok = "-" if strategy.__class__.__name__ == "DataParallel" else ("yes" if ratio <= LIMIT else "NO")
            failures += ok == "NO"
            row = (f"| {name} | {params / 1e6:.1f}M | {largest.path.split('/', 1)[1]} {tuple(largest.shape)} "
                   f"| {label} | {held / 2**20:,.1f} | {ratio:.3f} | {ok} |")
            if args.measure and ok == "-":
                row += " (a full copy; not allocated 8 times) |"
            elif args.measure:
                start = time.perf_counter()
                measured = measured_bytes(variant, arguments, strategy)
                row += f" {measured / 2**20:,.1f} ({time.perf_counter() - start:.0f} s) |"
                failures += measured != held
            print(row, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
