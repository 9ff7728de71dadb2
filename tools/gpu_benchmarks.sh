#!/usr/bin/env bash
# The GPU measurements of the loss (#3) and training-speed (#9) targets, in one
# run that fits a short device lease (at most 9 minutes on one H100/H200;
# run it with timeout_s=600).
#
#   bash tools/gpu_benchmarks.sh fetch   # here, with PyPI: the wheels the GPU image lacks -> .whl/
#   bash tools/gpu_benchmarks.sh run     # there, with .whl/ carried; tables -> $OUT (or ./gpu_results)
#   bash tools/gpu_benchmarks.sh dry     # here: the same steps on the CPU with tiny sizes, to check the script
#
# The GPU image has JAX, PyTorch and transformers but neither Keras nor
# keras-hub, nor TensorFlow: keras_siglip's model, losses and these benchmarks
# import without TensorFlow. Each part has its own time limit and writes its
# table as it goes, so a part that runs out of time loses only itself. Parts
# run in order of what they prove: JAX training speed (#9), the loss (#3),
# PyTorch training speed, eager then compiled (#9), the largest batch per GPU (#9).
# Parts' limits add up to 680 s: with the micro-batch part, run it as two device calls if a lease is short
# (the parts write their tables as they go).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
PYTHON=${PYTHON:-python3}

if [ "$mode" = fetch ]; then
  # The versions installed here, so the GPU runs what the test suite ran.
  pins=$(.venv/bin/pip freeze | grep -iE '^(keras|keras-hub|namex|optree|kagglehub|kagglesdk)==')
  mkdir -p .whl && grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  rm -f .whl/*.whl
  # shellcheck disable=SC2086
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins || exit 1
  ls -la .whl && du -sh .whl
  exit 0
fi

out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore
if [ "$mode" = run ]; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || exit 1
    export PYTHONPATH=/tmp/site
  fi
  nvidia-smi -L | tee "$out/machine.txt"
  config=(--config=B16 --peak_tflops="${PEAK_TFLOPS:-989}")
  loss=(--gpu --no-ring --batch-sizes 65536,1048576 --repeats 10 --min-time 2)
  # About 800 and 3000 pairs are expected to fit without and with remat (keras-hub: 26.2 GiB at 256).
  max_batch=(--batch_sizes=768,1024 --remat=false)
  max_batch_remat=(--batch_sizes=2048,3072 --remat=true)
  torch_compile=(--torch_compile)
  micro=(--config=B16 --micro_batch_size=256 --batch_sizes=256,32768 --full_batch_sizes=256 --steps=2)
elif [ "$mode" = dry ]; then
  config=(--config=small)
  loss=(--batch-sizes 1024,4096 --no-ring --repeats 2 --min-time 0.5)
  max_batch=(--batch_sizes=32 --remat=false)
  max_batch_remat=(--batch_sizes=64 --remat=true)
  micro=(--config=small --micro_batch_size=4 --batch_sizes=4,16 --steps=1)
  torch_compile=()  # inductor on two CPU cores would take longer than the part's limit
else
  echo "usage: $0 fetch|run|dry" >&2
  exit 2
fi

part() {  # part NAME SECONDS COMMAND...: runs one part under its limit, its output to $out/NAME.txt
  local name=$1 seconds=$2
  shift 2
  echo "=== $name (at most ${seconds}s): $*"
  local start=$SECONDS
  timeout -k 5 "$seconds" "$@" 2>&1 | grep -vE '^(W|I)0000|WARNING: All log' | tee "$out/$name.txt"
  echo "=== $name: rc ${PIPESTATUS[0]} after $((SECONDS - start))s"
  pkill -f 'tools/benchmark_(train|loss|micro_batches).py' 2>/dev/null  # workers of a part cut short
}

part train_jax 160 env KERAS_BACKEND=jax "$PYTHON" tools/benchmark_train.py "${config[@]}" --steps=10 --repeats=1
part loss 70 env KERAS_BACKEND=jax "$PYTHON" tools/benchmark_loss.py "${loss[@]}"
# transformers first in each torch part: its torch.compile figure is the target, and Keras's own
# torch.compile path recompiles often (BENCHMARKS.md), so keras_siglip may not finish compiling in time.
part train_torch 70 env KERAS_BACKEND=torch "$PYTHON" tools/benchmark_train.py "${config[@]}" --steps=10 --repeats=1 \
  --libraries=transformers,keras_siglip
if [ ${#torch_compile[@]} -gt 0 ]; then
  part train_torch_compile 100 env KERAS_BACKEND=torch "$PYTHON" tools/benchmark_train.py "${config[@]}" --steps=10 \
    --repeats=1 --libraries=transformers,keras_siglip "${torch_compile[@]}"
fi
# The paper's batch on one GPU: B/16 at 32,768 pairs in micro-batches of 256, beside 256 without.
part micro_batches 150 env KERAS_BACKEND=jax "$PYTHON" tools/benchmark_micro_batches.py "${micro[@]}"
# The largest batch per 80 GB GPU: JAX may use 0.56 of an H200's 141 GB (79 GB).
for remat in "" _remat; do
  flags="max_batch$remat[@]"
  part "max_batch$remat" 65 env KERAS_BACKEND=jax XLA_PYTHON_CLIENT_MEM_FRACTION=0.56 "$PYTHON" tools/benchmark_train.py \
    "${config[@]}" --steps=2 --repeats=1 --libraries=keras_siglip "${!flags}"
done
