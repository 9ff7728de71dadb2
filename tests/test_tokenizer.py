"""SigLIPTokenizer against transformers' SiglipTokenizer and big_vision's rules."""

import json
import os

import keras
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from keras_siglip import SigLIPTokenizer

SEQUENCE_LENGTH = 16

_WORDS = (
    "a photo of the cat dog bird car tree house red blue green small large on in with next to running "
    "sitting two three people man woman child street beach mountain snow water field city night"
).split()
_FOREIGN = [
    "café crème brûlée à noël", "über grüße aus münchen", "el niño está en la playa",
    "привет мир кошка собака", "東京タワーの写真です", "一只猫坐在桌子上", "φωτογραφία ενός σκύλου",
    "صورة قطة على الطاولة", "CAFÉ CRÈME", "ПРИВЕТ МИР",
]
TEXTS = [
    "A photo of a Cat.",
    "Two DOGS running on the beach, next to the water!",
    "Café CRÈME brûlée à Noël",
    "Привет, МИР: кошка",
    "東京タワーの写真です。",
    "φωτογραφία ενός σκύλου",
    "Hello,   world!!  (a \"test\")\t\nwith\u00a0spaces ",
    " ".join(["a red car next to a green tree in the city at night"] * 6),  # long: cut
    "",
    "   ",
    "?!",
]


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    """A unigram SentencePiece model with big_vision's special ids (pad 0, EOS 1, unk 2)."""
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(_WORDS, size=rng.integers(3, 12))) for _ in range(300)]
    sentences += _FOREIGN * 5
    path = str(tmp_path_factory.mktemp("spm") / "spiece.model")
    with open(path, "wb") as file:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=file,
            vocab_size=150,
            character_coverage=1.0,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            minloglevel=2,
        )
    return path


def big_vision_ids(processor, text, max_len, lower=True):
    """big_vision's `tokenize(max_len, eos="sticky", pad_value=1)`, re-implemented in plain Python."""
    data = text.encode("utf-8")
    if lower:
        data = data.lower()  # bytes.lower(), like tf.strings.lower: ASCII letters only
    tokens = processor.encode(data.decode("utf-8")) + [processor.eos_id()]
    if len(tokens) >= max_len:
        return tokens[: max_len - 1] + tokens[-1:]
    return tokens + [processor.eos_id()] * (max_len - len(tokens))


def test_matches_big_vision_rules(spm_file):
    processor = sentencepiece.SentencePieceProcessor(model_file=spm_file)
    tokenizer = SigLIPTokenizer(spm_file, sequence_length=SEQUENCE_LENGTH)
    ids = keras.ops.convert_to_numpy(tokenizer(TEXTS))
    assert ids.dtype == np.int32 and ids.shape == (len(TEXTS), SEQUENCE_LENGTH)
    expected = np.array([big_vision_ids(processor, t, SEQUENCE_LENGTH) for t in TEXTS])
    np.testing.assert_array_equal(ids, expected)
    # The rules themselves: EOS last on every row; an empty text is EOS then EOS padding.
    assert (ids[:, -1] == 1).all()
    np.testing.assert_array_equal(ids[TEXTS.index("")], np.ones(SEQUENCE_LENGTH))
    long_row = ids[7]
    assert (long_row[:-1] != 1).all() and long_row[-1] == 1  # cut, with a sticky EOS
    # ASCII-only lowercasing, as big_vision's tf.strings.lower: "CRÈME" keeps its È.
    assert "È" in tokenizer.detokenize(ids[2]) and "crème" not in tokenizer.detokenize(ids[2])


def test_lowercase_off_and_pad_id(spm_file):
    processor = sentencepiece.SentencePieceProcessor(model_file=spm_file)
    tokenizer = SigLIPTokenizer(spm_file, sequence_length=SEQUENCE_LENGTH, lowercase=False)
    ids = keras.ops.convert_to_numpy(tokenizer(TEXTS[:3]))
    expected = [big_vision_ids(processor, t, SEQUENCE_LENGTH, lower=False) for t in TEXTS[:3]]
    np.testing.assert_array_equal(ids, expected)
    padded = SigLIPTokenizer(spm_file, sequence_length=SEQUENCE_LENGTH, pad_id=0)("a cat")
    padded = keras.ops.convert_to_numpy(padded)
    body = processor.encode("a cat")
    np.testing.assert_array_equal(padded[: len(body) + 1], body + [1])
    assert (padded[len(body) + 1 :] == 0).all()


