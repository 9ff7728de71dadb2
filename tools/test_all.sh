#!/usr/bin/env bash
# Runs the whole test suite (docstring examples included, tests/test_docstrings.py):
# once per backend, and the multi-device tests on 8 simulated JAX CPU devices in
# their own process (XLA_FLAGS must be set before JAX is imported).
# Extra arguments go to every pytest run.
#
# The runs are single-threaded for the most part (tracing and compiling tiny
# models), so two run at once: each of two lanes takes the next run not yet
# taken, longest first (TensorFlow, JAX, PyTorch, multi-device), which keeps the
# lanes about equal whichever backend is slow on a machine. Each run's output is
# printed, in that order, once all have ended.
# TEST_LANES=1 runs everything in one lane, in order.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

backend_run() {
  echo "=== KERAS_BACKEND=$1"
  KERAS_BACKEND=$1 "$PYTHON" -m pytest -q -p no:cacheprovider --durations=10 tests --ignore=tests/multi_device "${@:2}"
}

multi_device_run() {
  echo "=== multi-device (JAX, 8 simulated CPU devices)"
  KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    "$PYTHON" -m pytest -q -p no:cacheprovider --durations=5 tests/multi_device "$@"
  local rc=$?
  # pytest exits 5 when it collected nothing: not a failure of the suite.
  if [ $rc -eq 5 ]; then return 0; fi
  return $rc
}

start_run() {
  case $1 in
    multi_device) multi_device_run "${@:2}" ;;
    *) backend_run "$@" ;;
  esac
}

runs=(tensorflow jax torch multi_device)

lane() {
  # Claims a run by making its marker folder: mkdir is atomic, so no run starts twice.
  local status=0 run
  for run in "${runs[@]}"; do
    mkdir "$logs/$run.claimed" 2>/dev/null || continue
    start_run "$run" "$@" >"$logs/$run.log" 2>&1 || status=1
  done
  return $status
}

status=0
start=$SECONDS
if [ "${TEST_LANES:-2}" = 1 ]; then
  lane "$@" || status=1
else
  lane "$@" &
  first=$!
  lane "$@" &
  second=$!
  wait $first || status=1
  wait $second || status=1
fi
for run in "${runs[@]}"; do cat "$logs/$run.log"; done
echo "=== whole suite: $((SECONDS - start)) s, $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
