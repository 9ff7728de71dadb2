"""Train SigLIP on one device, data parallel or model parallel: one script, chosen by flags.

The data are synthetic image-caption pairs made from `--seed` (swap `make_data`
for a real reader); every process makes the same global data and feeds its own
part of each global batch, which is how `keras.distribution` expects a
multi-host job to be fed.

    # one device (any backend)
    python examples/train_distributed.py --strategy=single
    # all local devices, weights replicated (JAX)
    python examples/train_distributed.py --strategy=data
    # a 2 x 4 (batch, model) mesh: weights split 4 ways along "model" (JAX)
    python examples/train_distributed.py --strategy=model --mesh=2,4
    # a TPU v4-32 slice (16 chips, 4 hosts): run the same line on every host
    python examples/train_distributed.py --strategy=model --tpu-v4-chips=16 \
        --model-size=4 --multi-host --variant=B --image-size=224 --batch-size=4096

Multi-host elsewhere: add `--coordinator=HOST:PORT --num-processes=N
--process-id=I` (or set KERAS_DISTRIBUTION_* variables) on each process.
"""

import argparse
import contextlib
import json
import os
import sys

import keras
import numpy as np

from keras_siglip import SigLIP
from keras_siglip import distribution as siglip_distribution


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategy", choices=("single", "data", "model"), default="single")
    parser.add_argument("--mesh", default=None, help="batch,model mesh shape for --strategy=model, e.g. 2,4")
    parser.add_argument("--tpu-v4-chips", type=int, default=None, help="use the mesh of a TPU v4 slice")
    parser.add_argument("--model-size", type=int, default=1, help="model axis size with --tpu-v4-chips")
    parser.add_argument("--multi-host", action="store_true", help="join a multi-host job first")
    parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-host)")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--vocabulary-size", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--load-weights", default=None, help=".npz of weights by path to start from")
    parser.add_argument("--save-weights", default=None, help=".npz to write the trained weights to")
    parser.add_argument("--losses-out", default=None, help=".json to write the per-step losses to")
    return parser.parse_args(argv)


def make_strategy(args):
    """The `keras.distribution` set-up the flags ask for; None for one device."""
    if args.multi_host or args.coordinator or args.num_processes:
        siglip_distribution.initialize_multi_host(args.coordinator, args.num_processes, args.process_id)
    if args.strategy == "single":
        return None
    if args.strategy == "data":
        return siglip_distribution.data_parallel()
    if args.tpu_v4_chips:
        mesh = siglip_distribution.tpu_v4_mesh(args.tpu_v4_chips, model_size=args.model_size)
    elif args.mesh:
        mesh = tuple(int(size) for size in args.mesh.split(","))
    else:
        mesh = (1, len(keras.distribution.list_devices()))
    return siglip_distribution.model_parallel(mesh)


def make_data(args):
    """`steps * batch_size` random pairs, the same on every process."""
    rng = np.random.default_rng(args.seed)
    count = args.steps * args.batch_size
    return {
        "images": rng.uniform(-1, 1, (count, args.image_size, args.image_size, 3)).astype("float32"),
        "token_ids": rng.integers(0, args.vocabulary_size, (count, args.sequence_length)).astype("int32"),
    }


def process_part(data, batch_size, process_id, num_processes):
    """This process's rows of every global batch (process p feeds rows p*b/P ... of each)."""
    if batch_size % num_processes:
        raise ValueError(f"--batch-size={batch_size} must be divisible by {num_processes} processes.")
    local = batch_size // num_processes
    rows = np.arange(next(iter(data.values())).shape[0]).reshape(-1, num_processes, local)
    rows = rows[:, process_id].reshape(-1)
    return {key: value[rows] for key, value in data.items()}, local


def process_index_and_count():
    """`(this process's index, number of processes)`; (0, 1) off JAX."""
    if keras.backend.backend() != "jax":
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def gather_weights(model):
    """Every weight as a full NumPy array, whichever process holds which shard."""
    if keras.backend.backend() == "jax":
        import jax
        from jax.experimental import multihost_utils

        if jax.process_count() > 1:
            return {v.path: np.asarray(multihost_utils.process_allgather(v.value, tiled=True)) for v in model.weights}
    return {v.path: keras.ops.convert_to_numpy(v.value) for v in model.weights}


class StepLosses(keras.callbacks.Callback):
    """Keeps each step's loss (Keras logs the running mean; recover the step values)."""

    def __init__(self):
        super().__init__()
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(logs["loss"]))

    @property
    def losses(self):
        sums = [mean * (step + 1) for step, mean in enumerate(self.means)]
        return [sums[0]] + [b - a for a, b in zip(sums, sums[1:])]


def train(args):
    """Builds, trains and returns `(model, per-step losses)`."""
    strategy = make_strategy(args)  # first: a multi-host job must join before any other JAX work
    keras.utils.set_random_seed(args.seed)
    data = make_data(args)
    process_id, num_processes = process_index_and_count()
    data, local_batch = process_part(data, args.batch_size, process_id, num_processes)
    if strategy is not None:
        strategy.auto_shard_dataset = False  # each process already holds only its part
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = SigLIP.from_variant(
            args.variant,
            image_size=args.image_size,
            patch_size=args.patch_size,
            vocabulary_size=args.vocabulary_size,
            sequence_length=args.sequence_length,
        )
        if args.load_weights:
            saved = np.load(args.load_weights)
            for variable in model.weights:
                variable.assign(saved[variable.path])
        model.compile(learning_rate=args.learning_rate)
        recorder = StepLosses()
        model.fit(data, batch_size=local_batch, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    return model, recorder.losses


def main(argv=None):
    args = parse_args(argv)
    model, losses = train(args)
    weights = gather_weights(model)  # every process takes part in the gather
    if process_index_and_count()[0] == 0:
        print(json.dumps({"strategy": args.strategy, "losses": losses}))
        if args.save_weights:
            np.savez(args.save_weights, **weights)
        if args.losses_out:
            with open(args.losses_out, "w") as file:
                json.dump(losses, file)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
