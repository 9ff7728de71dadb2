"""The two-object scenes: determinism, caption uniqueness, the held-out pairs, shapes and tokens."""

import numpy as np
import pytest

from keras_siglip.data import scenes
from keras_siglip.data.embedded import EMBEDDED_VOCABULARY

pytestmark = pytest.mark.backend_independent


def test_same_seed_same_scenes_other_seed_other_scenes():
    first = scenes.load_scenes("train", num_images=50, seed=3)
    again = scenes.load_scenes("train", num_images=50, seed=3)
    other = scenes.load_scenes("train", num_images=50, seed=4)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.image_captions == again.image_captions
    assert first.image_captions != other.image_captions


def test_shapes_dtypes_and_value_range():
    data = scenes.load_scenes("val", num_images=12, image_size=24)
    assert data.images.shape == (12, 24, 24, 3) and data.images.dtype == np.float32
    assert data.images.min() >= -1 and data.images.max() <= 1
    assert data.labels.shape == (12,) and data.labels.dtype == np.int32
    assert len(data.class_prompts["en"]) == len(scenes.PAIRS) == 190
    assert all(len(captions) == 1 for captions in data.image_captions)


def test_captions_are_nearly_unique_and_rarely_repeat_within_a_batch():
    data = scenes.load_scenes("train", num_images=5000)
    texts, ids = data.caption_table()
    assert len(texts) / len(data) > 0.9
    assert scenes.duplicate_caption_rate(ids, 64, batches=50) < 0.01
    # Class-template captions, as in digits, repeat in almost every batch.
    assert scenes.duplicate_caption_rate(np.arange(64) % 10, 64, batches=5) == 1.0


def test_duplicate_caption_rate_counts_every_pair_of_a_repeated_caption():
    assert scenes.duplicate_caption_rate([5, 5, 5, 1, 2, 3], batch_size=6, batches=3) == 0.5
    assert scenes.duplicate_caption_rate(np.arange(8), batch_size=8) == 0.0
    with pytest.raises(ValueError, match="batch_size"):
        scenes.duplicate_caption_rate([1, 2], batch_size=3)


def _object_pairs(data):
    """The unordered pair of (colour, shape) objects each caption names."""
    pairs = set()
    for (caption,) in data.image_captions:
        objects = [tuple(part.split(" ")[2:4]) for part in caption.split(", ")]
        pairs.add(tuple(sorted(objects, key=scenes.OBJECTS.index)))
    return pairs


def test_held_out_pairs_never_occur_in_training_and_are_all_the_test_holds():
    train = scenes.load_scenes("train", num_images=4000)
    test = scenes.load_scenes("test", num_images=400)
    held_out = set(scenes.HELD_OUT_PAIRS)
    assert len(held_out) == 20
    assert not _object_pairs(train) & held_out
    assert _object_pairs(test) == held_out
    assert not set(train.caption_table()[0]) & set(test.caption_table()[0])
    # Each object of a held-out pair is seen in training, beside other objects.
    seen_objects = {o for pair in _object_pairs(train) for o in pair}
    assert seen_objects == set(scenes.OBJECTS)
    assert {scenes.PAIRS[label] for label in test.labels} == held_out


def test_caption_names_what_is_drawn():
    objects = [("blue", "square", "large", "in the middle"), ("red", "circle", "small", "at the top left")]
    assert scenes.describe(objects) == (
        "a small red circle at the top left, a large blue square in the middle"
    )
    image = (scenes.draw_scene(objects, rng=np.random.default_rng(0)) + 1) / 2
    centre, corner = image[16, 16], image[5, 5]
    np.testing.assert_allclose(centre, scenes.COLOURS["blue"], atol=0.06)
    np.testing.assert_allclose(corner, scenes.COLOURS["red"], atol=0.06)
    assert image[16, 5].max() < 0.16  # the empty left cell is background


def test_captions_fit_the_embedded_vocabulary_without_unknown_pieces():
    import sentencepiece

    vocabulary = sentencepiece.SentencePieceProcessor(model_file=str(EMBEDDED_VOCABULARY))
    texts = scenes.load_scenes("train", num_images=500).caption_table()[0]
    pieces = [vocabulary.encode(text) for text in texts]
    assert max(len(p) for p in pieces) + 1 <= scenes.MAX_CAPTION_TOKENS
    assert not any(vocabulary.unk_id() in p for p in pieces)


def test_bad_split_and_size_are_refused():
    with pytest.raises(ValueError, match="split"):
        scenes.load_scenes("validation")
    with pytest.raises(ValueError, match="num_images"):
        scenes.load_scenes("test", num_images=0)
