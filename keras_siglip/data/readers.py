"""Readers: image-caption files to batched `{"images", "token_ids"}` `tf.data` pipelines.

Three layouts, one pipeline:

- `read_manifest`: a CSV/TSV or JSONL file with an image path and a caption per row;
- `read_tar_shards`: webdataset-style tar shards as img2dataset writes them
  (`key.jpg` + `key.txt` per sample, consecutive in the archive), named by a
  list, a glob or a brace range (`data/{00000..00099}.tar`);
- `read_tfrecords`: img2dataset's TFRecord shards (`jpg` and `txt` bytes features).

Every reader gives each host its own shard of the files (or rows), shuffles
(file order and a sample buffer), decodes and pre-processes images in parallel,
skips any image that cannot be read or decoded (counted in a `SkippedImages`
report and announced with a warning that names the first few), tokenises the
captions of each batch (counting those cut to the text tower's length),
batches with `drop_remainder` and prefetches (with a `NaFlexImagePreprocessor`,
for SigLIP 2 NaFlex, each image keeps its aspect ratio and the batches carry
its `pixel_values`, `pixel_attention_mask` and `spatial_shapes` in place of
`images`). The result feeds `SigLIP.fit`
on JAX, TensorFlow and PyTorch alike, and is the same on each: with a `seed`
the stream is deterministic, and `start_position` resumes it exactly.

Damaged data is skipped and reported the same way, never silently and never
by aborting: a manifest row that cannot be parsed (named by file and row), and
a tar or TFRecord shard that breaks off (named by file, member / record index
and byte offset: the samples before the damage are kept and the reader goes on
with the next shard).
"""

import csv
import json
import os
import re
import tarfile
import threading
import warnings

from google.protobuf.message import DecodeError

from keras_siglip import backend
from keras_siglip.extras import require
from keras_siglip.models.siglip.naflex_image_encoder import INPUT_KEYS
from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor

tf = require("tensorflow", purpose="keras_siglip.data.readers")

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "bmp", "webp")
# Samples loaded by one small dataset: errors are isolated per sample at a per-chunk cost.
ISOLATION_CHUNK = 32


class SkippedImages:
    """A running count of the images a reader could not use, with the first few names.

    Also counted: manifest rows that cannot be parsed and damaged shards (one
    entry per shard, naming where it breaks off). A warning is issued at the
    1st, 10th, 100th... entry, so a broken data set is noticed at once and a
    few bad files do not flood the log.

    Args:
        keep: how many names to keep for the report.

    Example:
    >>> import warnings
    >>> skipped = SkippedImages()
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     skipped.add("missing.jpg")
    >>> skipped.count, skipped.names, len(caught)
    (1, ['missing.jpg'], 1)
    """

    def __init__(self, keep=5):
        self.keep = keep
        self.count = 0
        self.names = []
        self._lock = threading.Lock()

    def add(self, name):
        with self._lock:
            self.count += 1
            if len(self.names) < self.keep and name not in self.names:  # a repeated stream meets it again
                self.names.append(name)
            count, names = self.count, list(self.names)
        if _is_power_of_ten(count):
            warnings.warn(
                f"keras_siglip.data skipped {count} image(s), row(s) or damaged shard(s) that could not "
                f"be read or decoded so far; the first: {', '.join(names)}.",
                stacklevel=2,
            )

    def __repr__(self):
        return f"SkippedImages(count={self.count}, names={self.names})"


def _is_power_of_ten(n):
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


# -- sources: each yields {"name", "image" (bytes or a path), "caption"} ------------


