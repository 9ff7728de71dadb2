#!/usr/bin/env bash
# Runs the whole test suite: once per backend, then the multi-device tests on
# 8 simulated JAX CPU devices in their own process (XLA_FLAGS must be set before
# JAX is imported). Extra arguments go to every pytest run.
#
# Two runs share the machine at a time (JAX with TensorFlow, then PyTorch with
# the multi-device run): most tests are tiny models whose time goes to Python
# and compilation on one thread, so pairing them nearly halves the wall time on
# two cores. Each run's output is printed whole when it ends. Set
# TEST_PARALLEL=0 to run them one after another.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

run_backend() {  # name, then the command's environment and arguments
  local name=$1; shift
  echo "=== $name" > "$LOGS/$name.log"
  env "$@" >> "$LOGS/$name.log" 2>&1
  local rc=$?
  # pytest exits 5 when it collected nothing: not a failure of the suite.
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then echo "exit $rc" >> "$LOGS/$name.log"; return 1; fi
}

suite() {
  local backend=$1; shift
  run_backend "KERAS_BACKEND=$backend" KERAS_BACKEND=$backend \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests --ignore=tests/multi_device "$@"
}

multi_device() {
  run_backend "multi-device (JAX, 8 simulated CPU devices)" KERAS_BACKEND=jax \
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/multi_device "$@"
}

status=0
if [ "${TEST_PARALLEL:-1}" = 1 ]; then
  suite jax "$@" & a=$!
  suite tensorflow "$@" & b=$!
  wait $a || status=1; wait $b || status=1
  suite torch "$@" & a=$!
  multi_device "$@" & b=$!
  wait $a || status=1; wait $b || status=1
else
  suite jax "$@" || status=1
  suite tensorflow "$@" || status=1
  suite torch "$@" || status=1
  multi_device "$@" || status=1
fi
for name in "KERAS_BACKEND=jax" "KERAS_BACKEND=tensorflow" "KERAS_BACKEND=torch" \
            "multi-device (JAX, 8 simulated CPU devices)"; do
  cat "$LOGS/$name.log"
done
[ $status = 0 ] && echo "=== all passed" || echo "=== FAILED (see above)"
exit $status
