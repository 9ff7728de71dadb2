#!/usr/bin/env bash
# Creates a virtual environment (.venv, or $VENV) if missing and installs keras_siglip
# with its `test` extra: the three backends, presets, the main job and the test suite's
# references (see the extras in pyproject.toml).
# torch is pinned to the CPU build first, so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e '.[test]'
