#!/usr/bin/env bash
# Runs the whole test suite (docstring examples included, tests/test_docstrings.py):
# once per backend, then the multi-device tests on 8 simulated JAX CPU devices in
# their own process (XLA_FLAGS must be set before JAX is imported).
# Extra arguments go to every pytest run.
#
# The runs are single-threaded for the most part (tracing and compiling tiny
# models), so they go in two lanes at once, of about equal length: JAX, the
# multi-device run and PyTorch in one; TensorFlow in the other. Each lane's output
# is printed when it ends.
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

lane_jax_torch() {
  local status=0
  backend_run jax "$@" || status=1
  multi_device_run "$@" || status=1
  backend_run torch "$@" || status=1
  return $status
}

lane_tensorflow() {
  backend_run tensorflow "$@"
}

status=0
start=$SECONDS
if [ "${TEST_LANES:-2}" = 1 ]; then
  lane_jax_torch "$@" || status=1
  lane_tensorflow "$@" || status=1
else
  lane_jax_torch "$@" >"$logs/jax_torch.log" 2>&1 &
  jax_torch=$!
  lane_tensorflow "$@" >"$logs/tensorflow.log" 2>&1 &
  tensorflow=$!
  wait $jax_torch || status=1
  cat "$logs/jax_torch.log"
  wait $tensorflow || status=1
  cat "$logs/tensorflow.log"
fi
echo "=== whole suite: $((SECONDS - start)) s, $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
