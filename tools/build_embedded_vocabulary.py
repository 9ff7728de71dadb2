"""Trains the SentencePiece vocabulary shipped for the embedded datasets.

    python tools/build_embedded_vocabulary.py

Writes keras_siglip/data/assets/embedded_vocabulary.model from every caption and
prompt of the digits (all languages) and shapes sets plus the 80 CLIP zero-shot
templates. Deterministic: one thread, a fixed corpus order, no sampling, so
rerunning it gives the same file. Ids follow the T5 vocabularies that SigLIP
uses: 0 pad, 1 EOS, 2 unknown, no BOS.
"""

import io
import sys

import sentencepiece

from keras_siglip.data import digits, shapes
from keras_siglip.data.embedded import EMBEDDED_VOCABULARY
from keras_siglip.templates import CLIP_TEMPLATES

VOCABULARY_SIZE = 400
TRAINER_OPTIONS = dict(
    vocab_size=VOCABULARY_SIZE,
    model_type="bpe",  # whole words for this small corpus; unigram stops near 200 pieces
    character_coverage=1.0,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    num_threads=1,
    shuffle_input_sentence=False,
    input_sentence_size=0,
    normalization_rule_name="nmt_nfkc",
    minloglevel=2,
)


def corpus():
    sentences = digits.caption_corpus() + shapes.caption_corpus()
    sentences += [template.replace("{}", "").strip() for template in CLIP_TEMPLATES]
    return [sentence.lower() for sentence in sentences]


def main():
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, **TRAINER_OPTIONS
    )
    EMBEDDED_VOCABULARY.parent.mkdir(parents=True, exist_ok=True)
    EMBEDDED_VOCABULARY.write_bytes(model.getvalue())
    print(f"wrote {EMBEDDED_VOCABULARY} ({len(model.getvalue())} bytes, {VOCABULARY_SIZE} pieces)")


if __name__ == "__main__":
    sys.exit(main())
