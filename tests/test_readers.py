"""The readers of keras_siglip.data on small generated JPEG/PNG files in all three layouts."""

import csv
import io
import json
import math
import os
import tarfile

import keras
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from keras_siglip import SigLIPImagePreprocessor, SigLIPTokenizer
from keras_siglip.data import SkippedImages, read_manifest, read_tar_shards, read_tfrecords
from tests.conftest import tiny_siglip

IMAGE_SIZE = 16
SEQUENCE_LENGTH = 8
COLORS = ["red", "green", "blue", "black", "white", "yellow"]
SHAPES = ["square", "circle", "cross"]


def make_image(index):
    rng = np.random.default_rng(index)
    height, width = 20 + 3 * (index % 4), 24 + 5 * (index % 3)
    image = np.full((height, width, 3), 40 * (index % 6), "uint8")
    image[4:12, 5:15] = rng.integers(0, 256, 3)
    return image


def encode(image, index):
    return (tf.io.encode_png(image) if index % 2 else tf.io.encode_jpeg(image, quality=90)).numpy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 good samples (JPEG and PNG) with unique captions, written in every layout."""
    root = tmp_path_factory.mktemp("corpus")
    samples = []
    for i in range(12):
        caption = f"a {COLORS[i % 6]} {SHAPES[i % 3]} number {i}" if i != 11 else ""  # one empty caption
        extension = "png" if i % 2 else "jpg"
        data = encode(make_image(i), i)
        (root / f"{i:03d}.{extension}").write_bytes(data)
        samples.append({"key": f"{i:03d}", "file": f"{i:03d}.{extension}", "ext": extension,
                        "bytes": data, "caption": caption})
    rows = [(s["file"], s["caption"]) for s in samples]
    with open(root / "pairs.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    with open(root / "pairs.jsonl", "w") as file:
        for path, caption in rows:
            file.write(json.dumps({"path": path, "text": caption}) + "\n")
    for shard in range(2):
        with tarfile.open(root / f"shard-{shard}.tar", "w") as archive:
            for s in samples[shard::2]:
                for name, data in ((f"{s['key']}.{s['ext']}", s["bytes"]), (f"{s['key']}.txt", s["caption"].encode()),
                                   (f"{s['key']}.json", b"{}")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        with tf.io.TFRecordWriter(str(root / f"shard-{shard}.tfrecord")) as writer:
            for s in samples[shard::2]:
                feature = {
                    "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s["key"].encode()])),
                    "jpg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s["bytes"]])),
                    "txt": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s["caption"].encode()])),
                    "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
                }
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return root, samples


@pytest.fixture(scope="module")
def tokenizer(corpus):
    _, samples = corpus
    sentences = [s["caption"] for s in samples if s["caption"]] * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=39, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, minloglevel=2,
    )
    return SigLIPTokenizer(model.getvalue(), sequence_length=SEQUENCE_LENGTH)


@pytest.fixture(scope="module")
def expected(corpus, tokenizer):
    """Each sample's image and caption as the preprocessor and tokenizer give them eagerly."""
    _, samples = corpus
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE)
    images = keras.ops.convert_to_numpy(preprocessor([s["bytes"] for s in samples]))
    token_ids = keras.ops.convert_to_numpy(tokenizer([s["caption"] for s in samples]))
    return images, token_ids


def readers(root):
    """Each layout's reader, with the same keyword options."""
    return {
        "csv": lambda *a, **k: read_manifest(str(root / "pairs.csv"), *a, **k),
        "jsonl": lambda *a, **k: read_manifest(str(root / "pairs.jsonl"), *a, image_column="path",
                                               caption_column="text", **k),
        "tar": lambda *a, **k: read_tar_shards(str(root / "shard-*.tar"), *a, **k),
        "tfrecord": lambda *a, **k: read_tfrecords(str(root / "shard-*.tfrecord"), *a, **k),
    }


