"""The main job on image-caption files with `--distribution=data` and `--distribution=model --mesh=2,4` on 8 CPU
devices: each run takes the steps of the one-device run and ends at its weights."""

import numpy as np
import pytest

from image_caption_files import TINY, data, weights  # noqa: F401 (data: a fixture)
from keras_siglip import train
from local_processes import free_port, run_together

pytestmark = pytest.mark.multi_device


def run(data, workdir, **flags):
    settings = dict(TINY, steps=2, train_data=str(data / "{00000..00003}.tar"), workdir=str(workdir))
    settings.update(flags)
    results = train.run(train.default_config(**settings))
    return results, weights(workdir / "checkpoint.weights.h5"), train.read_loss_log(str(workdir / "loss.csv"))


@pytest.fixture(scope="module")
def one_device(data, tmp_path_factory):
    return run(data, tmp_path_factory.mktemp("one_device"))


@pytest.mark.parametrize("flags", [dict(distribution="data"), dict(distribution="model", mesh="2,4")],
                         ids=["data", "model_2x4"])
def test_a_distributed_run_matches_the_one_device_run(data, tmp_path, one_device, flags):
    expected_results, expected, expected_losses = one_device
    results, actual, losses = run(data, tmp_path, **flags)
    assert results["steps"] == expected_results["steps"] == 2
    assert "--distribution=" + flags["distribution"] in (tmp_path / "flags.txt").read_text()
    assert [step for step, _ in losses] == [step for step, _ in expected_losses]
    np.testing.assert_allclose([loss for _, loss in losses], [loss for _, loss in expected_losses], rtol=1e-4)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if key.endswith("attention/key/vars/1"):  # the key bias has no gradient: AdamW moves float noise by +-lr
            continue
        np.testing.assert_allclose(actual[key], value, rtol=1e-3, atol=1e-5, err_msg=key)


def test_two_processes_run_the_main_job_together_with_multi_host(data, tmp_path):
    """Two `python -m keras_siglip.train --multi_host` processes x 2 CPU devices, joined over 127.0.0.1."""
    import json
    import os
    import sys

    from keras_siglip import presets

    port = free_port()
    flags = [f"--{key}={value}" for key, value in TINY.items() if not isinstance(value, bool)]
    flags += ["--notensorboard", "--multi_host", "--distribution=data", "--steps=2",
              f"--train_data={data / '{00000..00003}.tar'}", f"--workdir={tmp_path / 'run'}"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    envs = [dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                 KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}", KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                 KERAS_DISTRIBUTION_PROCESS_ID=str(process)) for process in range(2)]
    run_together([[sys.executable, "-m", "keras_siglip.train", *flags]] * 2, envs, root)
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["steps"], results["batch_size"]) == (2, 8)
    for process in range(2):  # each process fed 4 of the 8 pairs of each step, from its own two shards
        assert json.loads((run_dir / f"data_position.{process}-of-2.json").read_text())["2"] == 2 * 4
    assert not [name for name in os.listdir(run_dir) if name.startswith("backup")]  # a finished run drops them
    assert np.isfinite(train.read_loss_log(str(run_dir / "loss.csv"))[-1][-1])
    model, _, _ = presets.load_preset(str(run_dir / "preset"))
    assert model.count_params() == results["parameters"]
