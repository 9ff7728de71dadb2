"""`SigLIPTokenizer`: SentencePiece with big_vision's padding and EOS rules."""

import string

import keras

from keras_siglip.extras import require

# The model and losses work without these; tokenizing does not (ImportError naming the extra).
tf, _, keras_hub = require("tensorflow", "tensorflow_text", "keras_hub", purpose="SigLIPTokenizer")

from keras_siglip.models.siglip.siglip_model import SigLIP  # noqa: E402
from keras_siglip.models.siglip.tf_preprocessing import preprocessing_function  # noqa: E402

SentencePieceTokenizer = keras_hub.tokenizers.SentencePieceTokenizer

LOWERCASE_MODES = ("ascii", "unicode", "per_character")

# transformers' `canonicalize_text` drops `string.punctuation` and collapses every
# run of characters for which `str.isspace()` holds. RE2's `\s` is ASCII only, so
# both classes are spelt out.
_PUNCTUATION = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in string.punctuation) + "]"
_WHITESPACE = (
    "[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}"
    "\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}]+"
)


def _lowercase_mode(lowercase):
    if lowercase is True:
        return "ascii"
    if lowercase in (False, None):
        return None
    if lowercase in LOWERCASE_MODES:
        return lowercase
    raise ValueError(
        f"`lowercase` must be True, False, 'ascii', 'unicode' or 'per_character'; got {lowercase!r}."
    )


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPTokenizer(SentencePieceTokenizer):
    """Turns captions into the fixed-length token ids SigLIP's text tower reads.

    A keras-hub `SentencePieceTokenizer` that reproduces big_vision's text
    pre-processing (`tokenize(max_len, eos="sticky", pad_value=1)`):

    1. optionally lowercase (big_vision uses `tf.strings.lower`, which lowers
       ASCII letters only: `lowercase=True` does the same, `"unicode"` lowers
       every cased letter like `str.lower`, `"per_character"` like Hugging
       Face tokenizers' `Lowercase` normalizer, which lowers each character
       on its own: a word-final capital sigma becomes "σ", not "ς");
    2. optionally canonicalise like transformers' `SiglipTokenizer` (ASCII
       punctuation removed, whitespace runs collapsed to one space, ends
       stripped);
    3. SentencePiece-encode and append EOS;
    4. pad with EOS (or `pad_id`) to `sequence_length`; a longer text is cut
       and its last slot is EOS ("sticky" EOS), so the text tower's last-token
       pooling always reads an EOS.

    It runs eagerly and inside `tf.data` (through tensorflow-text) with the
    same ops, on every Keras backend. Called on a string it returns int32 ids of
    shape `(sequence_length,)`; on a list / 1-D tensor of strings,
    `(batch, sequence_length)`. The vocabulary is saved as a keras-hub preset
    asset (`save_to_preset(folder)` writes `tokenizer.json` and
    `assets/tokenizer/vocabulary.spm`).

    Args:
        proto: path to a SentencePiece model file, or its serialized bytes
            (e.g. big_vision's English `c4_en` 32k or multilingual `mc4` 250k
            vocabulary).
        sequence_length: int. Length of every output row (64 for most SigLIP
            checkpoints, 16 for So400m/14-224).
        lowercase: `True` / `"ascii"` (big_vision), `"unicode"` (transformers'
            `SiglipTokenizer`), `"per_character"` (transformers'
            `Siglip2Tokenizer`) or `False`.
        canonicalize: bool. Apply transformers' punctuation stripping and
            whitespace collapsing (use with `lowercase="unicode"` to match
            `transformers.SiglipTokenizer` exactly).
        pad_id: int or `None`. The padding id; `None` pads with the EOS id as
            SigLIP does (`SigLIP2Tokenizer`: with the vocabulary's pad id).
        **kwargs: `keras_hub.tokenizers.SentencePieceTokenizer` arguments
            (`name`, `dtype`).

    Example:
    >>> import io, sentencepiece
    >>> model = io.BytesIO()
    >>> sentencepiece.SentencePieceTrainer.train(
    ...     sentence_iterator=iter(["a photo of a cat", "a photo of a dog"] * 50),
    ...     model_writer=model, vocab_size=14, pad_id=0, eos_id=1, unk_id=2,
    ...     bos_id=-1, minloglevel=2)
    >>> tokenizer = SigLIPTokenizer(model.getvalue(), sequence_length=24)
    >>> ids = tokenizer(["A photo of a cat", ""])
    >>> tuple(ids.shape), int(ids[1, 0]) == tokenizer.eos_id
    ((2, 24), True)
    >>> tokenizer.detokenize(ids[0])
    'a photo of a cat'
    """

    backbone_cls = SigLIP

    def __init__(
        self,
        proto=None,
        sequence_length=64,
        lowercase=True,
        canonicalize=False,
        pad_id=None,
        **kwargs,
    ):
        if not isinstance(sequence_length, int) or isinstance(sequence_length, bool) or sequence_length < 1:
            raise ValueError(
                f"`sequence_length` must be a positive int; got {sequence_length!r}."
            )
        if pad_id is not None and (not isinstance(pad_id, int) or pad_id < 0):
            raise ValueError(f"`pad_id` must be None or a non-negative int; got {pad_id!r}.")
        self.lowercase = _lowercase_mode(lowercase)
        self.canonicalize = bool(canonicalize)
        self.pad_id = pad_id
        kwargs.setdefault("name", "siglip_tokenizer")
        kwargs.pop("add_eos", None)  # EOS is always added, by `tokenize`, for the sticky rule.
        kwargs.pop("add_bos", None)
        super().__init__(proto=proto, sequence_length=sequence_length, add_bos=False, add_eos=False, **kwargs)

    # -- vocabulary ------------------------------------------------------------

    def set_proto(self, proto):
        super().set_proto(proto)
        if proto is None:
            return
        eos_id = int(self._sentence_piece_spm.eos_id())
        if eos_id < 0:
            eos_id = int(self._sentence_piece_spm.PieceToId("</s>"))
            if eos_id == self._sentence_piece_spm.unk_id():
                raise ValueError(
                    "The SentencePiece model has no EOS token (its eos_id is -1 and it has no "
                    "'</s>' piece); SigLIP's text tower needs one to pool on."
                )
        self._eos_id = eos_id
        if self.pad_id is not None and self.pad_id >= self.vocabulary_size():
            raise ValueError(
                f"`pad_id` {self.pad_id} is outside the vocabulary of {self.vocabulary_size()} ids."
            )

    @property
    def eos_id(self):
        """The id appended to every text and used as padding by default."""
        self._check_vocabulary()
        return self._eos_id

    def _default_padding_id(self):
        """The padding id when `pad_id` is None: SigLIP pads with EOS."""
        return self.eos_id

    @property
    def padding_id(self):
        """The id that fills a short text's tail: `pad_id`, else the default (`eos_id` here)."""
        return self._default_padding_id() if self.pad_id is None else self.pad_id

    # -- tokenization ------------------------------------------------------------

    def normalize(self, texts):
        """The text actually encoded: lowercased and canonicalised as configured (tf ops)."""
        if self.lowercase == "ascii":
            texts = tf.strings.lower(texts)
        elif self.lowercase == "unicode":
            texts = tf.strings.lower(texts, encoding="utf-8")
        elif self.lowercase == "per_character":
            # TensorFlow lowers like `str.lower`, with the final-sigma rule; without
            # context a capital sigma is always "σ".
            texts = tf.strings.lower(tf.strings.regex_replace(texts, "\u03a3", "\u03c3"), encoding="utf-8")
        if self.canonicalize:
            texts = tf.strings.regex_replace(texts, _PUNCTUATION, "")
            texts = tf.strings.regex_replace(texts, _WHITESPACE, " ")
            texts = tf.strings.regex_replace(texts, "^ | $", "")
        return texts

    def tokenize(self, inputs):
        self._check_vocabulary()
        return self._tokenize_fixed_length(inputs)

    def untruncated_lengths(self, inputs):
        """Tokens per text before the cut to `sequence_length` (EOS included): more than it means truncated.

        Args:
            inputs: a 1-D batch of strings (a list or a string tensor).

        Example:
        >>> from keras_siglip.data import EMBEDDED_VOCABULARY
        >>> tokenizer = SigLIPTokenizer(str(EMBEDDED_VOCABULARY), sequence_length=8)
        >>> lengths = tokenizer.untruncated_lengths(["a cat", "a photo of a cat " * 4])
        >>> [bool(n > tokenizer.sequence_length) for n in lengths]  # the second one is cut
        [False, True]
        """
        texts = self.normalize(tf.convert_to_tensor(inputs, tf.string))
        return self._live_sentence_piece().tokenize(texts).row_lengths() + 1

    def _live_sentence_piece(self):
        """The tensorflow-text tokenizer, rebuilt if its resource was freed.

        `keras.utils.clear_session()` on TensorFlow clears the kernel cache,
        which owns the SentencePiece resource. A cheap eager probe (lifted out
        of any `tf.data` trace) finds that out before the handle is used.
        """
        self._maybe_initialized_tf()
        with tf.init_scope():
            try:
                self._sentence_piece.tokenize(tf.constant([""]))
            except tf.errors.NotFoundError:
                self._set_proto_tf(self.proto)
        return self._sentence_piece

    @preprocessing_function
    def _tokenize_fixed_length(self, inputs):
        sentence_piece = self._live_sentence_piece()
        texts = tf.convert_to_tensor(inputs)
        if texts.dtype != tf.string:
            raise ValueError(f"{type(self).__name__} takes strings; got a tensor of {texts.dtype.name}.")
        if texts.shape.rank not in (0, 1, None):
            raise ValueError(
                f"{type(self).__name__} takes a string or a 1-D batch of strings; got shape {texts.shape}."
            )
        unbatched = texts.shape.rank == 0
        if unbatched:
            texts = texts[tf.newaxis]
        pieces = sentence_piece.tokenize(self.normalize(texts))
        pieces = tf.cast(pieces[:, : self.sequence_length - 1], self.compute_dtype)
        eos = tf.fill([pieces.nrows(), 1], tf.constant(self.eos_id, self.compute_dtype))
        ids = tf.concat([pieces, tf.RaggedTensor.from_tensor(eos)], axis=1)
        ids = ids.to_tensor(default_value=self.padding_id, shape=[None, self.sequence_length])
        return ids[0] if unbatched else ids

    def detokenize(self, inputs):
        """Ids back to text; EOS, padding and other control ids are dropped."""
        return super().detokenize(inputs)

    def compute_output_spec(self, input_spec):
        return keras.KerasTensor(tuple(input_spec.shape) + (self.sequence_length,), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        for key in ("add_bos", "add_eos"):
            config.pop(key, None)
        config.update(
            {
                "lowercase": self.lowercase or False,
                "canonicalize": self.canonicalize,
                "pad_id": self.pad_id,
            }
        )
        return config
