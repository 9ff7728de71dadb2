"""What the embedded datasets (`digits`, `shapes`) share: their container, the
batches `fit` consumes, and the small SentencePiece vocabulary shipped for them.

The vocabulary (`EMBEDDED_VOCABULARY`) is trained on every caption and prompt
of both datasets, in all their languages, by `tools/build_embedded_vocabulary.py`
(deterministic; rerun it when a template changes). It is shipped rather than
built at first use so the first command needs neither a writable cache nor
the SentencePiece trainer, and every run sees byte-identical token ids.
"""

import dataclasses
import pathlib

import keras
import numpy as np

EMBEDDED_VOCABULARY = pathlib.Path(__file__).parent / "assets" / "embedded_vocabulary.model"


@dataclasses.dataclass
class CaptionedImages:
    """Images with several captions each, and the prompts to classify them.

    Attributes:
        images: float32 `(N, size, size, 3)` in [-1, 1].
        labels: int32 `(N,)` class of each image.
        class_names: the name of each class.
        class_captions: per class, the captions an image of that class may
            carry (for datasets whose captions are per image, use
            `image_captions` instead).
        caption_languages: the language of each entry of a class's captions.
        class_prompts: `{language: per class, the prompts for zero-shot
            classification}`.
        image_captions: optional per image, its own captions (overrides
            `class_captions`).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list
    class_captions: list
    caption_languages: list
    class_prompts: dict
    image_captions: list = None

    def __len__(self):
        return len(self.images)

    def captions_of(self, index):
        """The captions of image `index`."""
        if self.image_captions is not None:
            return self.image_captions[index]
        return self.class_captions[self.labels[index]]

    def caption_table(self):
        """`(texts, ids)`: the distinct captions, and per image the indices of its own.

        `ids` is int32 `(N, captions per image)`; tokenising `texts` once is
        all a training run needs.
        """
        texts, index = [], {}
        rows = []
        for i in range(len(self)):
            row = []
            for caption in self.captions_of(i):
                if caption not in index:
                    index[caption] = len(texts)
                    texts.append(caption)
                row.append(index[caption])
            rows.append(row)
        return texts, np.asarray(rows, "int32")

    def retrieval_set(self, language=None):
        """`(texts, relevance)`: the distinct captions (of one language, or all)
        and the boolean `(images, texts)` matrix of which caption describes which image."""
        texts, ids = self.caption_table()
        columns = range(ids.shape[1])
        if language is not None:
            columns = [c for c in columns if self.caption_languages[c] == language]
        relevance = np.zeros((len(self), len(texts)), bool)
        for column in columns:
            relevance[np.arange(len(self)), ids[:, column]] = True
        used = np.flatnonzero(relevance.any(axis=0))
        return [texts[j] for j in used], relevance[:, used]


def resize_images(images, size):
    """Bilinear resize (no antialiasing, as big_vision) of `(N, h, w, 3)` float32 images."""
    images = np.asarray(images, "float32")
    if images.shape[1:3] == (size, size):
        return images
    resized = keras.ops.image.resize(images, (size, size), interpolation="bilinear", antialias=False)
    return np.asarray(keras.ops.convert_to_numpy(resized), "float32")


class PairBatches(keras.utils.PyDataset):
    """Batches of `{"images", "token_ids"}` that depend only on the global step.

    Global step `g` reads positions `g * batch_size ...` of an endless stream
    of shuffled passes over the data (pass `p` shuffled by `seed` and `p`),
    and each image takes one of its captions chosen by `seed` and `g`. Because
    nothing depends on history, a run resumed at an epoch boundary (see
    `keras.callbacks.BackupAndRestore`) sees exactly the batches an
    uninterrupted run would: keep `epoch` in step with `fit` through
    `epoch_callback()`, and pass `shuffle=False` to `fit` (Keras would
    otherwise reorder each epoch's batches with the global NumPy RNG).

    Args:
        images: float32 `(N, H, W, 3)`.
        caption_ids: int `(N, C)`: per image, the rows of `token_ids` it may take.
        token_ids: int32 `(T, L)`: the tokenised distinct captions.
        batch_size: int.
        steps_per_epoch: int. Batches per Keras epoch.
        seed: int.
        transform: optional `transform(batch, rng) -> batch`, applied to each
            batch with a generator seeded by the step (noise studies).

    Example:
    >>> import numpy as np
    >>> batches = PairBatches(np.zeros((10, 4, 4, 3), "float32"), np.zeros((10, 1), "int32"),
    ...                       np.ones((1, 3), "int32"), batch_size=4, steps_per_epoch=5)
    >>> batches[0]["images"].shape, len(batches)
    ((4, 4, 4, 3), 5)
    """

    def __init__(self, images, caption_ids, token_ids, batch_size, steps_per_epoch, seed=0,
                 transform=None):
        super().__init__()
        if len(images) != len(caption_ids):
            raise ValueError(
                f"Every image needs its captions: got {len(images)} images and "
                f"{len(caption_ids)} rows of caption ids."
            )
        if not 0 < batch_size <= len(images):
            raise ValueError(
                f"batch_size must lie in [1, {len(images)}] (the number of images); got {batch_size}."
            )
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive; got {steps_per_epoch}.")
        self.images = images
        self.caption_ids = np.asarray(caption_ids)
        self.token_ids = np.asarray(token_ids, "int32")
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.transform = transform
        self.epoch = 0
        self._order_cache = {}

    def __len__(self):
        return self.steps_per_epoch

    def _order(self, data_pass):
        if data_pass not in self._order_cache:
            # Two passes at most are live: the one a batch ends and the next.
            self._order_cache = {p: o for p, o in self._order_cache.items() if p == data_pass - 1}
            self._order_cache[data_pass] = np.random.default_rng([self.seed, data_pass]).permutation(
                len(self.images)
            )
        return self._order_cache[data_pass]

    def batch(self, step):
        """The batch of global step `step`."""
        count = len(self.images)
        positions = step * self.batch_size + np.arange(self.batch_size)
        indices = np.array([self._order(p // count)[p % count] for p in positions])
        rng = np.random.default_rng([self.seed, step, 1])
        choice = rng.integers(0, self.caption_ids.shape[1], self.batch_size)
        batch = {
            "images": self.images[indices],
            "token_ids": self.token_ids[self.caption_ids[indices, choice]],
        }
        if self.transform is not None:
            batch = self.transform(batch, np.random.default_rng([self.seed, step, 2]))
        return batch

    def __getitem__(self, index):
        return self.batch(self.epoch * self.steps_per_epoch + index)

    def epoch_callback(self):
        """A callback that tells these batches which epoch `fit` is in."""
        batches = self

        class _FollowEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                batches.epoch = epoch

        return _FollowEpoch()