def read_manifest(path, tokenizer, image_preprocessor, batch_size, *, image_root=None,
                  image_column="image", caption_column="caption", **options):
    """Batches from a CSV/TSV (header row) or JSONL manifest of image paths and captions.

    Args:
        path: the manifest; `.csv`, `.tsv` or `.jsonl`/`.json` (one object per line).
        tokenizer: a `SigLIPTokenizer` (or any callable on a batch of strings).
        image_preprocessor: a `SigLIPImagePreprocessor`, or a
            `NaFlexImagePreprocessor` (see `make_pipeline`).
        batch_size: int. Pairs per batch.
        image_root: folder that relative image paths start from; default the
            manifest's folder.
        image_column: column / key holding the image path.
        caption_column: column / key holding the caption.
        **options: the pipeline options of `make_pipeline` (`training`,
            `shuffle_buffer`, `seed`, `deterministic`, `drop_remainder`,
            `skipped`, `start_position`, `positions`, `with_captions`), and
            `shard=(index, count)` (default: this process of a multi-host
            job) and `repeat=True` (an endless stream for step-based
            training: the files or rows are reshuffled each pass and the
            stream never runs out).

    Returns:
        A `tf.data.Dataset` of `{"images": float32 (B, S, S, 3), "token_ids": int32 (B, L)}`
        (NaFlex: the preprocessor's three patch inputs instead of `"images"`).

    Example:
    >>> ds = read_manifest("pairs.csv", tokenizer, SigLIPImagePreprocessor(224), 256)  # doctest: +SKIP
    >>> model.fit(ds, epochs=1)  # doctest: +SKIP
    """
    skipped = options.setdefault("skipped", SkippedImages())
    rows = _read_manifest_rows(path, image_column, caption_column, skipped)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    paths = [p if os.path.isabs(p) else os.path.join(root, p) for p, _ in rows]
    captions = [c for _, c in rows]
    index, count = _shard(options.get("shard"))
    paths, captions = paths[index::count], captions[index::count]
    # The rows are in memory: each pass shuffles them all.
    source = _reading_order({"name": paths, "image": paths, "caption": captions}, options)
    return make_pipeline(source, tokenizer, image_preprocessor, batch_size, image_is_path=True,
                         **_stream_options(options))


def _read_manifest_rows(path, image_column, caption_column, skipped):
    """The manifest's (image, caption) rows; a row that cannot be used is a counted skip, not an abort."""
    if not os.path.exists(path):
        raise ValueError(f"Manifest {path!r} does not exist.")
    extension = os.path.splitext(path)[1].lower()
    if extension in (".jsonl", ".json"):
        records = _jsonl_records(path, skipped)
    elif extension in (".csv", ".tsv"):
        records = _csv_records(path, "\t" if extension == ".tsv" else ",", skipped)
    else:
        raise ValueError(f"Manifest {path!r} must end in .csv, .tsv, .jsonl or .json.")
    records = list(records)
    if not records:
        raise ValueError(f"Manifest {path!r} has no usable rows ({skipped.count} skipped: {skipped.names}).")
    missing = [key for key in (image_column, caption_column) if key not in records[0][1]]
    if missing:  # a wrong column name is the caller's mistake, not a damaged row: refuse
        raise ValueError(
            f"Manifest {path!r} has no column {missing}; its columns are {sorted(records[0][1])}. "
            "Pass image_column= / caption_column=."
        )
    rows = []
    for where, record in records:
        image, caption = record.get(image_column), record.get(caption_column)
        if not isinstance(image, str) or not image:
            skipped.add(f"{path} {where} (no image path in {image_column!r})")
        elif caption_column not in record:
            skipped.add(f"{path} {where} (no {caption_column!r})")
        elif caption is not None and not isinstance(caption, (str, int, float)):
            skipped.add(f"{path} {where} (caption {caption_column!r} is a {type(caption).__name__})")
        else:
            rows.append((image, "" if caption is None else str(caption)))
    if not rows:
        raise ValueError(f"Manifest {path!r} has no usable rows ({skipped.count} skipped: {skipped.names}).")
    return rows


def _jsonl_records(path, skipped):
    """(where, object) per line; lines are decoded one by one so a bad line loses only itself."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8-sig" if number == 1 else "utf-8"))
            except (UnicodeDecodeError, ValueError) as error:
                skipped.add(f"{path} line {number} ({type(error).__name__}: {error})")
                continue
            if not isinstance(record, dict):
                skipped.add(f"{path} line {number} (a JSON {type(record).__name__}, not an object)")
                continue
            yield f"line {number}", record


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bytes that are not UTF-8


def _csv_records(path, delimiter, skipped):
    """(where, row dict) per data row. The csv module reads text and stops at its first error, so bytes
    that are not UTF-8 are kept as surrogates to be found per row, and the reader resumes after an error."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as file:
        reader = csv.reader(file, delimiter=delimiter)
        header, row_number = None, 0
        while True:
            line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:  # e.g. a field over csv.field_size_limit()
                row_number += 1
                skipped.add(f"{path} row {row_number} (line {line}: {error})")
                continue
            if header is None:
                if _UNDECODABLE.search("".join(fields)):
                    raise ValueError(f"Manifest {path!r}: the header row is not valid UTF-8.")
                header = fields
                continue
            if not fields:  # a blank line
                continue
            row_number += 1
            where = f"row {row_number} (line {line})"
            if _UNDECODABLE.search("".join(fields)):
                skipped.add(f"{path} {where} (not valid UTF-8)")
            elif len(fields) != len(header):
                skipped.add(f"{path} {where} ({len(fields)} fields, the header has {len(header)})")
            else:
                yield where, dict(zip(header, fields))


