"""SigLIP2Tokenizer against transformers' Siglip2Tokenizer and big_vision's SigLIP 2 rules."""

import json
import os

import keras
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from gemma_vocabulary import (
    HARD_TEXTS, transformers_siglip2_tokenizer, write_gemma_spm, write_transformers_tokenizer,
)
from keras_siglip import SigLIP2Tokenizer, SigLIPTokenizer

SEQUENCE_LENGTH = 24


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    return write_gemma_spm(str(tmp_path_factory.mktemp("gemma") / "tokenizer.model"))


@pytest.fixture(scope="module")
def hf_folder(spm_file, tmp_path_factory):
    pytest.importorskip("transformers")
    return write_transformers_tokenizer(spm_file, str(tmp_path_factory.mktemp("hf_tokenizer")))


def _ids(tokenizer, texts):
    return keras.ops.convert_to_numpy(tokenizer(texts))


def test_matches_transformers_siglip2_tokenizer(spm_file, hf_folder):
    reference = transformers_siglip2_tokenizer(hf_folder)
    for length in (SEQUENCE_LENGTH, 64):
        tokenizer = SigLIP2Tokenizer(spm_file, sequence_length=length)
        expected = reference(HARD_TEXTS, padding="max_length", truncation=True, max_length=length)["input_ids"]
        np.testing.assert_array_equal(_ids(tokenizer, HARD_TEXTS), np.array(expected))
        # One at a time too (no batch padding to hide behind).
        for text, row in zip(HARD_TEXTS, expected):
            np.testing.assert_array_equal(_ids(tokenizer, text), row)


def big_vision_ids(processor, text, length):
    """big_vision's `lower | tok(length, model="gemma", bos="no", eos="sticky")` in plain Python."""
    text = text.encode("utf-8").lower().decode("utf-8")  # tf.strings.lower: ASCII letters only
    tokens = processor.encode(text) + [processor.eos_id()]
    if len(tokens) >= length:
        return tokens[: length - 1] + tokens[-1:]
    return tokens + [processor.pad_id()] * (length - len(tokens))


def test_big_vision_rules(spm_file):
    processor = sentencepiece.SentencePieceProcessor(model_file=spm_file)
    assert (processor.pad_id(), processor.eos_id(), processor.bos_id(), processor.unk_id()) == (0, 1, 2, 3)
    tokenizer = SigLIP2Tokenizer(spm_file, sequence_length=SEQUENCE_LENGTH, lowercase=True)
    ids = _ids(tokenizer, HARD_TEXTS)
    expected = [big_vision_ids(processor, text, SEQUENCE_LENGTH) for text in HARD_TEXTS]
    np.testing.assert_array_equal(ids, np.array(expected))
    # The rules themselves: no BOS anywhere; the empty text is EOS then Gemma's <pad> (0).
    default = _ids(SigLIP2Tokenizer(spm_file, sequence_length=SEQUENCE_LENGTH), HARD_TEXTS)
    assert not (default == 2).any()
    np.testing.assert_array_equal(default[HARD_TEXTS.index("")], [1] + [0] * (SEQUENCE_LENGTH - 1))
    long_row = default[9]  # over-long: cut, its last slot EOS ("sticky"), no padding
    assert long_row[-1] == 1 and (long_row[:-1] != 1).all() and (long_row != 0).all()
    lengths = [(row != 0).sum() for row in default]
    assert all(row[n - 1] == 1 for row, n in zip(default, lengths))  # EOS right before the padding


