#!/usr/bin/env bash
# Runs the whole test suite (docstring examples included, tests/test_docstrings.py):
# once per backend, then the multi-device tests on
# 8 simulated JAX CPU devices in their own process (XLA_FLAGS must be set before
# JAX is imported). Extra arguments go to every pytest run.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore
status=0
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend "$PYTHON" -m pytest -q -p no:cacheprovider --durations=10 tests --ignore=tests/multi_device "$@" || status=1
done
echo "=== multi-device (JAX, 8 simulated CPU devices)"
KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  "$PYTHON" -m pytest -q -p no:cacheprovider tests/multi_device "$@"
rc=$?
# pytest exits 5 when it collected nothing: not a failure of the suite.
if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=1; fi
exit $status