def read_tar_shards(shards, tokenizer, image_preprocessor, batch_size, *, caption_extension="txt",
                    image_extensions=IMAGE_EXTENSIONS, **options):
    """Batches from webdataset-style tar shards (img2dataset's `webdataset` output).

    A sample is the run of consecutive members sharing a key (the file name up
    to its first dot): `000010.jpg`, `000010.txt`, `000010.json`. A sample
    without an image is skipped and counted; one without a caption gets "".

    Args:
        shards: a glob pattern, or a list of tar paths.
        tokenizer, image_preprocessor, batch_size, **options: as in `read_manifest`.
        caption_extension: extension of the caption member.
        image_extensions: extensions accepted as the image member.

    Example:
    >>> ds = read_tar_shards("data/{00000..00009}.tar", tokenizer, preprocessor, 256)  # doctest: +SKIP
    """
    files = _list_files(shards, "tar")
    skipped = options.setdefault("skipped", SkippedImages())
    extensions = tuple(e.lower() for e in image_extensions)

    def samples(shard):
        shard = shard.decode() if isinstance(shard, bytes) else shard
        for name, image, caption in _tar_samples(shard, caption_extension, extensions, skipped):
            yield {"name": name, "image": image, "caption": caption}

    spec = {key: tf.TensorSpec([], tf.string) for key in ("name", "image", "caption")}

    def open_shard(shard):
        return tf.data.Dataset.from_generator(samples, args=(shard,), output_signature=spec)

    source = _interleave_files(files, open_shard, options)
    return make_pipeline(source, tokenizer, image_preprocessor, batch_size, **_stream_options(options))


class _DamagedTar(Exception):
    """A member header that is cut off or garbled, which tarfile itself takes for the end of the archive."""


class _CheckedTarInfo(tarfile.TarInfo):
    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            raise  # the zero blocks that end a tar: a genuine end
        except tarfile.EmptyHeaderError as error:
            raise _DamagedTar("the file ends without tar's end-of-archive blocks") from error
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as error:
            raise _DamagedTar(f"{error} in a member header") from error


def _tar_samples(shard, caption_extension, image_extensions, skipped):
    key, image, caption, has_caption = None, None, b"", False
    where = "member 0 (header at byte 0)"  # what is being read, for the report if it is damaged

    def finish():
        if key is None:
            return None
        if image is None:
            skipped.add(f"{shard}:{key} (no image)")
            return None
        return f"{shard}:{key}", image, caption

    try:
        with tarfile.open(shard, "r|*", tarinfo=_CheckedTarInfo) as archive:
            for index, member in enumerate(archive):
                if member.isfile():
                    base = os.path.basename(member.name)
                    stem, _, extension = base.partition(".")
                    member_key = os.path.join(os.path.dirname(member.name), stem)
                    if member_key != key:
                        sample = finish()
                        if sample:
                            yield sample
                        key, image, caption, has_caption = member_key, None, b"", False
                    extension = extension.lower()
                    where = f"member {index} ({member.name}, data at byte {member.offset_data})"
                    if extension in image_extensions:
                        image = archive.extractfile(member).read()
                    elif extension == caption_extension:
                        caption, has_caption = archive.extractfile(member).read(), True
                where = f"member {index + 1} (header at byte {archive.offset})"
    except (_DamagedTar, tarfile.TarError, OSError, EOFError) as error:
        # Keep every sample before the damage; the one being read is kept only if it is whole as far as
        # we can tell (image and caption read), since its missing member may be the caption.
        skipped.add(f"{shard} (damaged at {where}: {error}; the samples before it are kept)")
        if image is not None and has_caption:
            yield f"{shard}:{key}", image, caption
        elif key is not None:
            skipped.add(f"{shard}:{key} (incomplete: the shard is damaged inside this sample)")
        return
    sample = finish()
    if sample:
        yield sample


