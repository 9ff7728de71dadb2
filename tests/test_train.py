"""The main job end to end with tiny settings, its command line, and its resume after SIGKILL (JAX)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

from keras_siglip import train

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Every flag of `python -m keras_siglip.train` with its default: names and defaults are the interface.
FLAG_DEFAULTS = dict(
    dataset="digits", languages="en", preset=None, variant=None, width=64, depth=2, num_heads=2, mlp_dim=128,
    image_size=None, patch_size=4, sequence_length=12, loss="sigmoid", batch_size=64, micro_batch_size=None, steps=600,
    learning_rate=3e-3, warmup_steps=100, weight_decay=1e-4, checkpoint_every=100, eval_every=200, seed=0,
    workdir="siglip_main_job", verbose=1, tensorboard=True,
    train_data=None, data_format="auto", image_key=None, caption_key=None, image_root=None, val_data=None,
    zero_shot_classes=None, zero_shot_templates=None, zero_shot_data=None, tokenizer=None, max_num_patches=None,
    random_resized_crop=False, horizontal_flip=False, shuffle_buffer=5000, max_skipped_images=None,
    lock_image_tower=False, image_tower_learning_rate_multiplier=None, precision="float32", distribution="none",
    mesh=None, multi_host=False,
)  # fmt: skip

TINY_FLAGS = dict(
    width=32, depth=1, num_heads=2, mlp_dim=64, image_size=8, patch_size=4, batch_size=16,
    warmup_steps=2, verbose=0, tensorboard=False,
)  # fmt: skip


def _weights(path):
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


def test_main_job_writes_every_output(tmp_path):
    from keras_siglip import presets

    flags = dict(TINY_FLAGS, steps=4, checkpoint_every=2, eval_every=2, tensorboard=True, micro_batch_size=8)
    config = train.default_config(**flags, workdir=str(tmp_path))
    results = train.run(config)
    for language_result in results["zero_shot"].values():
        assert 0.0 <= language_result["top1"] <= language_result["top5"] <= 1.0
    assert set(results["retrieval"]["en"]) == {"image_to_text", "text_to_image"}
    assert results["chance_top1"] == pytest.approx(0.1)
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 4
    assert [step for step, _ in train.read_loss_log(str(tmp_path / "loss.csv"))] == [1, 2, 3, 4]
    assert (tmp_path / "main_job.png").stat().st_size > 10_000
    assert (tmp_path / "checkpoint.weights.h5").exists()
    assert "--steps=4" in (tmp_path / "flags.txt").read_text().splitlines()
    assert json.loads((tmp_path / "config.json").read_text()) == config
    assert not (tmp_path / "backup").exists()  # removed once training completed
    assert any("events" in name for _, _, files in os.walk(tmp_path / "tensorboard") for name in files)
    loaded = presets.load_preset(str(tmp_path / "preset"))
    assert loaded.model.count_params() == results["parameters"]
    assert loaded.tokenizer is not None and loaded.tokenizer.vocabulary_size() == 400


def test_unknown_settings_are_rejected():
    with pytest.raises(ValueError, match="Unknown settings"):
        train.default_config(step=3)
    with pytest.raises(ValueError, match="positive"):
        train.run(train.default_config(**TINY_FLAGS, steps=0, workdir="/nonexistent-never-written"))


@pytest.mark.backend_independent
def test_importing_the_job_defines_and_parses_no_flags():
    script = (
        "from absl import flags\n"
        "import keras_siglip.train as job\n"
        "print(sorted({s.name for s in job.SETTINGS} & set(flags.FLAGS)), flags.FLAGS.is_parsed())\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[] False"


def test_command_line_flags_keep_their_names_and_defaults():
    from absl import flags

    own = flags.FlagValues()
    train.define_flags(own)
    assert {name: own[name].default for name in FLAG_DEFAULTS} == FLAG_DEFAULTS
    assert sorted(own) == sorted(FLAG_DEFAULTS)
    assert train.default_config() == FLAG_DEFAULTS
    own(["train", "--dataset=shapes", "--notensorboard", "--learning_rate=0.01", "--image_size=24"])
    assert (own.dataset, own.tensorboard, own.learning_rate, own.image_size) == ("shapes", False, 0.01, 24)
    with pytest.raises(flags.IllegalFlagValueError):
        own(["train", "--loss=hinge"])


def _command(workdir):
    flags = dict(TINY_FLAGS, steps=40, checkpoint_every=2, eval_every=0, verbose=2, workdir=workdir)
    return [sys.executable, "-m", "keras_siglip.train"] + [f"--{k}={v}" for k, v in flags.items()]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the resume test runs the JAX main job")
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    killed = str(tmp_path / "killed")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(_command(killed), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metadata = os.path.join(killed, "backup", "training_metadata.json")
    deadline = time.time() + 1200  # start-up and compilation are slow on a loaded CI machine
    epoch = 0
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metadata):
            try:
                epoch = json.load(open(metadata))["epoch"]
            except (ValueError, KeyError):  # caught mid-write
                epoch = 0
            if epoch >= 3:
                break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    assert epoch >= 3, "no checkpoint was written in time"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    completed_steps = json.load(open(metadata))["epoch"] * 2
    assert 6 <= completed_steps < 40

    rerun = subprocess.run(_command(killed), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    first_epoch = next(line for line in rerun.stdout.splitlines() if line.startswith("Epoch "))
    assert first_epoch != "Epoch 1/20"  # it resumed, not restarted
    steps = [step for step, _ in train.read_loss_log(os.path.join(killed, "loss.csv"))]
    assert steps == list(range(1, 41))

    # The uninterrupted reference, in this process with the same settings and seed.
    reference = str(tmp_path / "reference")
    train.run(train.default_config(**dict(TINY_FLAGS, steps=40, checkpoint_every=2, eval_every=0,
                                          workdir=reference)))
    resumed_weights = _weights(os.path.join(killed, "checkpoint.weights.h5"))
    reference_weights = _weights(os.path.join(reference, "checkpoint.weights.h5"))
    assert resumed_weights.keys() == reference_weights.keys() and len(resumed_weights) > 20
    for name, value in reference_weights.items():
        np.testing.assert_array_equal(resumed_weights[name], value, err_msg=name)
