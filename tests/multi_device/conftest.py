"""Multi-device tests: JAX with 8 simulated CPU devices, in their own pytest run.

tools/test_all.sh sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before
JAX is imported; here we only make sure that happened.
"""

import os

import pytest

if os.environ.get("KERAS_BACKEND") != "jax" or "device_count=8" not in os.environ.get("XLA_FLAGS", ""):
    pytest.skip(
        "multi-device tests need KERAS_BACKEND=jax and "
        "XLA_FLAGS=--xla_force_host_platform_device_count=8 (see tools/test_all.sh)",
        allow_module_level=True,
    )
