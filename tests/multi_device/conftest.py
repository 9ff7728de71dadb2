"""Multi-device tests: JAX with 8 simulated CPU devices, in their own pytest run.

tools/test_all.sh sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before
JAX is imported; anywhere else these tests are skipped with the reason.
"""

import os

import pytest

MULTI_DEVICE = os.environ.get("KERAS_BACKEND") == "jax" and "device_count=8" in os.environ.get("XLA_FLAGS", "")


def pytest_collection_modifyitems(config, items):
    if MULTI_DEVICE:
        return
    skip = pytest.mark.skip(
        reason="needs KERAS_BACKEND=jax and XLA_FLAGS=--xla_force_host_platform_device_count=8 "
        "(see tools/test_all.sh)"
    )
    for item in items:
        if "multi_device" in str(item.fspath):
            item.add_marker(skip)