def collect(batches):
    images, token_ids = [], []
    for batch in batches:
        assert set(batch) == {"images", "token_ids"}
        assert batch["images"].dtype == tf.float32 and batch["token_ids"].dtype == tf.int32
        images.append(batch["images"].numpy())
        token_ids.append(batch["token_ids"].numpy())
    return np.concatenate(images), np.concatenate(token_ids)


@pytest.mark.parametrize("layout", ["csv", "jsonl", "tar", "tfrecord"])
def test_reader_content(corpus, tokenizer, expected, layout):
    root, _ = corpus
    expected_images, expected_ids = expected
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE)
    dataset = readers(root)[layout](tokenizer, preprocessor, 5, training=False, drop_remainder=False,
                                    deterministic=True)
    assert dataset.element_spec["images"].shape.as_list() == [None, IMAGE_SIZE, IMAGE_SIZE, 3]
    batches = list(dataset)
    assert sorted(b["images"].shape[0] for b in batches) == [2, 5, 5]
    images, token_ids = collect(batches)
    assert images.shape == (12, IMAGE_SIZE, IMAGE_SIZE, 3) and token_ids.shape == (12, SEQUENCE_LENGTH)
    # Each output pair is a sample's image with that sample's caption. Resized
    # pixels are rounded to uint8 before batching: at most half a level apart.
    for image, ids in zip(images, token_ids):
        index = int(np.argmin(np.abs(expected_images - image).reshape(12, -1).max(axis=1)))
        np.testing.assert_allclose(image, expected_images[index], atol=1 / 255 + 1e-6)
        np.testing.assert_array_equal(ids, expected_ids[index])
    np.testing.assert_array_equal(  # the empty caption: EOS, then EOS padding
        expected_ids[11], np.full(SEQUENCE_LENGTH, tokenizer.eos_id)
    )
    if layout == "csv":  # one file, no shuffling: the manifest's order; exact_resize: big_vision's floats
        np.testing.assert_array_equal(token_ids, expected_ids)
        np.testing.assert_allclose(images, expected_images, atol=1 / 255 + 1e-6)
        exact, _ = collect(readers(root)[layout](tokenizer, preprocessor, 4, training=False, exact_resize=True,
                                                 deterministic=True))
        np.testing.assert_allclose(exact, expected_images, atol=1e-6)


def test_drop_remainder_and_sharding(corpus, tokenizer, expected):
    root, _ = corpus
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE)
    layouts = readers(root)
    batches = list(layouts["tar"](tokenizer, preprocessor, 5, training=False))
    assert [b["images"].shape[0] for b in batches] == [5, 5]  # drop_remainder=True by default
    # Rows of a manifest are split between hosts; tar / TFRecord shards file by file.
    everything = sorted(map(tuple, expected[1]))
    for name in ("csv", "tfrecord"):
        parts = [collect(layouts[name](tokenizer, preprocessor, 1, training=False, shard=(i, 2)))[1]
                 for i in range(2)]
        assert len(parts[0]) == len(parts[1]) == 6, name
        assert sorted(map(tuple, np.concatenate(parts))) == everything, name
    with pytest.raises(ValueError, match="shard"):
        read_manifest(str(root / "pairs.csv"), tokenizer, preprocessor, 2, shard=(2, 2))


def test_deterministic_shuffle_and_augmentation(corpus, tokenizer):
    root, _ = corpus
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE, random_resized_crop=True, horizontal_flip=True)
    make = readers(root)["tar"]  # file shuffling, sample shuffling and augmentation all seeded

    def run(seed):
        return collect(make(tokenizer, preprocessor, 4, seed=seed, deterministic=True, shuffle_buffer=12))

    first, again, other = run(1), run(1), run(2)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    plain = collect(make(tokenizer, preprocessor, 4, training=False))
    assert not np.array_equal(first[0], plain[0])  # augmented in training only
    with pytest.raises(ValueError, match="seed"):
        read_manifest(str(root / "pairs.csv"), tokenizer, preprocessor, 2, deterministic=True)


