"""Zero-shot and retrieval metrics against hand-computed values; callbacks during `fit`."""

import glob
import os

import keras
import numpy as np
import pytest
from conftest import TINY, random_pairs, tiny_siglip

from keras_siglip import evaluation
from keras_siglip.templates import CLIP_TEMPLATES, DEFAULT_TEMPLATES


def char_tokenizer(texts):
    """A stand-in tokenizer: character codes mod the tiny vocabulary, EOS-padded like SigLIP."""
    length, vocabulary = TINY["sequence_length"], TINY["vocabulary_size"]
    ids = np.ones((len(texts), length), "int32")
    for row, text in enumerate(texts):
        codes = [2 + ord(c) % (vocabulary - 2) for c in text][: length - 1]
        ids[row, : len(codes)] = codes
    return ids


# -- top-k accuracy --------------------------------------------------------------------------


def test_top_k_accuracy_counts_ties_against_the_true_class():
    scores = [
        [0.9, 0.1, 0.0],  # label 0: first
        [0.5, 0.5, 0.2],  # label 1: tied with class 0 -> second
        [0.1, 0.2, 0.3],  # label 0: third
        [0.4, 0.4, 0.4],  # label 2: three-way tie -> third
    ]
    accuracy = evaluation.top_k_accuracy(scores, [0, 1, 0, 2], ks=(1, 2, 3, 5))
    assert accuracy == {1: 0.25, 2: 0.5, 3: 1.0, 5: 1.0}


def test_a_collapsed_model_scores_zero_not_chance():
    scores = np.zeros((6, 3))
    assert evaluation.top_k_accuracy(scores, [0, 1, 2, 0, 1, 2], ks=(1,)) == {1: 0.0}


@pytest.mark.parametrize(
    "scores, labels, ks, message",
    [
        ([[0.1, 0.2]], [2], (1,), "labels must lie"),
        ([[0.1, 0.2]], [0, 1], (1,), "labels"),
        ([0.1, 0.2], [0], (1,), "scores must be"),
        ([[0.1, 0.2]], [0], (0,), "ks must be"),
    ],
)
def test_top_k_accuracy_rejects_bad_input(scores, labels, ks, message):
    with pytest.raises(ValueError, match=message):
        evaluation.top_k_accuracy(scores, labels, ks)


