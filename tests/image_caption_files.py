"""Small image-caption datasets on disk for the main-job tests: the `data` fixture, a tiny job config, weight files.

Test modules import `data` (a module-scoped pytest fixture), `TINY` and `weights` from here.
"""

import csv
import io
import tarfile

import h5py
import numpy as np
import pytest
import tensorflow as tf

COLORS = ["red", "green", "blue", "black", "white", "yellow"]
TINY = dict(width=32, depth=1, num_heads=2, mlp_dim=64, image_size=8, patch_size=4, batch_size=8, warmup_steps=1,
            eval_every=0, verbose=0, tensorboard=False, checkpoint_every=2)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """48 small JPEGs with captions: a CSV manifest, 4 tar shards (00000..00003) and 2 TFRecord shards."""
    root = tmp_path_factory.mktemp("pairs")
    samples = []
    for i in range(48):
        image = np.zeros((12, 14, 3), "uint8")
        image[:] = np.random.default_rng(i).integers(0, 256, 3)
        image[2:6, 3:9] = 255 - image[0, 0]
        data = tf.io.encode_jpeg(image, quality=95).numpy()
        (root / f"{i:04d}.jpg").write_bytes(data)
        samples.append((f"{i:04d}", data, f"a {COLORS[i % 6]} square with the number {i} written below it"))
    with open(root / "train.csv", "w", newline="") as file:
        csv.writer(file).writerows([("image", "caption")] + [(f"{k}.jpg", c) for k, _, c in samples])
    for shard in range(4):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as archive:
            for key, data, caption in samples[shard::4]:
                for name, content in ((f"{key}.jpg", data), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(content)
                    archive.addfile(info, io.BytesIO(content))
    for shard in range(2):
        with tf.io.TFRecordWriter(str(root / f"part-{shard}.tfrecord")) as writer:
            for key, data, caption in samples[shard::2]:
                feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
                           for name, value in (("key", key.encode()), ("jpg", data), ("txt", caption.encode()))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return root


def weights(path):
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays
