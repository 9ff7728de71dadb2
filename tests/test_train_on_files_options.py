"""The main job's fine-tuning flags on image-caption files: a locked or slower image tower, mixed precision,
zero-shot classes, the `--distribution` / `--mesh` settings it refuses before any work, and one process's part
of a multi-host job."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from image_caption_files import COLORS, TINY, data  # noqa: F401 (data: a fixture)
from keras_siglip import presets, train


def tower_weights(preset_dir):
    model, _, _ = presets.load_preset(str(preset_dir))
    return ([np.asarray(w) for w in model.image_encoder.get_weights()],
            [np.asarray(w) for w in model.text_encoder.get_weights()])


def assert_all_equal(left, right):
    assert len(left) == len(right) > 0
    for a, b in zip(left, right):
        np.testing.assert_array_equal(a, b)


def assert_some_differ(left, right):
    assert any(not np.array_equal(a, b) for a, b in zip(left, right))


def test_a_locked_or_zero_rate_image_tower_is_left_as_the_preset_had_it(data, tmp_path):
    def run(name, **flags):
        settings = dict(TINY, steps=2, train_data=str(data / "{00000..00003}.tar"), workdir=str(tmp_path / name))
        settings.update(flags)
        train.run(train.default_config(**settings))
        return tmp_path / name / "preset"

    start = run("start")
    image_start, text_start = tower_weights(start)
    for name, flags in (("locked", dict(lock_image_tower=True)),
                        ("zero_rate", dict(image_tower_learning_rate_multiplier=0.0))):
        image, text = tower_weights(run(name, preset=str(start), **flags))
        assert_all_equal(image, image_start)
        assert_some_differ(text, text_start)
    with pytest.raises(ValueError, match="is it locked"):
        run("both", preset=str(start), lock_image_tower=True, image_tower_learning_rate_multiplier=0.5)


def test_mixed_bfloat16_with_zero_shot_classes_reports_accuracy_and_restores_the_policy(data, tmp_path):
    (tmp_path / "classes.txt").write_text("\n".join(COLORS) + "\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n{} square\n")
    with open(tmp_path / "labelled.csv", "w", newline="") as file:
        csv.writer(file).writerows([("image", "caption")] + [(f"{i:04d}.jpg", COLORS[i % 6]) for i in range(24)])
    config = train.default_config(**TINY, steps=2, train_data=str(data / "train.csv"), precision="mixed_bfloat16",
                                  zero_shot_classes=str(tmp_path / "classes.txt"),
                                  zero_shot_templates=str(tmp_path / "templates.txt"),
                                  zero_shot_data=str(tmp_path / "labelled.csv"), image_root=str(data),
                                  workdir=str(tmp_path / "run"))
    results = train.run(config)
    assert keras.config.dtype_policy().name == "float32"
    zero_shot = results["zero_shot"]
    assert (zero_shot["examples"], zero_shot["classes"], zero_shot["templates"]) == (24, 6, 2)
    assert 0.0 <= zero_shot["top1"] <= zero_shot["top5"] <= 1.0
    assert np.isfinite(train.read_loss_log(str(tmp_path / "run" / "loss.csv"))[-1][-1])
    model, _, _ = presets.load_preset(str(tmp_path / "run" / "preset"))
    assert model.image_encoder.dtype_policy.name == "mixed_bfloat16"

    (tmp_path / "classes.txt").write_text("\n".join(COLORS[:5]) + "\n")
    with pytest.raises(ValueError, match=r"classes not in .*classes.txt.*yellow"):
        train.run(dict(config, workdir=str(tmp_path / "unknown_class")))
    with pytest.raises(ValueError, match="needs --zero_shot_data"):
        train.run(dict(config, zero_shot_data=None, workdir=str(tmp_path / "no_data")))
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("flags, message", [
    (dict(distribution="model", mesh="2x4"), "must be two positive integers"),
    (dict(distribution="model", mesh="2,0"), "must be two positive integers"),
    (dict(distribution="data", mesh="2,4"), "mesh of --distribution=model; got --distribution=data"),
    (dict(distribution="none", mesh="1,1"), "mesh of --distribution=model"),
    (dict(steps=0), "--steps and --checkpoint_every must be positive"),
    (dict(multi_host=True), "--multi_host trains with --distribution=data"),
])
def test_unusable_distribution_settings_are_refused_before_any_work(data, tmp_path, flags, message):
    config = train.default_config(**dict(TINY, **flags, train_data=str(data / "train.csv"), image_root=str(data),
                                         workdir=str(tmp_path / "run")))
    with pytest.raises(ValueError, match=message):
        train.run(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="keras.distribution is available on JAX")
def test_a_distribution_on_a_backend_without_keras_distribution_is_refused(data, tmp_path):
    config = train.default_config(**TINY, distribution="data", train_data=str(data / "train.csv"),
                                  image_root=str(data), workdir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="needs the JAX backend"):
        train.run(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="a multi-host job trains with keras.distribution (JAX)")
def test_a_process_of_a_multi_host_job_feeds_its_share_and_leaves_the_shared_files_to_process_0(
        data, tmp_path, monkeypatch):
    from keras_siglip import backend

    monkeypatch.setattr(backend, "process_index_and_count", lambda: (1, 2))
    config = train.default_config(**TINY, steps=2, train_data=str(data / "train.csv"), workdir=str(tmp_path / "run"))
    for flags, message in ((dict(distribution="none"), "has 2 processes: pass --multi_host --distribution=data"),
                           (dict(distribution="data", val_data=str(data / "train.csv")),
                            "--val_data: the main job evaluates on one process only")):
        with pytest.raises(ValueError, match=message):
            train.run(dict(config, **flags, workdir=str(tmp_path / "refused")))
        assert not (tmp_path / "refused").exists()
    config["distribution"] = "data"
    results = train.run(config)
    assert (results["steps"], results["batch_size"]) == (2, 8)
    positions = json.loads((tmp_path / "run" / "data_position.1-of-2.json").read_text())
    assert positions["2"] == 2 * 4  # 4 of the 8 pairs of each step come from this process's rows
    # The checkpoint, loss log, settings, preset and results are process 0's to write.
    assert sorted(os.listdir(tmp_path / "run")) == ["data_position.1-of-2.json"]
    with pytest.raises(ValueError, match="--batch_size=9 must be divisible by 2 processes"):
        train.run(dict(config, batch_size=9, workdir=str(tmp_path / "odd")))


def test_a_naflex_preset_fine_tunes_on_tar_shards_with_retrieval_and_zero_shot(data, tmp_path):
    from keras_siglip import SigLIP, SigLIPTokenizer
    from keras_siglip.data import EMBEDDED_VOCABULARY
    from keras_siglip.models.siglip.naflex_image_encoder import NaFlexImageEncoder
    from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor
    from keras_siglip.models.siglip.towers import TextEncoder

    tokenizer = SigLIPTokenizer(str(EMBEDDED_VOCABULARY), sequence_length=8)
    model = SigLIP(NaFlexImageEncoder.from_variant("tiny", patch_size=4, position_grid_size=4),
                   TextEncoder.from_variant("tiny", vocabulary_size=tokenizer.vocabulary_size(), sequence_length=8))
    model.save_to_preset(str(tmp_path / "naflex"), tokenizer=tokenizer,
                         image_converter=NaFlexImagePreprocessor(4, 16))
    (tmp_path / "classes.txt").write_text("\n".join(COLORS) + "\n")
    with open(tmp_path / "labelled.csv", "w", newline="") as file:
        csv.writer(file).writerows([("image", "caption")] + [(f"{i:04d}.jpg", COLORS[i % 6]) for i in range(12)])
    config = train.default_config(**dict(
        TINY, preset=str(tmp_path / "naflex"), steps=2, max_num_patches=12, train_data=str(data / "{00000..00003}.tar"),
        val_data=str(data / "train.csv"), zero_shot_classes=str(tmp_path / "classes.txt"),
        zero_shot_data=str(tmp_path / "labelled.csv"), image_root=str(data), workdir=str(tmp_path / "run")))
    results = train.run(config)
    assert results["retrieval"]["pairs"] == 48 and 0.0 <= results["retrieval"]["image_to_text"][1] <= 1.0
    assert results["zero_shot"]["examples"] == 12
    assert np.isfinite(train.read_loss_log(str(tmp_path / "run" / "loss.csv"))[-1][-1])
    tuned, _, preprocessor = presets.load_preset(str(tmp_path / "run" / "preset"))
    assert isinstance(tuned.image_encoder, NaFlexImageEncoder)
    assert (preprocessor.patch_size, preprocessor.max_num_patches) == (4, 12)
    assert_some_differ([np.asarray(w) for w in tuned.image_encoder.get_weights()],
                       [np.asarray(w) for w in model.image_encoder.get_weights()])

    with pytest.raises(ValueError, match="--horizontal_flip: a NaFlex preset keeps each image whole"):
        train.run(dict(config, horizontal_flip=True, workdir=str(tmp_path / "flip")))
    with pytest.raises(ValueError, match="--max_num_patches is for NaFlex presets"):
        train.run(train.default_config(**TINY, max_num_patches=12, train_data=str(data / "train.csv"),
                                       workdir=str(tmp_path / "fixres")))