def test_class_embeddings_average_then_renormalise():
    prompts = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]], "float32")
    classes = evaluation.class_embeddings_from_prompts(prompts, [2, 1])
    np.testing.assert_allclose(classes, [[0.5**0.5, 0.5**0.5], [1.0, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match="prompt embeddings"):
        evaluation.class_embeddings_from_prompts(prompts, [1, 1])


# -- retrieval ---------------------------------------------------------------------------------

# With identity image embeddings, scores[i, j] is text j's i-th coordinate.
SCORES = np.array(
    [  # t0    t1   t2   t3   t4
        [0.9, 0.1, 0.8, 0.2, 0.0],  # image 0 owns t0, t1
        [0.3, 0.2, 0.5, 0.5, 0.1],  # image 1 owns t2 (tied with t3)
        [0.0, 0.7, 0.1, 0.6, 0.6],  # image 2 owns t3, t4 (beaten by t1)
    ],
    "float32",
)
OWNERS = [0, 0, 1, 2, 2]


def test_retrieval_recall_with_several_captions_per_image_and_ties():
    recall = evaluation.retrieval_recall(np.eye(3), SCORES.T, text_image_ids=OWNERS, ks=(1, 2, 3))
    # image->text ranks of the best own caption: 0, 1 (tie counts against), 1.
    assert recall["image_to_text"] == pytest.approx({1: 1 / 3, 2: 1.0, 3: 1.0})
    # text->image ranks: t0 0, t1 2, t2 1, t3 0, t4 0.
    assert recall["text_to_image"] == pytest.approx({1: 0.6, 2: 0.8, 3: 1.0})


def test_retrieval_recall_with_a_relevance_matrix():
    relevance = np.zeros((3, 5), bool)
    relevance[OWNERS, np.arange(5)] = True
    same = evaluation.retrieval_recall(np.eye(3), SCORES.T, relevance=relevance, ks=(1, 2))
    assert same == evaluation.retrieval_recall(np.eye(3), SCORES.T, text_image_ids=OWNERS, ks=(1, 2))
    relevance[0, 2] = True  # t2 also describes image 0, which ranks it first
    recall = evaluation.retrieval_recall(np.eye(3), SCORES.T, relevance=relevance, ks=(1,))
    assert recall["text_to_image"][1] == pytest.approx(0.8)
    # image 0 now also owns t2, but its best caption t0 was already first.
    assert recall["image_to_text"][1] == pytest.approx(1 / 3)


def test_retrieval_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        evaluation.retrieval_recall(np.eye(3), SCORES.T)
    with pytest.raises(ValueError, match="one image index per text"):
        evaluation.retrieval_recall(np.eye(3), SCORES.T, text_image_ids=[0, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        evaluation.retrieval_recall(np.eye(3), SCORES.T, text_image_ids=[0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="at least one relevant"):
        evaluation.retrieval_recall(np.eye(3), SCORES.T, text_image_ids=[0, 0, 0, 2, 2])


# -- the classifier on a real model --------------------------------------------------------------


def test_default_templates_are_the_80_clip_prompts_and_the_bare_name():
    assert len(CLIP_TEMPLATES) == 80 == len(set(CLIP_TEMPLATES))
    assert DEFAULT_TEMPLATES[-1] == "{}" and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


def test_zero_shot_classifier_matches_the_definition():
    model = tiny_siglip()
    images = random_pairs(6, seed=1)["images"]
    labels = np.array([0, 1, 2, 0, 1, 2])
    names = ["cat", "dog", "bird"]
    templates = ["a photo of a {}", "{}"]
    classifier = evaluation.ZeroShotClassifier(model, char_tokenizer, names, templates=templates)
    result = classifier.evaluate(images, labels, ks=(1, 2))

    prompts = [t.format(n) for n in names for t in templates]
    # The model's own forward pass (six prompts for six images) as the reference.
    reference = model.predict({"images": images, "token_ids": char_tokenizer(prompts)}, verbose=0)
    classes = reference["text_embeddings"].reshape(3, 2, -1).mean(axis=1)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    image = reference["image_embeddings"]
    np.testing.assert_allclose(classifier.class_embeddings, classes, atol=1e-5)
    expected = evaluation.top_k_accuracy(image @ classes.T, labels, ks=(1, 2))
    assert result == {"top1": expected[1], "top2": expected[2]}
    np.testing.assert_array_equal(classifier.predict(images), (image @ classes.T).argmax(axis=1))


def test_zero_shot_classifier_rejects_bad_setup():
    model = tiny_siglip()
    with pytest.raises(ValueError, match="exactly one"):
        evaluation.ZeroShotClassifier(model, char_tokenizer)
    with pytest.raises(ValueError, match="exactly one '{}'"):
        evaluation.ZeroShotClassifier(model, char_tokenizer, ["a", "b"], templates=["no slot"])
    with pytest.raises(ValueError, match="at least two classes"):
        evaluation.ZeroShotClassifier(model, char_tokenizer, class_prompts=[["only one"]])


def test_encoding_follows_the_weights_as_they_train():
    model = tiny_siglip()
    model.compile(learning_rate=1e-2)
    data = random_pairs(8, seed=2)
    before = evaluation.encode_images(model, data["images"][:5], batch_size=4)
    model.fit(data, batch_size=8, epochs=1, verbose=0)
    after = evaluation.encode_images(model, data["images"][:5], batch_size=4)
    reference = model.predict(data, batch_size=8, verbose=0)["image_embeddings"][:5]
    assert not np.allclose(before, after, atol=1e-4)
    np.testing.assert_allclose(after, reference, atol=1e-5)


# -- callbacks -------------------------------------------------------------------------------------


class _BatchLogs(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(dict(logs))


def test_callbacks_log_during_fit_like_metrics(tmp_path):
    model = tiny_siglip()
    model.compile()
    data = random_pairs(16, seed=3)
    labels = np.arange(16) % 3
    classifier = evaluation.ZeroShotClassifier(
        model, char_tokenizer, ["cat", "dog", "bird"], templates=["a {}", "{}"]
    )
    zero_shot = evaluation.ZeroShotCallback(
        classifier, data["images"], labels, ks=(1, 2), every_n_steps=3, every_n_epochs=None
    )
    texts = [f"caption {i}" for i in range(16)]
    retrieval = evaluation.RetrievalCallback(
        char_tokenizer, data["images"], texts, text_image_ids=np.arange(16), ks=(1, 5)
    )
    batch_logs = _BatchLogs()
    callbacks = [
        zero_shot,
        retrieval,
        batch_logs,
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
    ]
    history = model.fit(data, batch_size=4, epochs=2, callbacks=callbacks, verbose=0)

    for key in ("zero_shot_top1", "zero_shot_top2", "retrieval_i2t_r1", "retrieval_t2i_r5"):
        assert len(history.history[key]) == 2
        assert all(0.0 <= value <= 1.0 for value in history.history[key])
    # Every 3 steps: absent from the first two batches, present from the third on.
    assert "zero_shot_top1" not in batch_logs.seen[1] and "zero_shot_top1" in batch_logs.seen[2]
    # The last evaluation ran after the final step (step 8 is not a multiple of 3, step 6 is).
    assert retrieval.latest["retrieval_i2t_r1"] == pytest.approx(
        evaluation.retrieval_recall(
            evaluation.encode_images(model, data["images"]),
            evaluation.encode_texts(model, char_tokenizer, texts),
            text_image_ids=np.arange(16),
            ks=(1,),
        )["image_to_text"][1]
    )
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert "zero_shot_top1" in header and "retrieval_t2i_r1" in header
    assert glob.glob(os.path.join(tmp_path, "tb", "train", "events*"))


def test_callbacks_reject_bad_schedules():
    with pytest.raises(ValueError, match="every_n_steps"):
        evaluation.RetrievalCallback(char_tokenizer, np.zeros((2, 16, 16, 3)), ["a", "b"],
                                     text_image_ids=[0, 1], every_n_steps=0)
    with pytest.raises(ValueError, match="Set every_n_epochs or every_n_steps"):
        evaluation.RetrievalCallback(char_tokenizer, np.zeros((2, 16, 16, 3)), ["a", "b"],
                                     text_image_ids=[0, 1], every_n_epochs=None)


def test_evaluation_takes_reader_datasets():
    import tensorflow as tf

    model = tiny_siglip()
    pairs = random_pairs(10, seed=3)
    labels = np.arange(10) % 3
    images = tf.data.Dataset.from_tensor_slices((pairs["images"], labels)).batch(4)
    classifier = evaluation.ZeroShotClassifier(model, lambda texts: random_pairs(len(texts))["token_ids"],
                                               class_prompts=[["a"], ["b"], ["c"]])
    assert classifier.evaluate(images) == classifier.evaluate(pairs["images"], labels)
    as_dicts = images.map(lambda x, y: {"images": x, "labels": y})
    assert classifier.evaluate(as_dicts) == classifier.evaluate(pairs["images"], labels)
    dataset = tf.data.Dataset.from_tensor_slices(pairs).batch(4)
    recall = evaluation.pair_retrieval_recall(model, dataset, ks=(1, 5))
    expected = evaluation.retrieval_recall(evaluation.encode_images(model, pairs["images"]),
                                           evaluation.encode_token_ids(model, pairs["token_ids"]),
                                           text_image_ids=np.arange(10), ks=(1, 5))
    assert recall == dict(expected, pairs=10)
    with pytest.raises(ValueError, match="labels"):
        classifier.evaluate(dataset)


def test_val_prefixed_callbacks_log_to_the_validation_run(tmp_path):
    import tensorflow as tf

    model = tiny_siglip()
    model.compile()
    pairs = random_pairs(16, seed=4)
    callback = evaluation.RetrievalCallback(pairs=tf.data.Dataset.from_tensor_slices(pairs).batch(8),
                                            ks=(1,), prefix="val_retrieval_")
    board = keras.callbacks.TensorBoard(str(tmp_path))
    history = model.fit(pairs, batch_size=8, epochs=1, validation_data=pairs, callbacks=[callback, board], verbose=0)
    assert {"val_loss", "val_retrieval_i2t_r1", "val_retrieval_t2i_r1"} <= set(history.history)
    written = {}
    for run in ("train", "validation"):
        for event_file in tf.io.gfile.glob(str(tmp_path / run / "events*")):
            for event in tf.compat.v1.train.summary_iterator(event_file):
                for value in event.summary.value:
                    written.setdefault(run, set()).add(value.tag)
    assert {"epoch_retrieval_i2t_r1", "epoch_loss"} <= written["validation"]
    assert not any("retrieval" in tag for tag in written["train"])


@pytest.mark.backend_independent
def test_image_inputs_take_fixed_size_images_or_the_three_naflex_inputs_and_name_what_is_missing():
    naflex = {"pixel_values": np.zeros((3, 4, 12)), "pixel_attention_mask": np.ones((3, 4)),
              "spatial_shapes": np.ones((3, 2)), "token_ids": np.zeros((3, 5))}
    images = evaluation.image_inputs(naflex)
    assert sorted(images) == ["pixel_attention_mask", "pixel_values", "spatial_shapes"]
    assert evaluation.count_images(images) == 3
    assert evaluation.first_images(images, 2)["pixel_values"].shape == (2, 4, 12)
    with pytest.raises(ValueError, match=r"needs 'images' \(or NaFlex's .*spatial_shapes\); it has "
                                         r"\['pixel_values', 'token_ids'\]"):
        evaluation.image_inputs({"pixel_values": naflex["pixel_values"], "token_ids": naflex["token_ids"]})


def test_encode_images_takes_an_array_a_dict_of_images_or_a_dataset_alike():
    import tensorflow as tf

    model = tiny_siglip()
    images = random_pairs(3)["images"]
    expected = evaluation.encode_images(model, images)
    np.testing.assert_allclose(evaluation.encode_images(model, {"images": images}), expected, atol=1e-6)
    dataset = tf.data.Dataset.from_tensor_slices({"images": images}).batch(2)
    np.testing.assert_allclose(evaluation.encode_images(model, dataset), expected, atol=1e-6)

