"""Precomputed image embeddings for LiT / SigLiT: write once with the locked tower, train many times.

A cache is a folder of shards `shard-00000.npz` (arrays `image_embeddings`
(n, dim) float32 and `token_ids` (n, length) int32) and a `manifest.json` listing
them. Each shard and each new manifest is written to a temporary file, flushed
and renamed into place (`keras_siglip.atomic`), and the manifest is rewritten
after every shard, so a run killed at any moment resumes after the last shard
it finished.
"""

import json
import os

import keras
import numpy as np

from keras_siglip import atomic
from keras_siglip.extras import require

MANIFEST = "manifest.json"
FORMAT = "keras_siglip.embedding_cache/1"


def _manifest_path(cache_dir):
    return os.path.join(cache_dir, MANIFEST)


def _read_manifest(cache_dir):
    path = _manifest_path(cache_dir)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"Embedding cache manifest {path} is unreadable: {error}") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a keras_siglip embedding cache manifest (format {manifest.get('format')!r}).")
    return manifest


def _write_atomically(path, write):
    with atomic.replaced_file(path) as temporary:
        write(temporary)


def _save_manifest(cache_dir, manifest):
    def write(path):
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1)

    _write_atomically(_manifest_path(cache_dir), write)


def _save_shard(path, embeddings, token_ids):
    with open(path, "wb") as file:  # a file object: np.savez would append ".npz" to the temporary name
        np.savez(file, image_embeddings=embeddings, token_ids=token_ids)


def _embedding_function(image_encoder):
    """A compiled forward pass of the tower (eager per-op calls are slow on JAX)."""
    height, width = image_encoder.image_size
    images = keras.Input((height, width, 3))
    model = keras.Model(images, image_encoder(images, training=False))
    return lambda batch: keras.ops.convert_to_numpy(model.predict_on_batch(batch)).astype("float32")


def write_embedding_cache(image_encoder, batches, cache_dir, examples_per_shard=8192):
    """Runs the (locked) image tower over a data set once and stores its embeddings.

    Args:
        image_encoder: the image tower, e.g. `model.image_encoder` of a SigLIP
            preset; anything with `image_size`, `embedding_dim` and a call on
            images.
        batches: an iterable of `{"images", "token_ids"}` batches (NumPy or a
            `tf.data.Dataset`, in a fixed order so that a resumed run sees the
            same examples).
        cache_dir: output folder; created if missing. If it holds an
            unfinished cache, the run resumes after its last complete shard.
        examples_per_shard: int. Examples per shard file.

    Returns:
        The manifest dict.

    Example:
    >>> write_embedding_cache(model.image_encoder, dataset, "cache/")  # doctest: +SKIP
    """
    os.makedirs(cache_dir, exist_ok=True)
    manifest = _read_manifest(cache_dir)
    dim = int(image_encoder.embedding_dim)
    if manifest is None:
        manifest = {"format": FORMAT, "embedding_dim": dim, "count": 0, "complete": False, "shards": []}
    elif manifest["embedding_dim"] != dim:
        raise ValueError(
            f"{cache_dir} holds embeddings of width {manifest['embedding_dim']}, but this image tower "
            f"produces width {dim}; use another folder."
        )
    if manifest["complete"]:
        return manifest
    already_written = manifest["count"]
    embed = _embedding_function(image_encoder)
    pending_embeddings, pending_tokens = [], []
    seen = 0

    def flush():
        embeddings = np.concatenate(pending_embeddings)
        token_ids = np.concatenate(pending_tokens)
        name = f"shard-{len(manifest['shards']):05d}.npz"
        _write_atomically(
            os.path.join(cache_dir, name),
            lambda path: _save_shard(path, embeddings, token_ids),
        )
        manifest["shards"].append({"file": name, "count": int(len(embeddings))})
        manifest["count"] += int(len(embeddings))
        _save_manifest(cache_dir, manifest)
        pending_embeddings.clear()
        pending_tokens.clear()

    for batch in batches:
        images = np.asarray(batch["images"])
        token_ids = np.asarray(batch["token_ids"]).astype("int32")
        start = max(already_written - seen, 0)  # examples a previous run already stored
        seen += len(images)
        if start >= len(images):
            continue
        images, token_ids = images[start:], token_ids[start:]
        pending_embeddings.append(embed(images))
        pending_tokens.append(token_ids)
        while sum(len(e) for e in pending_embeddings) >= examples_per_shard:
            embeddings, tokens = np.concatenate(pending_embeddings), np.concatenate(pending_tokens)
            pending_embeddings[:] = [embeddings[:examples_per_shard]]
            pending_tokens[:] = [tokens[:examples_per_shard]]
            flush()
            if len(embeddings) > examples_per_shard:
                pending_embeddings.append(embeddings[examples_per_shard:])
                pending_tokens.append(tokens[examples_per_shard:])
    if pending_embeddings:
        flush()
    manifest["complete"] = True
    _save_manifest(cache_dir, manifest)
    return manifest


