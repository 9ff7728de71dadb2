"""The released SigLIP configurations, where their weights live, and their sizes.

A preset's `config` is `{"image": ImageEncoder kwargs, "text": TextEncoder
kwargs}`; `build_model(config)` turns it into a `SigLIP`. `sources` lists the
upstream handles holding the weights, tried in order by `from_preset`.
"""

from keras_siglip.models.siglip.towers import VARIANTS, ImageEncoder, TextEncoder

ENGLISH_VOCABULARY = 32_000  # T5 C4 SentencePiece
MULTILINGUAL_VOCABULARY = 250_000  # mT5 SentencePiece


def siglip_config(variant, image_size, patch_size, vocabulary_size=ENGLISH_VOCABULARY,
                  sequence_length=64, text_head=True):
    """The two-tower config of a SigLIP of one variant (`"B"`, `"L"`, `"So400m"`, `"tiny"`)."""
    tower = dict(VARIANTS[variant])
    return {
        "image": dict(image_size=image_size, patch_size=patch_size, **tower),
        "text": dict(
            vocabulary_size=vocabulary_size,
            sequence_length=sequence_length,
            output_dim=tower["width"] if text_head else None,
            **tower,
        ),
    }


def naflex_config(variant, patch_size, position_grid_size=16, vocabulary_size=256_000, sequence_length=64):
    """The two-tower config of a SigLIP 2 NaFlex model: a `NaFlexImageEncoder` (no fixed image size)."""
    config = siglip_config(variant, 0, patch_size, vocabulary_size, sequence_length)
    del config["image"]["image_size"]
    config["image"]["position_grid_size"] = position_grid_size
    return config


BIG_VISION_BUCKET = "gs://big_vision/siglip"


def _released(variant, image_size, patch_size, hf_repo, keras_hub_name, big_vision_file, description,
              exact_source="hf", **kwargs):
    """A released checkpoint; `exact_source` is tried first ("hf" or "big_vision")."""
    sources = [f"hf://google/{hf_repo}"]
    if keras_hub_name:
        sources.append(f"kaggle://keras/siglip/keras/{keras_hub_name}/1")
    big_vision = f"{BIG_VISION_BUCKET}/{big_vision_file}"
    sources = [big_vision, *sources] if exact_source == "big_vision" else [*sources, big_vision]
    return {
        "config": siglip_config(variant, image_size, patch_size, **kwargs),
        "sources": sources,
        "description": description,
    }


def _siglit(image_preset, text_variant, description):
    """A new text tower of `text_variant` on the locked image tower of `image_preset`."""
    image = dict(PRESETS[image_preset]["config"]["image"])
    text = dict(VARIANTS[text_variant])
    text.update(
        vocabulary_size=PRESETS[image_preset]["config"]["text"]["vocabulary_size"],
        sequence_length=PRESETS[image_preset]["config"]["text"]["sequence_length"],
        output_dim=image["width"],  # the text head maps into the image embedding space
    )
    return {
        "config": {"image": image, "text": text},
        "image_tower_from": image_preset,
        "lock_image_tower": True,
        "sources": [],
        "description": description,
    }


