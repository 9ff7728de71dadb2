"""Which tokenizer a converted checkpoint's vocabulary gets: SigLIP's or SigLIP 2's (Gemma).

transformers SigLIP folders keep a T5-style `spiece.model` (`SiglipTokenizer`);
SigLIP 2 folders (FixRes ones are plain `model_type: siglip`) keep Gemma's
`tokenizer.model` and declare `GemmaTokenizer` / `Siglip2Tokenizer` in
`tokenizer_config.json`; keras-hub presets keep `assets/tokenizer/vocabulary.spm`
and name `SigLIPTokenizer` or `GemmaTokenizer` in `tokenizer.json`. The declared
class decides; without one, the vocabulary does: Gemma's has `<eos>` and `<pad>`
pieces where T5's has `</s>`.
"""

import json

# Tokenizer classes that transformers and keras-hub write for SigLIP 2 checkpoints.
SIGLIP2_CLASSES = ("GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer", "keras_hub>GemmaTokenizer")
# Where each library keeps the SentencePiece file.
VOCABULARY_FILES = ("tokenizer.model", "spiece.model", "assets/tokenizer/vocabulary.spm")
_DECLARATIONS = {"tokenizer_config.json": "tokenizer_class", "tokenizer.json": "registered_name"}


def is_gemma_vocabulary(proto):
    """True for a Gemma-style SentencePiece model (`<eos>` as its EOS piece, a `<pad>` piece)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    if isinstance(proto, bytes):
        processor.LoadFromSerializedProto(proto)
    else:
        processor.Load(str(proto))
    eos = processor.eos_id()
    eos_piece = processor.IdToPiece(eos) if eos >= 0 else None
    return eos_piece == "<eos>" and processor.PieceToId("<pad>") != processor.unk_id()


def tokenizer_class(proto, declared=None):
    """`SigLIP2Tokenizer` or `SigLIPTokenizer` for a vocabulary and the class its folder declares."""
    from keras_siglip.models.siglip.siglip2_tokenizer import SigLIP2Tokenizer
    from keras_siglip.models.siglip.tokenizer import SigLIPTokenizer

    if declared:
        return SigLIP2Tokenizer if declared in SIGLIP2_CLASSES else SigLIPTokenizer
    return SigLIP2Tokenizer if is_gemma_vocabulary(proto) else SigLIPTokenizer


def declared_class(exists, read):
    """The tokenizer class a folder's tokenizer config names, or None.

    Args:
        exists: `exists(filename)` -> bool for the folder / handle.
        read: `read(filename)` -> local path of that file.
    """
    for filename, key in _DECLARATIONS.items():
        if exists(filename):
            with open(read(filename), encoding="utf-8") as file:
                try:
                    value = json.load(file).get(key)
                except (json.JSONDecodeError, AttributeError):
                    continue
            if value:
                return value
    return None


def tokenizer_for_folder(exists, read, sequence_length):
    """The tokenizer for a transformers or keras-hub checkpoint's vocabulary, or None if it has none.

    Args:
        exists: `exists(filename)` -> bool for the folder / handle.
        read: `read(filename)` -> local path of that file.
        sequence_length: the text tower's length.

    Example:
    >>> import os, tempfile, sentencepiece
    >>> folder = tempfile.mkdtemp()
    >>> sentencepiece.SentencePieceTrainer.train(
    ...     sentence_iterator=iter(["a photo of a cat", "a photo of a dog"] * 50), model_prefix=os.path.join(folder, "tokenizer"),
    ...     vocab_size=280, model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
    ...     pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", minloglevel=2)
    >>> here = lambda name: os.path.join(folder, name)
    >>> type(tokenizer_for_folder(lambda name: os.path.exists(here(name)), here, 64)).__name__
    'SigLIP2Tokenizer'
    """
    for vocabulary in VOCABULARY_FILES:
        if exists(vocabulary):
            proto = read(vocabulary)
            cls = tokenizer_class(proto, declared_class(exists, read))
            return cls(proto=proto, sequence_length=sequence_length)
    return None