def test_bad_images_are_skipped_counted_and_reported(corpus, tokenizer, tmp_path):
    root, samples = corpus
    good = samples[:4]
    truncated = good[0]["bytes"][: len(good[0]["bytes"]) // 2]
    (tmp_path / "truncated.jpg").write_bytes(truncated)
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    for s in good:
        (tmp_path / s["file"]).write_bytes(s["bytes"])
    rows = [(s["file"], s["caption"]) for s in good] + [
        ("truncated.jpg", "a broken file"), ("missing.jpg", "no file"), ("junk.png", "junk")
    ]
    with open(tmp_path / "pairs.csv", "w", newline="") as file:
        csv.writer(file).writerows([("image", "caption"), *rows])
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE)
    skipped = SkippedImages()
    dataset = read_manifest(str(tmp_path / "pairs.csv"), tokenizer, preprocessor, 2, training=False,
                            drop_remainder=False, skipped=skipped)
    with pytest.warns(UserWarning, match=r"skipped 1 image.*truncated\.jpg"):
        images, _ = collect(dataset)
    assert len(images) == 4
    assert skipped.count == 3 and dataset.skipped_images is skipped
    assert [os.path.basename(n) for n in skipped.names] == ["truncated.jpg", "missing.jpg", "junk.png"]

    # A tar shard with a corrupt image and a sample without any image.
    with tarfile.open(tmp_path / "bad.tar", "w") as archive:
        for name, data in (("a.jpg", good[0]["bytes"]), ("a.txt", b"fine"), ("b.jpg", truncated),
                           ("b.txt", b"broken"), ("c.txt", b"caption only"), ("d.png", good[1]["bytes"])):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.warns(UserWarning, match="skipped"):
        dataset = read_tar_shards(str(tmp_path / "bad.tar"), tokenizer, preprocessor, 1, training=False)
        images, token_ids = collect(dataset)
    assert len(images) == 2 and dataset.skipped_images.count == 2
    assert sorted(n.split(":")[1][:1] for n in dataset.skipped_images.names) == ["b", "c"]
    np.testing.assert_array_equal(token_ids[1], np.full(SEQUENCE_LENGTH, tokenizer.eos_id))  # d: no caption


def test_failures_across_isolation_chunks_keep_file_order(corpus, tokenizer, tmp_path):
    """Errors are isolated per sample in chunks of ISOLATION_CHUNK: a wholly bad chunk, bad samples at chunk
    edges and good ones around them all come out right, in file order when evaluating."""
    from keras_siglip.data.readers import ISOLATION_CHUNK

    _, samples = corpus
    (tmp_path / "good.jpg").write_bytes(samples[0]["bytes"])
    (tmp_path / "good.png").write_bytes(samples[1]["bytes"])
    (tmp_path / "bad.jpg").write_bytes(samples[0]["bytes"][:100])
    count = 2 * ISOLATION_CHUNK + 11

    def image_for(i):
        if ISOLATION_CHUNK <= i < 2 * ISOLATION_CHUNK:
            return f"missing-{i}.jpg"  # the whole second chunk
        if i % 7 == 0 or i == ISOLATION_CHUNK - 1:
            return "bad.jpg"
        return "good.png" if i % 2 else "good.jpg"

    rows = [(image_for(i), f"number {i}") for i in range(count)]
    with open(tmp_path / "pairs.csv", "w", newline="") as file:
        csv.writer(file).writerows([("image", "caption"), *rows])
    dataset = read_manifest(str(tmp_path / "pairs.csv"), tokenizer, SigLIPImagePreprocessor(IMAGE_SIZE), 3,
                            training=False, drop_remainder=False)
    with pytest.warns(UserWarning, match="skipped 10 image"):
        _, token_ids = collect(dataset)
    good = [caption for image, caption in rows if image.startswith("good")]
    np.testing.assert_array_equal(token_ids, keras.ops.convert_to_numpy(tokenizer(good)))
    assert dataset.skipped_images.count == count - len(good)
    bad = {image for image, _ in rows if not image.startswith("good")}
    names = [os.path.basename(n) for n in dataset.skipped_images.names]  # chunks report as they finish
    assert len(names) == 5 and set(names) <= bad


