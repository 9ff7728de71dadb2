"""The main job on image-caption files: each layout, the retrieval report, bad input, seeds and resume after SIGKILL."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from image_caption_files import TINY, data, weights  # noqa: F401 (data: a fixture)
from keras_siglip import presets, train, train_on_files

LAYOUTS = {"csv": "train.csv", "tar": "{00000..00003}.tar", "tfrecord": "part-*.tfrecord"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_trains_on_each_layout_and_reports_retrieval(data, tmp_path, layout):
    config = train.default_config(**TINY, steps=4, train_data=str(data / LAYOUTS[layout]),
                                  val_data=str(data / "train.csv"), workdir=str(tmp_path))
    results = train.run(config)
    recall = results["retrieval"]
    assert recall["pairs"] == 48
    for direction in ("image_to_text", "text_to_image"):
        assert 0.0 <= recall[direction][1] <= recall[direction][5] <= recall[direction][10] <= 1.0
    assert results["steps"] == 4 and results["skipped_images"]["count"] == 0
    # 12 tokens per caption: these captions are longer, and every one is counted as truncated.
    assert results["truncated_captions"]["count"] == results["truncated_captions"]["of"] >= 4 * 8
    assert json.loads((tmp_path / "results.json").read_text())["retrieval"]["pairs"] == 48
    positions = json.loads((tmp_path / "data_position.json").read_text())
    assert sorted(map(int, positions)) == [2, 4] and positions["4"] == 4 * 8  # no image skipped: 8 per step
    assert f"--train_data={data / LAYOUTS[layout]}" in (tmp_path / "flags.txt").read_text()
    assert (tmp_path / "preset" / "model.weights.h5").exists() and (tmp_path / "main_job.png").exists()
    if layout == "csv":  # the plot's panel: the first --val_data pairs against their captions
        model, tokenizer, _ = presets.load_preset(str(tmp_path / "preset"))
        val = {"images": np.zeros((3, 8, 8, 3), "float32"), "token_ids": tokenizer(["a", "b", "c"]),
               "captions": np.array([b"a", b"b", "été ".encode() * 20], object)}
        similarity, captions = train_on_files.held_out_similarity(model, val, count=3)
        assert similarity.shape == (3, 3) and ((0 < similarity) & (similarity < 1)).all()
        assert captions == ["a", "b", ("\u00e9t\u00e9 " * 20)[:40]]


def test_one_seed_gives_one_run(data, tmp_path):
    runs = []
    for name in ("first", "second"):
        config = train.default_config(**TINY, steps=4, train_data=str(data / "{00000..00003}.tar"),
                                      random_resized_crop=True, horizontal_flip=True, workdir=str(tmp_path / name))
        train.run(config)
        runs.append(weights(tmp_path / name / "checkpoint.weights.h5"))
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 20
    for key, value in runs[0].items():
        np.testing.assert_array_equal(runs[1][key], value, err_msg=key)


def test_bad_input_is_refused_or_counted(data, tmp_path):
    def run(**overrides):
        settings = dict(TINY, steps=2, workdir=str(tmp_path / "run"))
        settings.update(overrides)
        return train.run(train.default_config(**settings))

    with pytest.raises(ValueError, match="no column"):
        run(train_data=str(data / "train.csv"), caption_key="text")
    with pytest.raises(ValueError, match="No tar shard matches.*none of its 3 names"):
        run(train_data=str(data / "{00010..00012}.tar"))
    with pytest.raises(ValueError, match="Cannot tell the layout"):
        run(train_data=str(data / "shards.bin"))
    rows = [("image", "caption"), ("0000.jpg", "fine"), ("absent.jpg", "no such file")] + [
        (f"{i:04d}.jpg", f"picture {i}") for i in range(1, 20)]
    with open(tmp_path / "broken.csv", "w", newline="") as file:
        csv.writer(file).writerows(rows)
    with pytest.warns(UserWarning, match="absent.jpg"):
        results = run(train_data=str(tmp_path / "broken.csv"), image_root=str(data))
    assert results["skipped_images"]["count"] >= 1
    assert any("absent.jpg" in name for name in results["skipped_images"]["first"])
    with pytest.raises(ValueError, match="max_skipped_images=0.*absent.jpg"):
        run(train_data=str(tmp_path / "broken.csv"), image_root=str(data), max_skipped_images=0,
            workdir=str(tmp_path / "strict"))


def _command(data, workdir):
    flags = dict(TINY, steps=16, verbose=2, train_data=str(data / "{00000..00003}.tar"), workdir=workdir,
                 horizontal_flip=True)
    return [sys.executable, "-m", "keras_siglip.train"] + [f"--{k}={v}" for k, v in flags.items()]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the resume test runs the JAX main job")
def test_sigkill_mid_stream_then_rerun_continues_the_stream_and_matches(data, tmp_path):
    killed = str(tmp_path / "killed")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(_command(data, killed), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metadata = os.path.join(killed, "backup", "training_metadata.json")
    deadline, epoch = time.time() + 1200, 0
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metadata):
            try:
                epoch = json.load(open(metadata))["epoch"]
            except (ValueError, KeyError):  # caught mid-write
                epoch = 0
            if epoch >= 3:  # 6 steps of 16: 48 pairs, the whole corpus once, into the second pass
                break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    positions = json.load(open(os.path.join(killed, "data_position.json")))
    restored = json.load(open(metadata))["epoch"] * 2
    assert 6 <= restored < 16 and positions[str(restored)] == restored * 8

    rerun = subprocess.run(_command(data, killed), env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert next(line for line in rerun.stdout.splitlines() if line.startswith("Epoch ")) != "Epoch 1/8"
    assert [step for step, _ in train.read_loss_log(os.path.join(killed, "loss.csv"))] == list(range(1, 17))

    reference = str(tmp_path / "reference")
    flags = dict(TINY, steps=16, train_data=str(data / "{00000..00003}.tar"), workdir=reference, horizontal_flip=True)
    train.run(train.default_config(**flags))
    resumed, uninterrupted = (weights(os.path.join(d, "checkpoint.weights.h5")) for d in (killed, reference))
    assert resumed.keys() == uninterrupted.keys() and len(resumed) > 20
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


STREAM_DIGEST = r"""
import hashlib, sys
from keras_siglip import SigLIPImagePreprocessor, SigLIPTokenizer
from keras_siglip.data import EMBEDDED_VOCABULARY, read_tar_shards
tokenizer = SigLIPTokenizer(str(EMBEDDED_VOCABULARY), sequence_length=12)
preprocessor = SigLIPImagePreprocessor(8, random_resized_crop=True, horizontal_flip=True)
dataset = read_tar_shards(sys.argv[1], tokenizer, preprocessor, 8, seed=0, repeat=True)
digest = hashlib.sha256()
for batch in dataset.take(8):
    digest.update(batch["images"].numpy().tobytes())
    digest.update(batch["token_ids"].numpy().tobytes())
print(digest.hexdigest())
"""


@pytest.mark.backend_independent
def test_the_seeded_stream_is_the_same_on_every_backend(data):
    digests = {}
    for backend in ("jax", "tensorflow", "torch"):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        result = subprocess.run([sys.executable, "-c", STREAM_DIGEST, str(data / "{00000..00003}.tar")], env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        digests[backend] = result.stdout.split()[-1]
    assert len(set(digests.values())) == 1, digests
