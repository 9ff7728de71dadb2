"""`SigLIP2Tokenizer`: SigLIP 2's Gemma SentencePiece text rules."""

import keras

from keras_siglip.models.siglip.tokenizer import SigLIPTokenizer

# Gemma's SentencePiece ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3.
GEMMA_PAD_PIECE = "<pad>"


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIP2Tokenizer(SigLIPTokenizer):
    """The text pre-processing of SigLIP 2 (FixRes and NaFlex) on a Gemma vocabulary.

    big_vision's SigLIP 2 pipeline is `lower | tok(length=64, model="gemma",
    bos="no", eos="sticky")`: lowercase, no BOS, EOS appended and kept as the
    last id of a text cut short ("sticky"), padded to 64 with Gemma's `<pad>`
    (id 0), not with EOS as SigLIP 1 pads. transformers' `Siglip2Tokenizer`
    (a Gemma tokenizer with a `Lowercase` normalizer, `add_bos_token=False`,
    `add_eos_token=True`, called with `padding="max_length", max_length=64,
    truncation=True`) gives the same ids; its lowercasing lowers each
    character on its own, which `lowercase="per_character"` (the default)
    reproduces; `lowercase=True` is big_vision's ASCII-only `tf.strings.lower`.

    Everything else is `SigLIPTokenizer`'s: eager and `tf.data` use, every
    Keras backend, `save_to_preset` / `from_preset`.

    Args:
        proto: path to a Gemma-style SentencePiece model file (transformers
            folders call it `tokenizer.model`; big_vision's is
            `gs://big_vision/gemma_tokenizer.model`), or its serialized bytes.
        sequence_length: int. Length of every output row (64 for every
            released SigLIP 2 checkpoint).
        lowercase: `"per_character"` (transformers), `True` / `"ascii"`
            (big_vision), `"unicode"` (`str.lower`) or `False`.
        pad_id: int or `None`. The padding id; `None` takes the vocabulary's
            pad id (its `<pad>` piece; EOS if it has none).
        **kwargs: `SigLIPTokenizer` arguments (`canonicalize`, `name`, `dtype`).

    Example:
    >>> import io, sentencepiece
    >>> model = io.BytesIO()
    >>> sentencepiece.SentencePieceTrainer.train(
    ...     sentence_iterator=iter(["a photo of a cat", "a photo of a dog"] * 50),
    ...     model_writer=model, vocab_size=280, model_type="bpe", byte_fallback=True,
    ...     pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
    ...     bos_piece="<bos>", add_dummy_prefix=False, minloglevel=2)
    >>> tokenizer = SigLIP2Tokenizer(model.getvalue(), sequence_length=8)
    >>> ids = tokenizer(["A photo of a cat", ""])
    >>> [int(i) for i in ids[1]]
    [1, 0, 0, 0, 0, 0, 0, 0]
    >>> tokenizer.detokenize(ids[0])
    'a photo of a cat'
    """

    def __init__(self, proto=None, sequence_length=64, lowercase="per_character", pad_id=None, **kwargs):
        kwargs.setdefault("name", "siglip2_tokenizer")
        super().__init__(proto=proto, sequence_length=sequence_length, lowercase=lowercase, pad_id=pad_id, **kwargs)

    def set_proto(self, proto):
        super().set_proto(proto)
        if proto is None:
            return
        spm = self._sentence_piece_spm
        pad = int(spm.pad_id())
        if pad < 0:
            pad = int(spm.PieceToId(GEMMA_PAD_PIECE))
            pad = self._eos_id if pad == spm.unk_id() else pad
        self._vocabulary_pad_id = pad

    def _default_padding_id(self):
        self._check_vocabulary()
        return self._vocabulary_pad_id