def read_embedding_cache(cache_dir, batch_size, *, embedding_dim=None, expected_count=None, shuffle=True,
                         seed=None, drop_remainder=True):
    """A `tf.data.Dataset` of `{"image_embeddings", "token_ids"}` batches from a cache.

    Feed it to a `SigLIP(..., lock_image_tower=True)`: only the text tower runs.

    Args:
        cache_dir: a folder written by `write_embedding_cache`.
        batch_size: int.
        embedding_dim: int or None. The model's embedding width; a cache of
            another width is rejected.
        expected_count: int or None. The data set's size; a cache holding
            another number of examples is rejected.
        shuffle: bool. Shuffle shards and examples every epoch.
        seed: int or None. Shuffle seed, for a deterministic order.
        drop_remainder: bool. Drop the last incomplete batch.

    Example:
    >>> dataset = read_embedding_cache("cache/", 1024, embedding_dim=768)  # doctest: +SKIP
    >>> model.fit(dataset)  # doctest: +SKIP
    """
    tf = require("tensorflow", purpose="read_embedding_cache")

    manifest = _read_manifest(cache_dir)
    if manifest is None:
        raise ValueError(f"{cache_dir} holds no embedding cache ({MANIFEST} is missing).")
    if not manifest["complete"]:
        raise ValueError(
            f"The embedding cache in {cache_dir} is incomplete ({manifest['count']} examples so far); "
            "run the caching again to resume it."
        )
    if embedding_dim is not None and manifest["embedding_dim"] != embedding_dim:
        raise ValueError(
            f"The embedding cache in {cache_dir} holds embeddings of width {manifest['embedding_dim']}, "
            f"but the model expects width {embedding_dim}."
        )
    if expected_count is not None and manifest["count"] != expected_count:
        raise ValueError(
            f"The embedding cache in {cache_dir} holds {manifest['count']} examples, but the data set "
            f"has {expected_count}; it was made from other data."
        )
    shards = [os.path.join(cache_dir, shard["file"]) for shard in manifest["shards"]]
    counts = [shard["count"] for shard in manifest["shards"]]
    first = _load_shard(shards[0], counts[0], manifest["embedding_dim"])
    length = first["token_ids"].shape[1]

    def examples():
        order = np.arange(len(shards))
        if shuffle:
            np.random.default_rng(seed).shuffle(order)
        for index in order:
            shard = _load_shard(shards[index], counts[index], manifest["embedding_dim"])
            yield {"image_embeddings": shard["image_embeddings"], "token_ids": shard["token_ids"]}

    signature = {
        "image_embeddings": tf.TensorSpec((None, manifest["embedding_dim"]), tf.float32),
        "token_ids": tf.TensorSpec((None, length), tf.int32),
    }
    dataset = tf.data.Dataset.from_generator(examples, output_signature=signature).unbatch()
    if shuffle:
        dataset = dataset.shuffle(min(manifest["count"], 16 * batch_size), seed=seed)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def _load_shard(path, count, embedding_dim):
    try:
        with np.load(path, allow_pickle=False) as shard:
            arrays = {key: shard[key] for key in ("image_embeddings", "token_ids")}
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ValueError(f"Embedding cache shard {path} is missing or corrupt: {error}") from None
    embeddings, token_ids = arrays["image_embeddings"], arrays["token_ids"]
    if embeddings.shape != (count, embedding_dim) or len(token_ids) != count:
        raise ValueError(
            f"Embedding cache shard {path} holds embeddings {embeddings.shape} and token ids "
            f"{token_ids.shape}; the manifest says {count} examples of width {embedding_dim}."
        )
    return arrays
