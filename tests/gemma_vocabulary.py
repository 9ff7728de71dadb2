"""A small Gemma-like SentencePiece vocabulary, and transformers' tokenizer files made from it.

Gemma's tokenizer is a BPE SentencePiece model with byte fallback, no dummy prefix, identity
normalisation, split digits, and the special ids <pad> 0, <eos> 1, <bos> 2, <unk> 3. The one
trained here has the same settings on a few hundred hard sentences (accents, CJK, emoji, Greek);
transformers' own GemmaTokenizer converts it into the `tokenizer.json` a SigLIP 2 folder holds.
"""

import os
import shutil

import numpy as np
import sentencepiece

_WORDS = (
    "a photo of the cat dog bird car tree house red blue green small large on in with next to running "
    "sitting two three people man woman child street beach mountain snow water field city night"
).split()
_FOREIGN = [
    "café crème brûlée à noël", "über grüße aus münchen", "el niño está en la playa",
    "привет мир кошка собака", "東京タワーの写真です", "一只猫坐在桌子上", "φωτογραφία ενός σκύλου",
    "ΟΔΟΣ ΚΑΛΟΣ", "صورة قطة على الطاولة", "CAFÉ CRÈME", "two dogs 🐶 playing", "12345 apples",
]
HARD_TEXTS = [
    "A photo of a Cat.",
    "Two DOGS running on the beach, next to the water!",
    "Café CRÈME brûlée à Noël, NAÏVE",
    "Привет, МИР: кошка",
    "東京タワーの写真です。一只猫",
    "ΟΔΟΣ ΚΑΛΟΣ, φωτογραφία ενός σκύλου",  # a word-final capital sigma
    "İstanbul ǅ ẞ ＡＢＣ",
    "two dogs 🐶🦊 playing 🎉",  # emoji outside the vocabulary: byte fallback
    "Hello,   world!!  (a \"test\")\t\nwith\u00a0spaces ",
    " ".join(["a red car next to a green tree in the city at night"] * 12),  # over-long: cut
    "",
    "   ",
    "12345 6789",
]


def write_gemma_spm(path, vocab_size=400):
    """Trains the Gemma-like SentencePiece model into `path`; returns `path`."""
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(_WORDS, size=rng.integers(3, 12))) for _ in range(300)]
    sentences += _FOREIGN * 5
    with open(path, "wb") as file:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=file, vocab_size=vocab_size, model_type="bpe",
            pad_id=0, eos_id=1, bos_id=2, unk_id=3,
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
            user_defined_symbols=["<mask>"], byte_fallback=True, split_digits=True, add_dummy_prefix=False,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, character_coverage=1.0, minloglevel=2,
        )
    return path


def write_transformers_tokenizer(spm_path, folder):
    """The tokenizer files of a SigLIP 2 transformers folder, written by transformers itself.

    As transformers' SigLIP 2 conversion makes them: a GemmaTokenizer with no BOS, an EOS
    after every text, right padding; `tokenizer.model` (the SentencePiece file) beside them as
    in the released folders.
    """
    from transformers import GemmaTokenizer

    staging = os.path.join(folder, "_spm")
    os.makedirs(staging, exist_ok=True)
    shutil.copy(spm_path, os.path.join(staging, "tokenizer.model"))
    tokenizer = GemmaTokenizer.from_pretrained(staging, add_bos_token=False, add_eos_token=True,
                                               padding_side="right")
    tokenizer.save_pretrained(folder)
    shutil.move(os.path.join(staging, "tokenizer.model"), os.path.join(folder, "tokenizer.model"))
    shutil.rmtree(staging)
    return folder


def transformers_siglip2_tokenizer(folder):
    """transformers' own SigLIP 2 tokenizer (`Siglip2Tokenizer`: Gemma + lowercasing) on `folder`."""
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    return Siglip2Tokenizer.from_pretrained(folder)
