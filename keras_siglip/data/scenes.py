"""Two-object scenes with full captions: a procedural set for contrastive studies.

Each 32 x 32 image holds two shapes, each with a colour, a shape, a size and
one of nine positions on a 3 x 3 grid, and one caption describes both in full,
left to right and top to bottom:
"a small red circle at the top left, a large blue square in the middle".
That makes about 57,000 distinct scenes, so a training batch holds almost no
two equal captions: the regime of web image-text data the SigLIP paper trains
on, unlike `digits` or `shapes`, whose class-template captions repeat within
every batch and are wrongly counted as negatives by both contrastive losses.

Twenty of the 190 pairs of colour-shape objects (`HELD_OUT_PAIRS`) never occur
together in the training split; the `test` split holds only them. Every object
in it was seen in training, but never beside the other, so retrieval on it
measures composition, not memory. The `val` split draws fresh scenes of the
training pairs. Labels index `PAIRS` (unordered pairs of colour-shape objects),
for zero-shot classification with `class_prompts` (chance 1 / 190).

The words are those of `shapes`, so the shipped `EMBEDDED_VOCABULARY` covers
them (17 tokens and EOS per caption at most).
"""

import itertools

import numpy as np

from keras_siglip.data.embedded import CaptionedImages
from keras_siglip.data.shapes import COLOURS, SHAPES, _mask

SIZES = {"small": 0.08, "large": 0.14}  # radius as a fraction of the image side
POSITIONS = {  # (row, column) of the cell centre, as fractions; in reading order
    "at the top left": (1 / 6, 1 / 6),
    "at the top": (1 / 6, 3 / 6),
    "at the top right": (1 / 6, 5 / 6),
    "on the left": (3 / 6, 1 / 6),
    "in the middle": (3 / 6, 3 / 6),
    "on the right": (3 / 6, 5 / 6),
    "at the bottom left": (5 / 6, 1 / 6),
    "at the bottom": (5 / 6, 3 / 6),
    "at the bottom right": (5 / 6, 5 / 6),
}
OBJECTS = [(colour, shape) for colour in COLOURS for shape in SHAPES]
PAIRS = list(itertools.combinations(OBJECTS, 2))
HELD_OUT_PAIRS = tuple(
    PAIRS[i] for i in sorted(np.random.default_rng(19).choice(len(PAIRS), 20, replace=False))
)
SPLIT_SIZES = {"train": 20_000, "val": 1_000, "test": 1_000}
MAX_CAPTION_TOKENS = 18  # 17 pieces of the embedded vocabulary and EOS


def describe(objects):
    """The caption of a scene: `objects` are `(colour, shape, size, position)`, in any order."""
    ordered = sorted(objects, key=lambda o: list(POSITIONS).index(o[3]))
    return ", ".join(f"a {size} {colour} {shape} {position}" for colour, shape, size, position in ordered)


def draw_scene(objects, image_size=32, rng=None):
    """One float32 `(image_size, image_size, 3)` image in [-1, 1] of `(colour, shape, size, position)` objects.

    Example:
    >>> draw_scene([("red", "circle", "small", "at the top left"),
    ...             ("blue", "square", "large", "in the middle")]).shape
    (32, 32, 3)
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    image = rng.uniform(0.0, 0.15, (image_size, image_size, 3))
    grid = np.arange(image_size) + 0.5
    for colour, shape, size, position in objects:
        centre_row, centre_column = POSITIONS[position]
        jitter = rng.uniform(-0.03, 0.03, 2) * image_size
        rows = grid[:, None] - (centre_row * image_size + jitter[0])
        columns = grid[None, :] - (centre_column * image_size + jitter[1])
        radius = SIZES[size] * image_size * rng.uniform(0.9, 1.1)
        value = np.clip(np.array(COLOURS[colour]) + rng.uniform(-0.05, 0.05, 3), 0, 1)
        image[_mask(shape, rows, columns, radius)] = value
    return (image * 2 - 1).astype("float32")


def _random_scene(pair, rng):
    cells = rng.choice(len(POSITIONS), 2, replace=False)
    sizes = rng.integers(len(SIZES), size=2)
    order = rng.permutation(2)  # which object of the pair takes which cell
    return [
        (*pair[order[k]], list(SIZES)[sizes[k]], list(POSITIONS)[cells[k]])
        for k in range(2)
    ]


def load_scenes(split="train", num_images=None, image_size=32, seed=0):
    """A split of the two-object scenes, as a `CaptionedImages` with one caption per image.

    Args:
        split: `"train"` and `"val"` (scenes of the 170 training pairs) or
            `"test"` (only the 20 `HELD_OUT_PAIRS`).
        num_images: int. Defaults to `SPLIT_SIZES[split]`.
        image_size: int.
        seed: int. Each split draws from its own stream.

    Example:
    >>> data = load_scenes("test", num_images=4)
    >>> data.images.shape, data.captions_of(0)[0].count(", a ")
    ((4, 32, 32, 3), 1)
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be one of {sorted(SPLIT_SIZES)}; got {split!r}.")
    num_images = SPLIT_SIZES[split] if num_images is None else num_images
    if num_images < 1:
        raise ValueError(f"num_images must be positive; got {num_images}.")
    held_out = set(HELD_OUT_PAIRS)
    allowed = [p for p in PAIRS if (p in held_out) == (split == "test")]
    rng = np.random.default_rng([seed, list(SPLIT_SIZES).index(split)])
    images, labels, captions = [], [], []
    for _ in range(num_images):
        pair = allowed[rng.integers(len(allowed))]
        objects = _random_scene(pair, rng)
        images.append(draw_scene(objects, image_size, rng))
        labels.append(PAIRS.index(pair))
        captions.append([describe(objects)])
    class_prompts = [[f"a {a} {b}, a {c} {d}", f"a {c} {d}, a {a} {b}"] for (a, b), (c, d) in PAIRS]
    return CaptionedImages(
        images=np.stack(images),
        labels=np.asarray(labels, "int32"),
        class_names=[f"{a} {b} and {c} {d}" for (a, b), (c, d) in PAIRS],
        class_captions=None,
        caption_languages=["en"],
        class_prompts={"en": class_prompts},
        image_captions=captions,
    )


def duplicate_caption_rate(caption_ids, batch_size, batches=200, seed=0):
    """Mean fraction of a random batch's pairs whose caption another pair of the batch also has.

    These are the pairs a contrastive loss wrongly pushes apart. `caption_ids`
    is `(N,)` or `(N, C)`: per image, the ids of its captions, as
    `CaptionedImages.caption_table` gives; each image takes one of its
    captions at random, as `PairBatches` does.

    Example:
    >>> duplicate_caption_rate([0, 0, 1, 2], batch_size=4)
    0.5
    """
    ids = np.asarray(caption_ids)
    ids = ids[:, None] if ids.ndim == 1 else ids
    if not 0 < batch_size <= len(ids):
        raise ValueError(f"batch_size must lie in [1, {len(ids)}]; got {batch_size}.")
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(batches):
        rows = rng.choice(len(ids), batch_size, replace=False)
        batch = ids[rows, rng.integers(ids.shape[1], size=batch_size)]
        _, inverse, counts = np.unique(batch, return_inverse=True, return_counts=True)
        rates.append(np.mean(counts[inverse] > 1))
    return float(np.mean(rates))
