"""Captioned handwritten digits: scikit-learn's 1,797 real 8x8 scans, offline.

Each image is paired with captions drawn from templates ("a photo of the number
seven", "handwritten 7", ...) in up to six languages. Images are split once into
a training and a held-out set (stratified, fixed seed); templates are split too,
so held-out images are scored with prompts the model never saw in training.
"""

import numpy as np

from keras_siglip.data.embedded import CaptionedImages, resize_images
from keras_siglip.extras import require

NUMBER_WORDS = {
    "en": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "de": ["null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"],
    "fr": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"],
    "es": ["cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"],
    "it": ["zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"],
    "pt": ["zero", "um", "dois", "três", "quatro", "cinco", "seis", "sete", "oito", "nove"],
}
LANGUAGES = tuple(NUMBER_WORDS)

# `{word}` is the number word of the language, `{digit}` the numeral.
TRAIN_TEMPLATES = {
    "en": [
        "a photo of the number {word}",
        "handwritten {digit}",
        "the digit {word}",
        "a handwritten {word}",
        "a scan of the digit {digit}",
        "number {digit}",
        "a blurry scan of a handwritten {word}",
        "a low resolution photo of a {digit}",
    ],
    "de": [
        "ein foto der zahl {word}",
        "handgeschriebene {digit}",
        "die ziffer {word}",
        "ein scan der ziffer {digit}",
    ],
    "fr": [
        "une photo du nombre {word}",
        "{digit} écrit à la main",
        "le chiffre {word}",
        "un scan du chiffre {digit}",
    ],
    "es": [
        "una foto del número {word}",
        "{digit} escrito a mano",
        "el dígito {word}",
        "un escaneo del número {digit}",
    ],
    "it": [
        "una foto del numero {word}",
        "{digit} scritto a mano",
        "la cifra {word}",
        "una scansione del numero {digit}",
    ],
    "pt": [
        "uma foto do número {word}",
        "{digit} escrito à mão",
        "o dígito {word}",
        "uma digitalização do número {digit}",
    ],
}
HELD_OUT_TEMPLATES = {
    "en": ["a picture of the digit {word}", "the handwritten number {digit}", "{word}"],
    "de": ["ein bild der ziffer {word}", "die handgeschriebene zahl {digit}", "{word}"],
    "fr": ["une image du chiffre {word}", "le nombre manuscrit {digit}", "{word}"],
    "es": ["una imagen del dígito {word}", "el número manuscrito {digit}", "{word}"],
    "it": ["un'immagine della cifra {word}", "il numero scritto a mano {digit}", "{word}"],
    "pt": ["uma imagem do dígito {word}", "o número manuscrito {digit}", "{word}"],
}


def _check_languages(languages):
    languages = tuple(languages)
    unknown = [language for language in languages if language not in NUMBER_WORDS]
    if not languages or unknown:
        raise ValueError(
            f"languages must be a non-empty subset of {LANGUAGES}; got {languages!r}."
        )
    return languages


def digit_captions(label, language="en", held_out=False):
    """Every caption of one digit class in one language.

    Example:
    >>> digit_captions(7)[:2]
    ['a photo of the number seven', 'handwritten 7']
    """
    language = _check_languages([language])[0]
    templates = (HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES)[language]
    word = NUMBER_WORDS[language][label]
    return [template.format(word=word, digit=label) for template in templates]


def load_digits(split="train", image_size=16, languages=("en",), test_fraction=0.2, seed=0):
    """The captioned digits split, as a `CaptionedImages`.

    Args:
        split: `"train"` or `"test"` (the held-out images).
        image_size: int. The 8x8 scans are resized (bilinear) to this size,
            grey replicated to RGB and scaled to [-1, 1].
        languages: the caption languages, a subset of `LANGUAGES`
            (`("en",)` by default; `LANGUAGES` for the multilingual variant).
        test_fraction: float in (0, 1). Share of each class held out.
        seed: int. Fixes the split.

    The training split's captions come from `TRAIN_TEMPLATES`; the test split
    carries the captions of `HELD_OUT_TEMPLATES` and, per language, the prompts
    for zero-shot classification (`class_prompts[language]`).

    Example:
    >>> data = load_digits("test", image_size=16)
    >>> data.images.shape, data.class_names[7]
    ((359, 16, 16, 3), 'seven')
    """
    require("sklearn", purpose="load_digits")
    from sklearn.datasets import load_digits as sklearn_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}.")
    languages = _check_languages(languages)
    digits = sklearn_digits()
    labels = digits.target.astype("int32")
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), bool)
    for label in range(10):
        members = rng.permutation(np.flatnonzero(labels == label))
        test_mask[members[: round(test_fraction * len(members))]] = True
    keep = test_mask if split == "test" else ~test_mask
    images = digits.images[keep].astype("float32") / 16.0 * 2.0 - 1.0
    images = resize_images(images[..., None].repeat(3, axis=-1), image_size)
    held_out = split == "test"
    class_captions = [
        sum((digit_captions(label, language, held_out) for language in languages), [])
        for label in range(10)
    ]
    caption_languages = [
        language
        for language in languages
        for _ in (HELD_OUT_TEMPLATES if held_out else TRAIN_TEMPLATES)[language]
    ]
    class_prompts = {
        language: [digit_captions(label, language, held_out=True) for label in range(10)]
        for language in languages
    }
    return CaptionedImages(
        images=images,
        labels=labels[keep],
        class_names=list(NUMBER_WORDS["en"]),
        class_captions=class_captions,
        caption_languages=caption_languages,
        class_prompts=class_prompts,
    )


def caption_corpus():
    """Every caption and prompt this dataset can produce, in all languages (for the vocabulary)."""
    return sorted(
        {
            caption
            for language in LANGUAGES
            for label in range(10)
            for held_out in (False, True)
            for caption in digit_captions(label, language, held_out)
        }
    )
