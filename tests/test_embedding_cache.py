"""The LiT image-embedding cache: resumable writing, checked reading, training from it."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import random_pairs, tiny_siglip

from keras_siglip.data import read_embedding_cache, write_embedding_cache


def batches(count, batch_size=4, fail_after=None):
    data = random_pairs(count, seed=7)
    for index, start in enumerate(range(0, count, batch_size)):
        if fail_after is not None and index == fail_after:
            raise RuntimeError("simulated crash")
        yield {key: value[start : start + batch_size] for key, value in data.items()}


def test_interrupted_caching_resumes_and_matches_an_uninterrupted_run(tmp_path):
    model = tiny_siglip(lock_image_tower=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_embedding_cache(model.image_encoder, batches(20, fail_after=3), str(tmp_path / "a"), examples_per_shard=6)
    partial = json.load(open(tmp_path / "a" / "manifest.json"))
    assert not partial["complete"] and partial["count"] == 12  # two shards of 6 survived
    resumed = write_embedding_cache(model.image_encoder, batches(20), str(tmp_path / "a"), examples_per_shard=6)
    straight = write_embedding_cache(model.image_encoder, batches(20), str(tmp_path / "b"), examples_per_shard=6)
    assert resumed["count"] == straight["count"] == 20 and resumed["complete"]
    assert [s["count"] for s in resumed["shards"]] == [6, 6, 6, 2]
    for a, b in zip(resumed["shards"], straight["shards"]):
        with np.load(tmp_path / "a" / a["file"]) as x, np.load(tmp_path / "b" / b["file"]) as y:
            np.testing.assert_allclose(x["image_embeddings"], y["image_embeddings"], atol=1e-6)
            np.testing.assert_array_equal(x["token_ids"], y["token_ids"])
    # The cached embeddings are the tower's outputs, in order.
    data = random_pairs(20, seed=7)
    expected = keras.ops.convert_to_numpy(model.image_encoder(data["images"]))
    with np.load(tmp_path / "b" / "shard-00000.npz") as shard:
        np.testing.assert_allclose(shard["image_embeddings"], expected[:6], atol=1e-5)


def test_training_from_the_cache_runs_only_the_text_tower(tmp_path):
    model = tiny_siglip(lock_image_tower=True)
    write_embedding_cache(model.image_encoder, batches(16), str(tmp_path), examples_per_shard=8)
    dataset = read_embedding_cache(str(tmp_path), 8, embedding_dim=32, expected_count=16, seed=0)
    first = next(iter(dataset))
    assert tuple(first["image_embeddings"].shape) == (8, 32) and tuple(first["token_ids"].shape) == (8, 8)
    model.compile()
    history = model.fit(dataset, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_mismatched_or_broken_caches_give_clear_errors(tmp_path):
    model = tiny_siglip(lock_image_tower=True)
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match="holds no embedding cache"):
        read_embedding_cache(cache, 4)
    write_embedding_cache(model.image_encoder, batches(8), cache, examples_per_shard=4)
    with pytest.raises(ValueError, match="width 32, but the model expects width 64"):
        read_embedding_cache(cache, 4, embedding_dim=64)
    with pytest.raises(ValueError, match="holds 8 examples, but the data set has 10"):
        read_embedding_cache(cache, 4, expected_count=10)
    other_tower = type(model.image_encoder).from_config({**model.image_encoder.get_config(), "output_dim": 16})
    with pytest.raises(ValueError, match="width 32, but this image tower produces width 16"):
        write_embedding_cache(other_tower, batches(8), cache)
    with open(os.path.join(cache, "shard-00001.npz"), "wb") as f:
        f.write(b"truncated")
    dataset = read_embedding_cache(cache, 4, shuffle=False)
    with pytest.raises(Exception, match="shard-00001.npz is missing or corrupt"):
        list(dataset)
    manifest = json.load(open(os.path.join(cache, "manifest.json")))
    manifest["complete"] = False
    json.dump(manifest, open(os.path.join(cache, "manifest.json"), "w"))
    with pytest.raises(ValueError, match="incomplete"):
        read_embedding_cache(cache, 4)
