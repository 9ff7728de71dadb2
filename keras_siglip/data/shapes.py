"""Coloured shapes at positions: a procedural set for compositional generalisation.

Each image holds one shape (circle, square, triangle, diamond) of one colour,
small or large, at one of five positions, captioned like "a small red circle
on the left". Four colour-shape combinations (one per shape and per colour)
never occur in training: the test split holds only them, so zero-shot accuracy
on it measures whether the model composes colour and shape words it has only
seen apart.
"""

import numpy as np

from keras_siglip.data.embedded import CaptionedImages

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "purple": (0.6, 0.1, 0.8),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.14, "large": 0.24}  # radius as a fraction of the image side
POSITIONS = {
    "on the left": (0.5, 0.25),  # (row, column) of the centre, as fractions
    "on the right": (0.5, 0.75),
    "at the top": (0.25, 0.5),
    "at the bottom": (0.75, 0.5),
    "in the middle": (0.5, 0.5),
}
HELD_OUT_COMBINATIONS = (
    ("blue", "circle"),
    ("yellow", "square"),
    ("red", "triangle"),
    ("green", "diamond"),
)
CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} {position}",
    "{size} {colour} {shape}, {position}",
    "a {colour} {shape}",
)
COMBINATIONS = [(colour, shape) for colour in COLOURS for shape in SHAPES]


def _mask(shape, rows, columns, radius):
    if shape == "circle":
        return rows**2 + columns**2 <= radius**2
    if shape == "square":
        return np.maximum(abs(rows), abs(columns)) <= 0.8 * radius
    if shape == "triangle":  # apex up
        return (rows >= -radius) & (rows <= radius) & (abs(columns) <= (rows + radius) / 2)
    return abs(rows) + abs(columns) <= radius  # diamond


def draw_shape(colour, shape, size, position, image_size=32, rng=None):
    """One float32 `(image_size, image_size, 3)` image in [-1, 1].

    Example:
    >>> draw_shape("red", "circle", "small", "on the left").shape
    (32, 32, 3)
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    centre_row, centre_column = POSITIONS[position]
    jitter = rng.uniform(-0.04, 0.04, 2) * image_size
    grid = np.arange(image_size) + 0.5
    rows = grid[:, None] - (centre_row * image_size + jitter[0])
    columns = grid[None, :] - (centre_column * image_size + jitter[1])
    radius = SIZES[size] * image_size * rng.uniform(0.9, 1.1)
    image = rng.uniform(0.0, 0.15, (image_size, image_size, 3))
    colour_value = np.clip(np.array(COLOURS[colour]) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    image[_mask(shape, rows, columns, radius)] = colour_value
    return (image * 2 - 1).astype("float32")


def load_shapes(split="train", num_images=None, image_size=32, seed=0):
    """The compositional shapes split, as a `CaptionedImages`.

    Args:
        split: `"train"` (the 16 seen colour-shape combinations) or `"test"`
            (only the 4 of `HELD_OUT_COMBINATIONS`).
        num_images: int. Defaults to 3,200 for train and 400 for test.
        image_size: int.
        seed: int. The test split draws from a different stream than train.

    Labels index `COMBINATIONS` (all 20 colour-shape pairs), so a classifier
    over every combination has chance level 1/20.

    Example:
    >>> data = load_shapes("test", num_images=8)
    >>> sorted({data.class_names[label] for label in data.labels}) # doctest: +ELLIPSIS
    ['blue circle', ...]
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    num_images = num_images or (3200 if split == "train" else 400)
    allowed = [
        combination
        for combination in COMBINATIONS
        if (combination in HELD_OUT_COMBINATIONS) == (split == "test")
    ]
    rng = np.random.default_rng([seed, split == "test"])
    images, labels, captions = [], [], []
    for i in range(num_images):
        colour, shape = allowed[i % len(allowed)]
        size = list(SIZES)[rng.integers(len(SIZES))]
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        images.append(draw_shape(colour, shape, size, position, image_size, rng))
        labels.append(COMBINATIONS.index((colour, shape)))
        fields = dict(size=size, colour=colour, shape=shape, position=position)
        captions.append([template.format(**fields) for template in CAPTION_TEMPLATES])
    class_prompts = [
        [f"a {colour} {shape}"]
        + [f"a {size} {colour} {shape} {position}" for size in SIZES for position in POSITIONS]
        for colour, shape in COMBINATIONS
    ]
    return CaptionedImages(
        images=np.stack(images),
        labels=np.asarray(labels, "int32"),
        class_names=[f"{colour} {shape}" for colour, shape in COMBINATIONS],
        class_captions=None,
        caption_languages=["en"] * len(CAPTION_TEMPLATES),
        class_prompts={"en": class_prompts},
        image_captions=captions,
    )


def caption_corpus():
    """Every caption and prompt this dataset can produce (for the vocabulary)."""
    fields = [
        dict(size=size, colour=colour, shape=shape, position=position)
        for size in SIZES
        for colour, shape in COMBINATIONS
        for position in POSITIONS
    ]
    return sorted({template.format(**f) for template in CAPTION_TEMPLATES for f in fields})