def test_lowercasing_modes(spm_file):
    per_character = SigLIP2Tokenizer(spm_file, sequence_length=SEQUENCE_LENGTH)
    ascii_only = SigLIP2Tokenizer(spm_file, sequence_length=SEQUENCE_LENGTH, lowercase=True)
    python = SigLIP2Tokenizer(spm_file, sequence_length=SEQUENCE_LENGTH, lowercase="unicode")
    processor = sentencepiece.SentencePieceProcessor(model_file=spm_file)
    sigma = "ΟΔΟΣ"
    assert per_character.detokenize(per_character(sigma)) == "οδοσ"  # tokenizers' Lowercase
    assert python.detokenize(python(sigma)) == sigma.lower() == "οδος"  # str.lower: final sigma
    assert ascii_only.detokenize(ascii_only("CAFÉ")) == "cafÉ"  # tf.strings.lower
    assert processor.decode(processor.encode("café")) == per_character.detokenize(per_character("CAFÉ"))


def test_shapes_inputs_and_tf_data(spm_file):
    tokenizer = SigLIP2Tokenizer(spm_file, sequence_length=SEQUENCE_LENGTH)
    batch = _ids(tokenizer, HARD_TEXTS)
    assert batch.dtype == np.int32 and batch.shape == (len(HARD_TEXTS), SEQUENCE_LENGTH)
    assert tuple(tokenizer(HARD_TEXTS[1]).shape) == (SEQUENCE_LENGTH,)
    np.testing.assert_array_equal(_ids(tokenizer, tf.constant(HARD_TEXTS)), batch)
    np.testing.assert_array_equal(_ids(tokenizer, np.array(HARD_TEXTS)), batch)
    # Inside tf.data (graph mode, whatever the backend), batched before or after.
    dataset = tf.data.Dataset.from_tensor_slices(HARD_TEXTS).batch(len(HARD_TEXTS)).map(tokenizer)
    np.testing.assert_array_equal(next(iter(dataset)).numpy(), batch)
    unbatched = tf.data.Dataset.from_tensor_slices(HARD_TEXTS).map(tokenizer).batch(len(HARD_TEXTS))
    np.testing.assert_array_equal(next(iter(unbatched)).numpy(), batch)
    assert tokenizer.detokenize(tokenizer("Two DOGS 🐶")) == "two dogs 🐶"
    assert tokenizer.padding_id == 0 and tokenizer.eos_id == 1


def test_bad_arguments(spm_file):
    with pytest.raises(ValueError, match="sequence_length"):
        SigLIP2Tokenizer(spm_file, sequence_length=0)
    with pytest.raises(ValueError, match="lowercase"):
        SigLIP2Tokenizer(spm_file, lowercase="title")
    with pytest.raises(ValueError, match="pad_id"):
        SigLIP2Tokenizer(spm_file, pad_id=100_000)
    with pytest.raises(ValueError, match="SigLIP2Tokenizer takes strings"):
        SigLIP2Tokenizer(spm_file)(np.array([1, 2]))


def test_config_and_preset_round_trip(spm_file, tmp_path):
    tokenizer = SigLIP2Tokenizer(spm_file, sequence_length=SEQUENCE_LENGTH)
    config = tokenizer.get_config()
    assert {k: config[k] for k in ("sequence_length", "lowercase", "pad_id")} == {
        "sequence_length": SEQUENCE_LENGTH, "lowercase": "per_character", "pad_id": None}
    restored = SigLIP2Tokenizer.from_config(config)
    restored.set_proto(spm_file)
    np.testing.assert_array_equal(_ids(restored, HARD_TEXTS), _ids(tokenizer, HARD_TEXTS))
    tokenizer.save_to_preset(str(tmp_path))
    with open(tmp_path / "config.json", "w") as file:
        json.dump({"module": "keras_siglip.models.siglip.siglip_model", "class_name": "SigLIP", "config": {},
                   "registered_name": "keras_siglip>SigLIP"}, file)
    assert os.path.exists(tmp_path / "assets" / "tokenizer" / "vocabulary.spm")
    for loaded in (SigLIP2Tokenizer.from_preset(str(tmp_path)), SigLIPTokenizer.from_preset(str(tmp_path))):
        assert type(loaded) is SigLIP2Tokenizer
        np.testing.assert_array_equal(_ids(loaded, HARD_TEXTS), _ids(tokenizer, HARD_TEXTS))