PRESETS = {
    "siglip_base_patch16_224": _released(
        "B", 224, 16, "siglip-base-patch16-224", "siglip_base_patch16_224", "webli_en_b16_224_63724782.npz",
        "SigLIP B/16 at 224px, English, WebLi."),
    "siglip_base_patch16_256": _released(
        "B", 256, 16, "siglip-base-patch16-256", "siglip_base_patch16_256", "webli_en_b16_256_60500360.npz",
        "SigLIP B/16 at 256px, English, WebLi."),
    "siglip_base_patch16_384": _released(
        "B", 384, 16, "siglip-base-patch16-384", "siglip_base_patch16_384", "webli_en_b16_384_68578854.npz",
        "SigLIP B/16 at 384px, English, WebLi."),
    "siglip_base_patch16_512": _released(
        "B", 512, 16, "siglip-base-patch16-512", "siglip_base_patch16_512", "webli_en_b16_512_68580893.npz",
        "SigLIP B/16 at 512px, English, WebLi."),
    "siglip_large_patch16_256": _released(
        "L", 256, 16, "siglip-large-patch16-256", "siglip_large_patch16_256", "webli_en_l16_256_60552751.npz",
        "SigLIP L/16 at 256px, English, WebLi."),
    "siglip_large_patch16_384": _released(
        "L", 384, 16, "siglip-large-patch16-384", "siglip_large_patch16_384", "webli_en_l16_384_63634585.npz",
        "SigLIP L/16 at 384px, English, WebLi."),
    "siglip_so400m_patch14_224": _released(
        "So400m", 224, 14, "siglip-so400m-patch14-224", "siglip_so400m_patch14_224", "webli_en_so400m_224_57633886.npz",
        "SigLIP So400m/14 at 224px, English, 16-token texts.", sequence_length=16),
    "siglip_so400m_patch14_384": _released(
        "So400m", 384, 14, "siglip-so400m-patch14-384", "siglip_so400m_patch14_384", "webli_en_so400m_384_58765454.npz",
        "SigLIP So400m/14 at 384px, English, WebLi."),
    "siglip_base_patch16_256_multilingual": _released(
        "B", 256, 16, "siglip-base-patch16-256-multilingual", "siglip_base_patch16_256_multilingual", "webli_i18n_b16_256_66117334.npz",
        "mSigLIP B/16 at 256px, 250k multilingual vocabulary.",
        vocabulary_size=MULTILINGUAL_VOCABULARY),
    # big_vision's So400m/16 i18n checkpoint has no text head; HF's conversion puts an
    # identity Dense there (dropped on load), so the big_vision .npz comes first.
    "siglip_so400m_patch16_256_multilingual": _released(
        "So400m", 256, 16, "siglip-so400m-patch16-256-i18n", None, "webli_i18n_so400m_16_256_78061115.npz",
        "mSigLIP So400m/16 at 256px, 250k multilingual vocabulary, no text head.",
        vocabulary_size=MULTILINGUAL_VOCABULARY, text_head=False, exact_source="big_vision"),
    # For tests and examples: random weights, nothing to download.
    "siglip_tiny_patch4_16": {
        "config": siglip_config("tiny", 16, 4, vocabulary_size=64, sequence_length=8),
        "sources": [],
        "description": "2-block width-32 towers on 16px images, 8 tokens; random weights (tests).",
    },
    "siglip_tiny_patch14_28": {
        "config": siglip_config("tiny", 28, 14, vocabulary_size=64, sequence_length=8, text_head=False),
        "sources": [],
        "description": "Tiny, patch 14 and no text head; random weights (tests).",
    },
}
PRESETS.update(
    {
        "siglit_base_patch16_224": _siglit(
            "siglip_base_patch16_224", "B",
            "SigLiT: locked SigLIP B/16-224 image tower, new B text tower."),
        "siglit_so400m_patch14_384": _siglit(
            "siglip_so400m_patch14_384", "B",
            "SigLiT: locked SigLIP So400m/14-384 image tower, new B text tower projecting to 1152."),
        "siglit_tiny_patch4_16": _siglit(
            "siglip_tiny_patch4_16", "tiny",
            "SigLiT on the tiny test tower; random weights (tests)."),
    }
)


# -- SigLIP 2 --------------------------------------------------------------------
# FixRes checkpoints: SigLIP 1's towers on Gemma's 256k vocabulary (SigLIP2Tokenizer), 64 tokens.
# The g-opt image tower is paired with a So400m text tower whose head maps into its 1536 widths.
GEMMA_VOCABULARY = 256_000
SIGLIP2_BIG_VISION_BUCKET = "gs://big_vision/siglip2"
# big_vision's Gemma SentencePiece file: the vocabulary of a SigLIP 2 preset read from its .npz.
GEMMA_VOCABULARY_FILE = "gs://big_vision/gemma_tokenizer.model"
_SIGLIP2_HF_NAME = {"B": "base", "L": "large", "So400m": "so400m", "g-opt": "giant-opt"}
# keras-hub 0.32's `SigLIPBackbone.presets` handles (it has no B/16-512).
_SIGLIP2_KERAS_HUB_VERSION = {"siglip2_giant_opt_patch16_256": 2, "siglip2_base_patch16_512": None}


def siglip2_config(variant, image_size, patch_size):
    """The two-tower config of a SigLIP 2 FixRes checkpoint (`"B"`, `"L"`, `"So400m"`, `"g-opt"`)."""
    text_variant = "So400m" if variant == "g-opt" else variant
    config = siglip_config(variant, image_size, patch_size, vocabulary_size=GEMMA_VOCABULARY)
    text = dict(config["text"], **VARIANTS[text_variant])
    text["output_dim"] = VARIANTS[variant]["width"]
    return {"image": config["image"], "text": text}


def _siglip2(variant, patch_size, image_size, big_vision_name):
    hf_name = _SIGLIP2_HF_NAME[variant]
    name = f"siglip2_{hf_name.replace('-', '_')}_patch{patch_size}_{image_size}"
    sources = [f"hf://google/siglip2-{hf_name}-patch{patch_size}-{image_size}"]
    version = _SIGLIP2_KERAS_HUB_VERSION.get(name, 1)
    if version:
        sources.append(f"kaggle://keras/siglip/keras/{name}/{version}")
    sources.append(f"{SIGLIP2_BIG_VISION_BUCKET}/siglip2_{big_vision_name}_{image_size}.npz")
    text = " with a So400m text tower" if variant == "g-opt" else ""
    return name, {
        "config": siglip2_config(variant, image_size, patch_size),
        "sources": sources,
        "description": f"SigLIP 2 {variant}/{patch_size} at {image_size}px{text}, Gemma 256k vocabulary, multilingual.",
        "vocabulary": GEMMA_VOCABULARY_FILE,
    }