def test_matches_transformers_siglip_tokenizer(spm_file):
    transformers = pytest.importorskip("transformers")
    reference = transformers.SiglipTokenizer(vocab_file=spm_file)
    tokenizer = SigLIPTokenizer(
        spm_file, sequence_length=SEQUENCE_LENGTH, lowercase="unicode", canonicalize=True
    )
    ids = keras.ops.convert_to_numpy(tokenizer(TEXTS))
    expected = reference(
        TEXTS, padding="max_length", truncation=True, max_length=SEQUENCE_LENGTH
    )["input_ids"]
    np.testing.assert_array_equal(ids, np.array(expected))


def test_shapes_inputs_and_tf_data(spm_file):
    tokenizer = SigLIPTokenizer(spm_file, sequence_length=SEQUENCE_LENGTH)
    batch = keras.ops.convert_to_numpy(tokenizer(TEXTS[:4]))
    single = tokenizer(TEXTS[1])
    assert tuple(single.shape) == (SEQUENCE_LENGTH,)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(single), batch[1])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tokenizer(tf.constant(TEXTS[:4]))), batch)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(tokenizer(np.array(TEXTS[:4]))), batch)
    # Inside tf.data (graph mode, any backend) the ids are the same.
    dataset = tf.data.Dataset.from_tensor_slices(TEXTS[:4]).batch(4).map(tokenizer)
    np.testing.assert_array_equal(next(iter(dataset)).numpy(), batch)
    unbatched = tf.data.Dataset.from_tensor_slices(TEXTS[:4]).map(tokenizer).batch(4)
    np.testing.assert_array_equal(next(iter(unbatched)).numpy(), batch)
    texts = ["Two dogs running on the beach", "a photo of a cat"]
    assert tokenizer.detokenize(tokenizer(texts[0])) == texts[0].lower()
    assert list(tokenizer.detokenize(tokenizer(texts))) == [t.lower() for t in texts]
    assert tokenizer.vocabulary_size() == 150 and tokenizer.eos_id == 1


def test_bad_arguments(spm_file):
    with pytest.raises(ValueError, match="sequence_length"):
        SigLIPTokenizer(spm_file, sequence_length=0)
    with pytest.raises(ValueError, match="lowercase"):
        SigLIPTokenizer(spm_file, lowercase="title")
    with pytest.raises(ValueError, match="pad_id"):
        SigLIPTokenizer(spm_file, pad_id=10_000)
    tokenizer = SigLIPTokenizer(spm_file, sequence_length=8)
    with pytest.raises(ValueError, match="1-D batch of strings"):
        tokenizer([["a"], ["b"]])
    with pytest.raises(ValueError, match="strings"):
        tokenizer(np.array([1, 2]))


def test_config_and_preset_round_trip(spm_file, tmp_path):
    tokenizer = SigLIPTokenizer(
        spm_file, sequence_length=12, lowercase="unicode", canonicalize=True, pad_id=0
    )
    config = tokenizer.get_config()
    assert {k: config[k] for k in ("sequence_length", "lowercase", "canonicalize", "pad_id")} == {
        "sequence_length": 12, "lowercase": "unicode", "canonicalize": True, "pad_id": 0
    }
    # keras-hub's preset layout: tokenizer.json + assets/tokenizer/vocabulary.spm.
    tokenizer.save_to_preset(str(tmp_path))
    assert os.path.exists(tmp_path / "tokenizer.json")
    assert os.path.exists(tmp_path / "assets" / "tokenizer" / "vocabulary.spm")
    # A full preset also holds the model's config.json; keras-hub only reads its class here.
    with open(tmp_path / "config.json", "w") as file:
        json.dump({"module": "keras_siglip.models.siglip.siglip_model", "class_name": "SigLIP", "config": {},
                   "registered_name": "keras_siglip>SigLIP"}, file)
    restored = SigLIPTokenizer.from_preset(str(tmp_path))
    assert isinstance(restored, SigLIPTokenizer)
    texts = ["Café CRÈME, brûlée!", "a photo of a dog"]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(texts)), keras.ops.convert_to_numpy(tokenizer(texts))
    )
    import keras_hub

    assert isinstance(keras_hub.tokenizers.Tokenizer.from_preset(str(tmp_path)), SigLIPTokenizer)