def read_tfrecords(shards, tokenizer, image_preprocessor, batch_size, *, image_feature="jpg",
                   caption_feature="txt", key_feature="key", **options):
    """Batches from TFRecord shards of `tf.train.Example`s (img2dataset's `tfrecord` output).

    Args:
        shards: a glob pattern, or a list of `.tfrecord` paths.
        tokenizer, image_preprocessor, batch_size, **options: as in `read_manifest`.
        image_feature: bytes feature with the encoded image (img2dataset names
            it after the encode format: `jpg`, `png`, `webp`).
        caption_feature: bytes feature with the caption.
        key_feature: bytes feature naming the sample in reports.

    Example:
    >>> ds = read_tfrecords("data/*.tfrecord", ...)  # doctest: +SKIP
    """
    files = _list_files(shards, "tfrecord")
    skipped = options.setdefault("skipped", SkippedImages())

    def samples(file):
        file = file.decode() if isinstance(file, bytes) else file
        for index, record in _tfrecord_records(file, skipped):
            try:
                feature = tf.train.Example.FromString(record).features.feature
                key, image, caption = (_bytes_feature(feature, name) for name in
                                       (key_feature, image_feature, caption_feature))
            except (DecodeError, ValueError) as error:  # the checksum is fine, the content is no Example
                skipped.add(f"{file} record {index} (not a tf.train.Example with bytes features: {error})")
                continue
            name = f"{file}:{key.decode('utf-8', 'replace')}" if key else f"{file}:record {index}"
            yield {"name": name, "image": image, "caption": caption}

    spec = {key: tf.TensorSpec([], tf.string) for key in ("name", "image", "caption")}

    def open_file(file):
        return tf.data.Dataset.from_generator(samples, args=(file,), output_signature=spec)

    source = _interleave_files(files, open_file, options)
    return make_pipeline(source, tokenizer, image_preprocessor, batch_size, **_stream_options(options))


def _tfrecord_records(file, skipped):
    """(index, bytes) per record of one file, up to any damage, which is reported with its position.

    TFRecordDataset checks each record's CRCs; a bad one raises DataLossError, which inside a pipeline
    would end the whole epoch. Iterating it here catches that per file.
    """
    index, offset = 0, 0
    records = iter(tf.data.TFRecordDataset(file))
    while True:
        try:
            record = next(records).numpy()
        except StopIteration:
            return
        except tf.errors.OpError as error:
            message = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message).strip()  # TF's op names are noise
            skipped.add(f"{file} (damaged at record {index}, byte offset {offset}: {message}; "
                        "the records before it are kept)")
            return
        yield index, record
        index, offset = index + 1, offset + len(record) + 16  # length (8), its CRC (4), data, data CRC (4)


def _bytes_feature(feature, name):
    """The first bytes value of a feature, b"" when absent (as `FixedLenFeature(default_value="")` gives)."""
    if name not in feature:
        return b""
    kind = feature[name].WhichOneof("kind")
    if kind != "bytes_list":
        raise ValueError(f"feature {name!r} is a {kind}, not a bytes_list")
    values = feature[name].bytes_list.value
    return values[0] if values else b""