SIGLIP2_FIXRES = dict(
    _siglip2(variant, patch, size, big_vision_name)
    for variant, patch, big_vision_name, sizes in (
        ("B", 32, "b32", (256,)),
        ("B", 16, "b16", (224, 256, 384, 512)),
        ("L", 16, "l16", (256, 384, 512)),
        ("So400m", 14, "so400m14", (224, 384)),
        ("So400m", 16, "so400m16", (256, 384, 512)),
        ("g-opt", 16, "g-opt16", (256, 384)),
    )
    for size in sizes
)
PRESETS.update(SIGLIP2_FIXRES)

# -- SigLIP 2 NaFlex ---------------------------------------------------------------
# A NaFlexImageEncoder (any aspect ratio, a 16x16 position grid); the patch budget (max_num_patches,
# 256 as evaluated) is chosen by NaFlexImagePreprocessor, not the model. No keras-hub handle exists.
SIGLIP2_NAFLEX = {
    f"siglip2_{_SIGLIP2_HF_NAME[variant]}_patch16_naflex": {
        "config": naflex_config(variant, 16, vocabulary_size=GEMMA_VOCABULARY),
        "sources": [f"hf://google/siglip2-{_SIGLIP2_HF_NAME[variant]}-patch16-naflex",
                    f"{SIGLIP2_BIG_VISION_BUCKET}/siglip2_{big_vision_name}_naflex.npz"],
        "description": f"SigLIP 2 NaFlex {variant}/16: any aspect ratio, 256-1024 patches, Gemma 256k vocabulary.",
        "vocabulary": GEMMA_VOCABULARY_FILE,
    }
    for variant, big_vision_name in (("B", "b16"), ("So400m", "so400m16"))
}
PRESETS.update(SIGLIP2_NAFLEX)


def get_preset(name):
    """The registry entry of a built-in preset; a `ValueError` lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Known presets: {', '.join(sorted(PRESETS))}.")
    return PRESETS[name]


def _encoder_blocks(width, depth, mlp_dim, **unused):
    block = 4 * width + 4 * (width * width + width) + 2 * width * mlp_dim + mlp_dim + width
    return depth * block + 2 * width  # + the final LayerNorm


def _head(width, output_dim):
    return width * output_dim + output_dim if output_dim else 0


def count_parameters(config):
    """Parameters of the `SigLIP` that `build_model(config)` builds, counted without building it."""
    image, text = config["image"], config["text"]
    width, mlp_dim, patch = image["width"], image["mlp_dim"], image["patch_size"]
    if "position_grid_size" in image:  # NaFlex: the learned grid, whatever the images
        patches = image["position_grid_size"] ** 2
    else:
        size = image["image_size"]
        height, width_px = (size,) * 2 if isinstance(size, int) else size
        patches = (height // patch) * (width_px // patch)
    image_count = patch * patch * 3 * width + width + patches * width + _encoder_blocks(**image)
    if image.get("pooling", "map") == "map":
        image_count += width + 4 * (width * width + width) + 2 * width + 2 * width * mlp_dim + mlp_dim + width
    image_count += _head(width, image.get("output_dim"))
    text_count = (text["vocabulary_size"] + text["sequence_length"]) * text["width"]
    text_count += _encoder_blocks(**text) + _head(text["width"], text.get("output_dim"))
    return image_count + text_count + 2  # + t' and b


def build_model(config, dtype=None, lock_image_tower=False):
    """A randomly initialised `SigLIP` from a `{"image": ..., "text": ...}` config."""
    from keras_siglip.models.siglip.siglip_model import SigLIP

    if "position_grid_size" in config["image"]:
        from keras_siglip.models.siglip.naflex_image_encoder import NaFlexImageEncoder

        image_encoder = NaFlexImageEncoder(**config["image"], dtype=dtype)
    else:
        image_encoder = ImageEncoder(**config["image"], dtype=dtype)
    text_encoder = TextEncoder(**config["text"], dtype=dtype)
    return SigLIP(image_encoder, text_encoder, dtype=dtype, lock_image_tower=lock_image_tower)


def list_presets(print_table=True):
    """The built-in presets with their parameter counts; prints a table.

    Args:
        print_table: bool. Print one line per preset.

    Returns:
        A dict `{name: {"parameters": int, "description": str, "sources": [...]}}`.

    Example:
    >>> import keras_siglip
    >>> presets = keras_siglip.list_presets(print_table=False)
    >>> round(presets["siglip_base_patch16_224"]["parameters"] / 1e6)
    203
    """
    table = {
        name: {
            "parameters": count_parameters(entry["config"]),
            "description": entry["description"],
            "sources": list(entry["sources"]) or ([entry["image_tower_from"]] if "image_tower_from" in entry else []),
        }
        for name, entry in PRESETS.items()
    }
    if print_table:
        width = max(map(len, table))
        for name, row in table.items():
            print(f"{name:<{width}}  {row['parameters'] / 1e6:9.2f}M  {row['description']}")
    return table
