"""The embedded datasets (digits, shapes), their batches and their shipped vocabulary."""

import io

import numpy as np
import pytest
import sentencepiece

from keras_siglip.data import digits, shapes
from keras_siglip.data.embedded import EMBEDDED_VOCABULARY, PairBatches


@pytest.fixture(scope="module")
def digit_splits():
    return digits.load_digits("train"), digits.load_digits("test", languages=digits.LANGUAGES)


def test_digits_are_the_1797_real_scans_split_by_class(digit_splits):
    train, test = digit_splits
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (16, 16, 3) and train.images.dtype == np.float32
    assert -1.0 <= train.images.min() and train.images.max() <= 1.0
    assert np.all(train.images[..., 0] == train.images[..., 2])  # grey, replicated
    # Stratified: every class holds out about a fifth.
    for label in range(10):
        held_out = np.sum(test.labels == label) / (np.sum(test.labels == label) + np.sum(train.labels == label))
        assert 0.18 < held_out < 0.22
    # No scan is in both splits.
    train_rows = {image.tobytes() for image in train.images[..., 0]}
    overlap = sum(image.tobytes() in train_rows for image in test.images[..., 0])
    assert overlap <= 2  # sklearn's digits contain a few identical scans


def test_digit_captions_name_the_digit_and_held_out_templates_are_new(digit_splits):
    train, test = digit_splits
    assert "a photo of the number seven" in train.captions_of(np.flatnonzero(train.labels == 7)[0])
    for language in digits.LANGUAGES:
        seen = set(digits.digit_captions(3, language))
        held_out = set(digits.digit_captions(3, language, held_out=True))
        assert not seen & held_out
        assert all(digits.NUMBER_WORDS[language][3] in c or "3" in c for c in seen | held_out)
    assert len(digits.LANGUAGES) >= 5
    assert set(test.class_prompts) == set(digits.LANGUAGES)
    assert test.class_prompts["de"][7] == digits.digit_captions(7, "de", held_out=True)
    assert len(test.caption_languages) == len(test.captions_of(0))


def test_digits_reject_unknown_languages_and_splits():
    with pytest.raises(ValueError, match="languages"):
        digits.load_digits(languages=("en", "xx"))
    with pytest.raises(ValueError, match="split"):
        digits.load_digits("validation")


def test_retrieval_set_marks_every_image_of_a_caption(digit_splits):
    _, test = digit_splits
    texts, relevance = test.retrieval_set("fr")
    assert len(texts) == 30 and relevance.shape == (len(test), 30)
    column = texts.index("le nombre manuscrit 4")
    np.testing.assert_array_equal(relevance[:, column], test.labels == 4)
    assert relevance.sum(axis=1).tolist() == [3] * len(test)


def test_shapes_hold_out_colour_shape_combinations():
    train = shapes.load_shapes("train", num_images=160)
    test = shapes.load_shapes("test", num_images=40)
    held_out = {shapes.COMBINATIONS.index(c) for c in shapes.HELD_OUT_COMBINATIONS}
    assert set(test.labels) == held_out
    assert not set(train.labels) & held_out
    seen = [shapes.COMBINATIONS[label] for label in set(train.labels)]
    assert {colour for colour, _ in seen} == set(shapes.COLOURS)
    assert {shape for _, shape in seen} == set(shapes.SHAPES)
    caption = test.captions_of(0)[0]
    colour, shape = shapes.COMBINATIONS[test.labels[0]]
    assert f"{colour} {shape}" in caption
    assert len(test.class_prompts["en"]) == len(shapes.COMBINATIONS)


def test_shapes_are_drawn_where_and_in_the_colour_the_caption_says():
    image = shapes.draw_shape("red", "square", "large", "on the left", image_size=32)
    pixels = (image + 1) / 2
    red = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.3)
    assert red[:, :16].sum() > 40 and red[:, 16:].sum() == 0
    small = shapes.draw_shape("blue", "circle", "small", "at the bottom", image_size=32)
    blue = ((small + 1) / 2)[..., 2] > 0.7
    assert blue[16:].sum() > 10 and blue[:12].sum() == 0
    assert blue.sum() < red.sum()


def test_pair_batches_depend_only_on_the_global_step():
    images = np.arange(10, dtype="float32")[:, None, None, None] * np.ones((1, 2, 2, 3), "float32")
    caption_ids = np.stack([np.arange(10), np.arange(10) + 10], axis=1)
    token_ids = np.arange(20)[:, None] * np.ones((1, 3), "int32")
    batches = PairBatches(images, caption_ids, token_ids, batch_size=4, steps_per_epoch=3, seed=7)
    first_pass = np.concatenate([batches.batch(step)["images"][:, 0, 0, 0] for step in range(5)])[:10]
    assert sorted(first_pass.tolist()) == list(range(10))  # each image once per pass
    batches.epoch = 1
    resumed = PairBatches(images, caption_ids, token_ids, batch_size=4, steps_per_epoch=3, seed=7)
    resumed.epoch = 1
    for index in range(3):
        step_batch = batches.batch(3 + index)
        np.testing.assert_array_equal(resumed[index]["images"], step_batch["images"])
        np.testing.assert_array_equal(resumed[index]["token_ids"], step_batch["token_ids"])
    # Each image's caption is one of its own.
    batch = batches.batch(2)
    owners = batch["images"][:, 0, 0, 0].astype(int)
    assert np.all((batch["token_ids"][:, 0] == owners) | (batch["token_ids"][:, 0] == owners + 10))
    with pytest.raises(ValueError, match="batch_size"):
        PairBatches(images, caption_ids, token_ids, batch_size=11, steps_per_epoch=3)
    with pytest.raises(ValueError, match="captions"):
        PairBatches(images, caption_ids[:5], token_ids, batch_size=2, steps_per_epoch=3)


def test_shipped_vocabulary_covers_every_caption_and_is_reproducible():
    assert EMBEDDED_VOCABULARY.stat().st_size < 1_000_000
    processor = sentencepiece.SentencePieceProcessor(model_file=str(EMBEDDED_VOCABULARY))
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id()) == (0, 1, 2)
    corpus = digits.caption_corpus() + shapes.caption_corpus()
    ids = processor.encode(corpus)
    assert all(processor.unk_id() not in row for row in ids)
    assert max(len(row) for row in ids) <= 11  # + EOS fits the main job's 12 tokens

    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).parents[1] / "tools" / "build_embedded_vocabulary.py"
    spec = importlib.util.spec_from_file_location("build_embedded_vocabulary", script)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(builder.corpus()), model_writer=model, **builder.TRAINER_OPTIONS
    )
    assert model.getvalue() == EMBEDDED_VOCABULARY.read_bytes()