def expand_braces(pattern):
    """The names a webdataset / img2dataset brace pattern stands for, in order.

    `{00000..00099}` is a zero-padded numeric range (the width of its first
    bound), `{a,b}` a list; several braces multiply out.

    Example:
    >>> expand_braces("data/{000..002}.tar")
    ['data/000.tar', 'data/001.tar', 'data/002.tar']
    >>> expand_braces("{train,val}-{0..1}.tar")
    ['train-0.tar', 'train-1.tar', 'val-0.tar', 'val-1.tar']
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        if int(last) < int(first):
            raise ValueError(f"The brace range {{{body}}} in {pattern!r} runs backwards.")
        width = len(first)
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    elif "," in body:
        choices = body.split(",")
    else:
        raise ValueError(f"{pattern!r}: braces hold a range {{000..099}} or a list {{a,b}}; got {{{body}}}.")
    return [head + choice + rest for choice in choices for rest in expand_braces(tail)]


def _list_files(shards, kind):
    """The shard files of a glob / brace pattern (or a list of them), each checked to exist."""
    if isinstance(shards, (str, os.PathLike)):
        shards = [os.fspath(shards)]
    shards = [os.fspath(f) for f in shards]
    if not shards:
        raise ValueError(f"The list of {kind} shards is empty.")
    files = []
    for pattern in shards:
        named = expand_braces(pattern)
        if any(ch in pattern for ch in "*?["):
            found = sorted(f for name in named for f in tf.io.gfile.glob(name))
            if not found:
                raise ValueError(f"No {kind} shard matches {pattern!r}.")
            files += found
            continue
        absent = [f for f in named if not tf.io.gfile.exists(f)]
        if absent and len(absent) == len(named) and len(named) > 1:
            raise ValueError(f"No {kind} shard matches {pattern!r}: none of its {len(named)} names exists "
                             f"(e.g. {named[0]!r}).")
        if absent:
            raise ValueError(f"{len(absent)} {kind} shard(s) do not exist, e.g. {absent[:3]}.")
        files += named
    return files


def _interleave_files(files, open_file, options):
    """Each host's files (or, with fewer files than hosts, its share of samples), read in parallel."""
    index, count = _shard(options.get("shard"))
    by_file = count > 1 and len(files) >= count
    if by_file:
        files = files[index::count]
    # Repeated before interleaving: the stream runs on across epochs, never drains.
    dataset = _reading_order(files, options)
    dataset = dataset.interleave(
        open_file,
        cycle_length=min(len(files), 8),
        num_parallel_calls=min(len(files), 8),
        deterministic=_is_deterministic(options.get("deterministic"), options.get("training", True),
                                        options.get("seed")),
    )
    if count > 1 and not by_file:
        dataset = dataset.shard(count, index)
    return dataset


def _reading_order(elements, options):
    """A dataset of `elements` (strings: a list, or a dict of equal-length lists) in the order a reader reads them.

    Shuffled when training, each pass anew; endless with `repeat`. With
    `repeat` and a `seed`, pass `p` is ordered by `(seed, p)` alone, not by a
    random state that all iterators of the dataset share: so an iterator made
    to check the first batches, or reading ahead in another thread, cannot
    change the stream another iterator (Keras's) sees.
    """
    training, seed, repeat = options.get("training", True), options.get("seed"), options.get("repeat")
    as_strings = lambda values: tf.constant(values, tf.string)  # noqa: E731
    elements = {k: as_strings(v) for k, v in elements.items()} if isinstance(elements, dict) else as_strings(elements)
    count = int(tf.nest.flatten(elements)[0].shape[0])
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    if not (training and count > 1):
        return dataset.repeat() if repeat else dataset
    if not repeat or seed is None:
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        return dataset.repeat() if repeat else dataset
    seed = tf.constant(seed, tf.int64)

    def one_pass(number):
        keys = tf.random.stateless_uniform([count], seed=tf.stack([seed, number]))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(keys))

    order = tf.data.Dataset.counter().flat_map(one_pass)
    return order.map(lambda i: tf.nest.map_structure(lambda values: tf.gather(values, i), elements))


def _stream_options(options):
    """The reader options `make_pipeline` takes: `repeat` becomes `endless`, the shard is already applied."""
    return dict(_without(options, "shard", "repeat"), endless=bool(options.get("repeat")))


def _is_deterministic(deterministic, training, seed):
    """`deterministic=None` means: repeatable when evaluating or seeded, as fast as possible otherwise."""
    if deterministic is None:
        return not training or seed is not None
    return bool(deterministic)


def _shard(shard):
    index, count = backend.process_index_and_count() if shard is None else shard
    if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"`shard` must be (index, count) with 0 <= index < count; got {shard!r}.")
    return index, count


def _without(options, *keys):
    return {k: v for k, v in options.items() if k not in keys}


# -- the shared pipeline ------------------------------------------------------------