def test_bad_arguments(corpus, tokenizer, tmp_path):
    root, _ = corpus
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE)
    with pytest.raises(ValueError, match="column"):
        read_manifest(str(root / "pairs.jsonl"), tokenizer, preprocessor, 2)
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(str(tmp_path / "absent.csv"), tokenizer, preprocessor, 2)
    with pytest.raises(ValueError, match="No tar shard"):
        read_tar_shards(str(tmp_path / "*.tar"), tokenizer, preprocessor, 2)
    with pytest.raises(ValueError, match="do not exist"):
        read_tfrecords([str(tmp_path / "absent.tfrecord")], tokenizer, preprocessor, 2)
    with pytest.raises(ValueError, match="batch_size"):
        read_manifest(str(root / "pairs.csv"), tokenizer, preprocessor, 0)


def test_training_run(corpus, tokenizer):
    """`fit` straight from a reader, on the active backend."""
    root, _ = corpus
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE, random_resized_crop=True, horizontal_flip=True)
    dataset = read_tar_shards(str(root / "shard-*.tar"), tokenizer, preprocessor, 4, seed=0)
    model = tiny_siglip(image_size=IMAGE_SIZE, sequence_length=SEQUENCE_LENGTH,
                        vocabulary_size=tokenizer.vocabulary_size())
    model.compile()
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    history = model.fit(dataset, epochs=2, verbose=0)  # 3 batches an epoch
    losses = history.history["loss"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


# -- damaged files: reported with file and position, what could be read kept, the epoch goes on ---------------


def write_tar(path, samples, members=("image", "txt")):
    """A tar shard as img2dataset writes it: per sample `key.jpg|png`, `key.txt` (and `key.json`)."""
    with tarfile.open(path, "w") as archive:
        for i, s in enumerate(samples):
            content = {"image": (s["ext"], s["bytes"]), "txt": ("txt", s["caption"].encode()), "json": ("json", b"{}")}
            for member in members:
                extension, data = content[member]
                info = tarfile.TarInfo(f"{i:04d}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def ids_of(tokenizer, captions):
    return sorted(map(tuple, keras.ops.convert_to_numpy(tokenizer(captions))))


@pytest.mark.parametrize("cut", ["image header", "caption header", "image data", "no end blocks"])
def test_truncated_tar_shard_is_reported_and_the_epoch_goes_on(corpus, tokenizer, tmp_path, cut):
    root, samples = corpus
    twenty = [samples[i % 12] for i in range(20)]
    write_tar(tmp_path / "full.tar", twenty)
    data = (tmp_path / "full.tar").read_bytes()
    with tarfile.open(tmp_path / "full.tar") as archive:
        members = archive.getmembers()  # two per sample: image, caption
    image, caption = members[20], members[21]  # sample 10
    length = {"image header": image.offset + 100, "caption header": caption.offset + 100,
              "image data": image.offset_data + 10, "no end blocks": image.offset}[cut]
    (tmp_path / "cut.tar").write_bytes(data[:length])
    good_shard = str(root / "shard-0.tar")  # samples 0, 2, ..., 10 of the corpus
    dataset = read_tar_shards([str(tmp_path / "cut.tar"), good_shard], tokenizer,
                              SigLIPImagePreprocessor(IMAGE_SIZE), 1, training=False)
    with pytest.warns(UserWarning, match=r"skipped 1 .*cut\.tar \(damaged at member 2[01]"):
        images, token_ids = collect(dataset)
    # Samples 0-9 of the damaged shard, then all of the next shard.
    kept = [s["caption"] for s in twenty[:10]] + [s["caption"] for s in samples[0::2]]
    assert len(images) == len(kept) == 16
    assert sorted(map(tuple, token_ids)) == ids_of(tokenizer, kept)
    skipped = dataset.skipped_images
    where = {"image header": f"member 20 (header at byte {image.offset})",
             "caption header": f"member 21 (header at byte {caption.offset})",
             "image data": f"member 20 (0010.{twenty[10]['ext']}, data at byte {image.offset_data})",
             "no end blocks": f"member 20 (header at byte {image.offset})"}[cut]
    assert skipped.names[0].startswith(f"{tmp_path / 'cut.tar'} (damaged at {where}: "), skipped.names
    if cut in ("caption header", "image data"):  # sample 10 was begun, not finished: counted too, never
        # passed on without its caption
        assert skipped.count == 2
        assert skipped.names[1] == f"{tmp_path / 'cut.tar'}:0010 (incomplete: the shard is damaged inside this sample)"
    else:  # the damage is between samples 9 and 10
        assert skipped.count == 1


def test_bad_manifest_rows_are_counted_skips_with_file_and_row(corpus, tokenizer, tmp_path):
    root, samples = corpus
    for s in samples[:3]:
        (tmp_path / s["file"]).write_bytes(s["bytes"])
    good = [(s["file"], s["caption"]) for s in samples[:3]]
    path = tmp_path / "pairs.csv"
    with open(path, "wb") as file:
        file.write(b"image,caption\n")
        file.write(f"{good[0][0]},{good[0][1]}\n".encode())
        file.write(f"{good[1][0]},".encode() + b"x" * 200_000 + b"\n")  # over csv's field size limit
        file.write(f"{good[1][0]},caf\xe9 in latin-1\n".encode("latin-1"))  # not UTF-8
        file.write(f"{good[1][0]},{good[1][1]}\n\n".encode())  # and a blank line, which is no row
        file.write(f"{good[2][0]},a caption,an extra field\n".encode())
        file.write(f"{good[2][0]},{good[2][1]}\n".encode())
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE)
    with pytest.warns(UserWarning, match=r"skipped 1 .*pairs\.csv row 2 \(line 3: field larger than field limit"):
        dataset = read_manifest(str(path), tokenizer, preprocessor, 1, training=False)
    _, token_ids = collect(dataset)
    np.testing.assert_array_equal(token_ids, keras.ops.convert_to_numpy(tokenizer([c for _, c in good])))
    assert dataset.skipped_images.count == 3
    assert dataset.skipped_images.names[1:] == [
        f"{path} row 3 (line 4) (not valid UTF-8)", f"{path} row 5 (line 7) (3 fields, the header has 2)"
    ]

    path = tmp_path / "pairs.jsonl"
    with open(path, "wb") as file:
        file.write(json.dumps({"path": good[0][0], "text": good[0][1]}).encode() + b"\n")
        file.write(b'{"path": "000.jpg", "text": "cut off\n')  # malformed JSON
        file.write(b"[1, 2]\n")  # JSON, but no object
        file.write(b'{"path": "000.jpg", "text": "caf\xe9"}\n')  # not UTF-8
        file.write(json.dumps({"path": good[1][0]}).encode() + b"\n")  # no caption
        file.write(json.dumps({"text": "no image"}).encode() + b"\n")
        file.write(json.dumps({"path": good[2][0], "text": good[2][1]}).encode() + b"\n")
    with pytest.warns(UserWarning, match=r"skipped 1 .*pairs\.jsonl line 2 \(JSONDecodeError"):
        dataset = read_manifest(str(path), tokenizer, preprocessor, 1, training=False, image_column="path",
                                caption_column="text")
    _, token_ids = collect(dataset)
    np.testing.assert_array_equal(token_ids, keras.ops.convert_to_numpy(tokenizer([good[0][1], good[2][1]])))
    names = dataset.skipped_images.names
    assert dataset.skipped_images.count == 5 and len(names) == 5
    assert names[1] == f"{path} line 3 (a JSON list, not an object)"
    assert names[2].startswith(f"{path} line 4 (UnicodeDecodeError")
    assert names[3:] == [f"{path} line 5 (no 'text')", f"{path} line 6 (no image path in 'path')"]

    # Nothing usable is an error that names the file, not an empty epoch.
    (tmp_path / "bad.jsonl").write_bytes(b"{oops\n[]\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"bad\.jsonl.* no usable rows \(2 skipped"):
        read_manifest(str(tmp_path / "bad.jsonl"), tokenizer, preprocessor, 1)


def write_tfrecord(path, samples, extra=()):
    """Records as img2dataset writes them; returns each record's byte offset."""
    offsets, offset = [], 0
    with tf.io.TFRecordWriter(str(path)) as writer:
        for s in samples:
            feature = {
                "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s["key"].encode()])),
                "jpg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s["bytes"]])),
                "txt": tf.train.Feature(bytes_list=tf.train.BytesList(value=[s["caption"].encode()])),
            }
            record = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            writer.write(record)
            offsets.append(offset)
            offset += 16 + len(record)
        for record in extra:
            writer.write(record)
    return offsets


@pytest.mark.parametrize("damage", ["corrupt byte", "truncated"])
def test_corrupt_tfrecord_is_reported_and_the_epoch_goes_on(corpus, tokenizer, tmp_path, damage):
    root, samples = corpus
    offsets = write_tfrecord(tmp_path / "bad.tfrecord", samples[:6])
    data = bytearray((tmp_path / "bad.tfrecord").read_bytes())
    if damage == "corrupt byte":
        data[offsets[3] + 40] ^= 0xFF  # inside record 3's image: its CRC no longer matches
    else:
        data = data[: offsets[3] + 30]
    (tmp_path / "bad.tfrecord").write_bytes(bytes(data))
    good_file = str(root / "shard-1.tfrecord")  # samples 1, 3, ..., 11
    dataset = read_tfrecords([str(tmp_path / "bad.tfrecord"), good_file], tokenizer,
                             SigLIPImagePreprocessor(IMAGE_SIZE), 1, training=False)
    with pytest.warns(UserWarning, match=r"skipped 1 .*bad\.tfrecord \(damaged at record 3"):
        images, token_ids = collect(dataset)
    kept = [s["caption"] for s in samples[:3]] + [s["caption"] for s in samples[1::2]]
    assert len(images) == 9
    assert sorted(map(tuple, token_ids)) == ids_of(tokenizer, kept)
    assert dataset.skipped_images.count == 1
    name = dataset.skipped_images.names[0]
    assert name.startswith(f"{tmp_path / 'bad.tfrecord'} (damaged at record 3, byte offset {offsets[3]}: "), name
    assert ("corrupted record" if damage == "corrupt byte" else "truncated record") in name, name


def test_tfrecord_that_is_no_example_is_a_counted_skip(corpus, tokenizer, tmp_path):
    _, samples = corpus
    wrong_kind = tf.train.Example(features=tf.train.Features(feature={
        "jpg": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})).SerializeToString()
    write_tfrecord(tmp_path / "a.tfrecord", samples[:2], extra=[wrong_kind])
    dataset = read_tfrecords(str(tmp_path / "a.tfrecord"), tokenizer, SigLIPImagePreprocessor(IMAGE_SIZE), 1,
                             training=False)
    with pytest.warns(UserWarning, match=r"a\.tfrecord record 2 \(not a tf.train.Example"):
        _, token_ids = collect(dataset)
    np.testing.assert_array_equal(token_ids, keras.ops.convert_to_numpy(tokenizer([s["caption"] for s in samples[:2]])))
    assert dataset.skipped_images.count == 1


# -- streaming: brace ranges, repeatable by seed, resumable by position ---------------------------------------------


def test_brace_ranges_name_shards_and_a_range_of_nothing_is_refused(corpus, tokenizer):
    from keras_siglip.data.readers import expand_braces

    root, _ = corpus
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE)
    assert expand_braces("a/{08..10}.tar") == ["a/08.tar", "a/09.tar", "a/10.tar"]
    assert expand_braces("{x,y}{0..1}") == ["x0", "x1", "y0", "y1"]
    braced = collect(read_tar_shards(str(root / "shard-{0..1}.tar"), tokenizer, preprocessor, 4, training=False))
    globbed = collect(read_tar_shards(str(root / "shard-*.tar"), tokenizer, preprocessor, 4, training=False))
    np.testing.assert_array_equal(braced[1], globbed[1])
    with pytest.raises(ValueError, match="No tar shard matches.*none of its 3 names"):
        read_tar_shards(str(root / "shard-{5..7}.tar"), tokenizer, preprocessor, 4)
    with pytest.raises(ValueError, match=r"1 tar shard\(s\) do not exist"):
        read_tar_shards(str(root / "shard-{0..2}.tar"), tokenizer, preprocessor, 4)
    with pytest.raises(ValueError, match="backwards"):
        expand_braces("{3..1}")
    with pytest.raises(ValueError, match="empty"):
        read_tar_shards([], tokenizer, preprocessor, 4)


@pytest.mark.parametrize("layout", ["csv", "tar"])
def test_seeded_stream_repeats_without_deterministic_and_resumes_at_a_position(corpus, tokenizer, layout):
    from keras_siglip.data.readers import StreamPositions

    root, _ = corpus
    preprocessor = SigLIPImagePreprocessor(IMAGE_SIZE, random_resized_crop=True, horizontal_flip=True)
    make = readers(root)[layout]

    def stream(start=0, positions=None):
        dataset = make(tokenizer, preprocessor, 5, seed=0, repeat=True, shuffle_buffer=6, start_position=start,
                       positions=positions)
        return [(b["images"].numpy(), b["token_ids"].numpy()) for b in dataset.take(7)]  # 35 samples: 3 passes

    positions = StreamPositions()
    first = stream(positions=positions)
    again = stream()
    for (a, b), (c, d) in zip(first, again):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    # Each iterator of one endless dataset sees the same stream, however far another one read
    # (as Keras's does after the one that checked the first batches, on JAX).
    dataset = make(tokenizer, preprocessor, 5, seed=0, repeat=True, shuffle_buffer=6)
    list(dataset.take(9))
    for batch, (a, b) in zip(dataset.take(7), first):
        np.testing.assert_array_equal(batch["images"].numpy(), a)
        np.testing.assert_array_equal(batch["token_ids"].numpy(), b)
    ends = [positions.end_of(n, start=0) for n in range(7)]
    assert ends == [5 * (n + 1) for n in range(7)]  # no image skipped
    variable = tf.Variable(0, dtype=tf.int64)
    resumed = make(tokenizer, preprocessor, 5, seed=0, repeat=True, shuffle_buffer=6, start_position=variable)
    variable.assign(ends[2])  # read when iterated: the batches after the third, augmentation included
    tail = [(b["images"].numpy(), b["token_ids"].numpy()) for b in resumed.take(4)]
    for (a, b), (c, d) in zip(first[3:], tail):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_captions_longer_than_the_text_tower_are_counted(corpus, tokenizer):
    root, samples = corpus
    dataset = read_manifest(str(root / "pairs.csv"), tokenizer, SigLIPImagePreprocessor(IMAGE_SIZE), 4,
                            training=False, drop_remainder=False)
    with pytest.warns(UserWarning, match="truncated"):
        list(dataset)
    pieces = tokenizer._live_sentence_piece().tokenize(tokenizer.normalize([s["caption"] for s in samples]))
    expected = int(np.sum(pieces.row_lengths().numpy() + 1 > SEQUENCE_LENGTH))
    assert 0 < expected < 12
    assert (dataset.captions.seen, dataset.captions.truncated) == (12, expected)