class StreamPositions:
    """Where each batch of a stream ends in its source, for resuming the stream exactly.

    The source position counts the samples read (skipped ones included) since
    the stream's start, in the stream's deterministic order. A batch's end is
    the position just after its last sample, so `make_pipeline(...,
    start_position=end)` continues with the batch after it.

    Example:
    >>> positions = StreamPositions()
    >>> positions.record(0, 4, 0)
    >>> positions.end_of(0, start=0)
    4
    """

    def __init__(self):
        self._ends = {}
        self._lock = threading.Lock()

    def record(self, batch_number, end, start):
        with self._lock:
            self._ends[(int(start), int(batch_number))] = int(end)

    def end_of(self, batch_number, start):
        """The end of batch `batch_number` of the stream begun at `start`; older entries are dropped."""
        with self._lock:
            end = self._ends.get((int(start), int(batch_number)))
            for key in [k for k in self._ends if k[0] == start and k[1] < batch_number]:
                del self._ends[key]
        if end is None:
            raise ValueError(f"No position was recorded for batch {batch_number} of the stream from {start}.")
        return end


class CaptionCounter:
    """Counts the captions that the tokenizer cut to the text tower's length.

    Example:
    >>> CaptionCounter().truncated
    0
    """

    def __init__(self):
        self.truncated = 0
        self.seen = 0
        self._lock = threading.Lock()

    def add(self, seen, truncated):
        with self._lock:
            self.seen += int(seen)
            first = self.truncated == 0 and truncated > 0
            self.truncated += int(truncated)
        if first:
            warnings.warn("keras_siglip.data: captions longer than the text tower's sequence length are "
                          "truncated (kept: the first tokens and EOS); `dataset.captions.truncated` counts them.",
                          stacklevel=2)

    def __repr__(self):
        return f"CaptionCounter(seen={self.seen}, truncated={self.truncated})"


def _caption_token_counts(tokenizer, captions):
    """Tokens per caption before truncation (EOS included), or None for a tokenizer without SentencePiece."""
    lengths = getattr(tokenizer, "untruncated_lengths", None)  # SigLIPTokenizer and SigLIP2Tokenizer
    return None if lengths is None else lengths(captions)


def make_pipeline(source, tokenizer, image_preprocessor, batch_size, *, training=True,
                  shuffle_buffer=5_000, seed=None, deterministic=None, drop_remainder=True,
                  skipped=None, exact_resize=False, image_is_path=False, start_position=0,
                  positions=None, with_captions=False, endless=False):
    """Decode, augment, tokenise, batch and prefetch a dataset of samples.

    Args:
        source: a `tf.data.Dataset` of `{"name", "image", "caption"}` strings,
            `image` holding encoded bytes (or a file path with `image_is_path`).
        tokenizer: callable on a batch of strings returning `(B, L)` ids.
        image_preprocessor: a `SigLIPImagePreprocessor` (fixed-size
            `"images"`), or a `NaFlexImagePreprocessor` (`"pixel_values"`,
            `"pixel_attention_mask"` and `"spatial_shapes"` instead, for a
            SigLIP 2 NaFlex model; no augmentation).
        batch_size: int.
        training: bool. Shuffle and augment (as the preprocessor is configured).
        shuffle_buffer: int. Samples in the shuffle buffer (0: no shuffle).
        seed: int or `None`. Makes shuffling and augmentation repeatable.
        deterministic: bool or `None`. Fix the order in which parallel work
            is delivered, so two runs with the same seed see identical
            batches (somewhat slower). Needs `seed` when training. `None`
            (default): deterministic when a `seed` is given or when not
            training (evaluation batches come in file order).
        drop_remainder: bool. Drop the last, smaller batch (needed for a
            static batch size under `jit` and distribution).
        skipped: a `SkippedImages` to count unreadable images in (a fresh one
            by default; it is also the dataset's `skipped_images` attribute).
        exact_resize: bool. Keep resized pixels in float32 up to the batch,
            exactly as big_vision and `SigLIPImagePreprocessor.__call__` do.
            By default they are rounded to uint8 after resizing (as PIL, hence
            transformers, does; at most 0.004 apart in [-1, 1]) and scaled to
            float32 once per batch, as float32 pixels cost four times the
            memory traffic of uint8 ones. Images stored at the model
            resolution are exact either way.
        image_is_path: bool. `image` is a path to read.
        start_position: int, or an int64 `tf.Variable` read each time the
            dataset is iterated: skip this many source samples first (read,
            not decoded), to resume a deterministic stream where an earlier
            run left it (see `StreamPositions`).
        positions: a `StreamPositions` to record each batch's end in.
        with_captions: bool. Batches also carry the caption strings
            (`"captions"`), for zero-shot labels and reports.
        endless: bool. `source` never ends (a reader's `repeat=True`). Its
            shuffle buffer and augmentation seeds then start alike for every
            iterator, so the stream is a function of `seed` alone; a finite
            source is reshuffled and re-augmented at each iteration (epoch).

    Returns:
        A `tf.data.Dataset` of `{"images", "token_ids"}` batches (NaFlex:
        `{"pixel_values", "pixel_attention_mask", "spatial_shapes",
        "token_ids"}`), with the attributes `skipped_images` (a
        `SkippedImages`) and `captions` (a `CaptionCounter` of truncated
        captions).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    deterministic = _is_deterministic(deterministic, training, seed)
    if deterministic and training and seed is None:
        raise ValueError("deterministic=True needs a `seed` when training (for shuffling and augmentation).")
    skipped = SkippedImages() if skipped is None else skipped
    captions = CaptionCounter()
    if isinstance(image_preprocessor, NaFlexImagePreprocessor):
        pixels = _NaFlexPatches(image_preprocessor)
    else:
        pixels = _FixedSizeImages(image_preprocessor, training and image_preprocessor.augments, exact_resize)

    if training and shuffle_buffer:
        source = source.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=not endless)
    # Every sample carries its position in the stream, and its augmentation seeds are drawn
    # beside it, before any skip: a resumed stream gets the samples and seeds it would have had.
    source = source.enumerate()
    if pixels.augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=not endless)
        source = tf.data.Dataset.zip((source, seeds.batch(2)))
    else:
        source = source.map(lambda index, sample: ((index, sample), tf.zeros([2], tf.int64)))
    if isinstance(start_position, tf.Variable):
        stream = source
        start = start_position
        # The skip is made when the dataset is iterated, so it reads the variable's value then.
        source = tf.data.Dataset.from_tensors(0).flat_map(lambda _: stream.skip(start.read_value()))
        start_of = lambda: start.read_value()  # noqa: E731
    else:
        if start_position:
            source = source.skip(int(start_position))
        start_of = lambda: tf.constant(int(start_position), tf.int64)  # noqa: E731
    source = source.map(lambda indexed, seed_pair: (dict(indexed[1], index=indexed[0]), seed_pair))

    def load(sample, seed_pair, position):
        encoded = tf.io.read_file(sample["image"]) if image_is_path else sample["image"]
        return dict(pixels.load(encoded, seed_pair), caption=sample["caption"], position=position,
                    index=sample["index"])

    nothing_loaded = dict(pixels.nothing_loaded(), caption=tf.zeros([0], tf.string),
                          position=tf.zeros([0], tf.int32), index=tf.zeros([0], tf.int64))

    def record_failures(names):
        for name in names.numpy():
            skipped.add(name.decode("utf-8", "replace"))
        return True

    def load_chunk(samples, seed_pairs):
        # An error inside `load` drops just that sample (`ignore_errors`); the
        # positions missing from what the chunk delivers name the failures. One
        # small dataset per chunk rather than per image keeps this nearly free.
        slots = tf.range(tf.shape(samples["name"])[0])
        loaded = tf.data.Dataset.from_tensor_slices((samples, seed_pairs, slots)).map(load).ignore_errors()
        gathered = loaded.batch(ISOLATION_CHUNK).concatenate(tf.data.Dataset.from_tensors(nothing_loaded)).take(1)

        def report_failures(chunk):
            delivered = tf.reduce_any(tf.equal(slots[:, None], chunk["position"][None, :]), axis=1)
            failed = tf.boolean_mask(samples["name"], tf.logical_not(delivered))
            reported = tf.cond(tf.size(failed) > 0, lambda: tf.py_function(record_failures, [failed], tf.bool),
                               lambda: tf.constant(True))
            with tf.control_dependencies([reported]):
                return {key: tf.identity(chunk[key]) for key in pixels.keys + ("caption", "index")}

        return gathered.map(report_failures).unbatch()

    dataset = source.batch(ISOLATION_CHUNK).interleave(
        load_chunk, block_length=ISOLATION_CHUNK, num_parallel_calls=AUTOTUNE, deterministic=deterministic
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                            deterministic=deterministic)
    dataset = dataset.enumerate()
    sequence_length = getattr(tokenizer, "sequence_length", None)

    def count_captions(seen, truncated):
        captions.add(seen.numpy(), truncated.numpy())
        return True

    def record_position(batch_number, end, start):
        positions.record(batch_number.numpy(), end.numpy(), start.numpy())
        return True

    def to_inputs(batch_number, batch):
        done = []
        counts = _caption_token_counts(tokenizer, batch["caption"]) if sequence_length else None
        if counts is not None:
            truncated = tf.reduce_sum(tf.cast(counts > sequence_length, tf.int64))
            done.append(tf.py_function(count_captions, [tf.size(counts, tf.int64), truncated], tf.bool))
        if positions is not None:
            end = tf.reduce_max(batch["index"]) + 1
            done.append(tf.py_function(record_position, [batch_number, end, start_of()], tf.bool))
        with tf.control_dependencies(done):
            inputs = dict(pixels.batch_inputs(batch), token_ids=tf.identity(tokenizer(batch["caption"])))
        if with_captions:
            inputs["captions"] = batch["caption"]
        return inputs

    dataset = dataset.map(to_inputs, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    dataset = dataset.with_options(options)
    dataset.skipped_images = skipped
    dataset.captions = captions
    return dataset


class _FixedSizeImages:
    """`SigLIPImagePreprocessor` images: decoded, augmented when training, resized to `(S, S)`.

    They travel as uint8 (unless `exact_resize`) and are scaled to [-1, 1]
    once per batch: one vectorised op rather than one per image, and a
    quarter of the memory traffic of float32 pixels.
    """

    keys = ("images",)

    def __init__(self, preprocessor, augment, exact_resize):
        self.preprocessor, self.augment, self.exact_resize = preprocessor, augment, exact_resize
        self.size = tuple(preprocessor.image_size) + (3,)

    @tf.autograph.experimental.do_not_convert  # plain TensorFlow ops: nothing for AutoGraph to convert
    def load(self, encoded, seed_pair):
        if self.augment:
            image = self.preprocessor.decode_and_augment(encoded, seed_pair)
        else:
            image = self.preprocessor.decode(encoded)
        resize = self.preprocessor.resize if self.exact_resize else self.preprocessor.resize_to_uint8
        return {"images": tf.ensure_shape(resize(image), self.size)}

    def nothing_loaded(self):
        return {"images": tf.zeros((0,) + self.size, tf.float32 if self.exact_resize else tf.uint8)}

    def batch_inputs(self, batch):
        return {"images": self.preprocessor.scale_pixels(batch["images"])}


class _NaFlexPatches:
    """`NaFlexImagePreprocessor` patches: each image decoded, then resized and cut by the preprocessor itself.

    JPEGs are decoded with the accurate integer DCT, which gives PIL's
    pixels exactly, so a batch equals transformers' `Siglip2ImageProcessor`
    on the same files opened with PIL. No augmentation: NaFlex keeps each
    image's aspect ratio, which a random resized crop would change.
    """

    keys = INPUT_KEYS
    augment = False

    def __init__(self, preprocessor):
        self.preprocessor = preprocessor
        self.count, self.patch_dim = preprocessor.max_num_patches, 3 * preprocessor.patch_size**2

    @tf.autograph.experimental.do_not_convert  # plain TensorFlow ops: nothing for AutoGraph to convert
    def load(self, encoded, seed_pair):
        image = tf.cond(
            tf.io.is_jpeg(encoded),
            lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
        )
        values, mask, shape = tf.numpy_function(self.preprocessor.padded_patches, [image],
                                                [tf.float32, tf.int32, tf.int32], stateful=False)
        return {"pixel_values": tf.ensure_shape(values, (self.count, self.patch_dim)),
                "pixel_attention_mask": tf.ensure_shape(mask, (self.count,)),
                "spatial_shapes": tf.ensure_shape(shape, (2,))}

    def nothing_loaded(self):
        return {"pixel_values": tf.zeros((0, self.count, self.patch_dim), tf.float32),
                "pixel_attention_mask": tf.zeros((0, self.count), tf.int32),
                "spatial_shapes": tf.zeros((0, 2), tf.int32)}

    def batch_inputs(self, batch):
        return {key: batch[key] for key in self.keys}
