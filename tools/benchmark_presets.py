"""Load time and exactness of `SigLIP.from_preset` for each checkpoint source; prints a table.

Random-weight checkpoints of one variant are written to a temporary folder by
transformers (`save_pretrained`), keras-hub (`save_to_preset`) and this
library (`save_to_preset`); each is loaded with `SigLIP.from_preset` (timed,
best of `--repeats`) and its logits compared with the source library's own.

    KERAS_BACKEND=jax python tools/benchmark_presets.py --variant=B --image_size=224

`--siglip2` times `load_preset` (model, Gemma tokenizer, image preprocessor) of a
SigLIP 2 FixRes transformers folder instead: a random `SiglipModel` with Gemma's
256k vocabulary and the Gemma tokenizer files transformers writes, compared on
raw images and texts, each library running its own preprocessing. `--naflex`
does the same for a SigLIP 2 NaFlex folder (`Siglip2Model`, `--max_num_patches`),
on raw images of different sizes and aspect ratios.
"""

import os
import sys

import tempfile
import time

import keras
import numpy as np
from absl import app, flags

from keras_siglip import SigLIP
from keras_siglip.models.siglip.towers import VARIANTS

flags.DEFINE_string("variant", "tiny", "Tower size: tiny, B, L, So400m.")
flags.DEFINE_integer("image_size", 16, "Image resolution.")
flags.DEFINE_integer("patch_size", 4, "Patch size.")
flags.DEFINE_integer("vocabulary_size", 1000, "Vocabulary size.")
flags.DEFINE_integer("sequence_length", 16, "Text length.")
flags.DEFINE_integer("repeats", 2, "Timed loads per source; the best is reported.")
flags.DEFINE_bool("siglip2", False, "Time a SigLIP 2 FixRes transformers folder (Gemma vocabulary) instead.")
flags.DEFINE_bool("naflex", False, "Time a SigLIP 2 NaFlex transformers folder (Gemma vocabulary) instead.")
flags.DEFINE_integer("max_num_patches", 256, "NaFlex: the image processor's patch budget.")
FLAGS = flags.FLAGS


def timed_load(folder):
    best, model = float("inf"), None
    for _ in range(FLAGS.repeats):
        keras.utils.clear_session()
        start = time.perf_counter()
        model = SigLIP.from_preset(folder)
        best = min(best, time.perf_counter() - start)
    return model, best


def our_logits(model, images, token_ids):
    out = model({"images": images, "token_ids": token_ids})
    return keras.ops.convert_to_numpy(model.similarity(out["image_embeddings"], out["text_embeddings"]))


def transformers_source(folder, tower, images, token_ids):
    import torch
    import transformers

    common = dict(hidden_size=tower["width"], intermediate_size=tower["mlp_dim"],
                  num_hidden_layers=tower["depth"], num_attention_heads=tower["num_heads"])
    config = transformers.SiglipConfig(
        text_config=dict(common, vocab_size=FLAGS.vocabulary_size, max_position_embeddings=FLAGS.sequence_length,
                         bos_token_id=None, eos_token_id=1, pad_token_id=1),
        vision_config=dict(common, image_size=FLAGS.image_size, patch_size=FLAGS.patch_size))
    reference = transformers.SiglipModel(config).eval()
    reference.save_pretrained(folder)
    with torch.no_grad():
        out = reference(input_ids=torch.from_numpy(token_ids).long(),
                        pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return out.logits_per_image.numpy()


def keras_hub_source(folder, tower, images, token_ids):
    import keras_hub

    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=FLAGS.patch_size, hidden_dim=tower["width"], num_layers=tower["depth"],
        num_heads=tower["num_heads"], intermediate_dim=tower["mlp_dim"],
        image_shape=(FLAGS.image_size, FLAGS.image_size, 3))
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=FLAGS.vocabulary_size, embedding_dim=tower["width"], hidden_dim=tower["width"],
        num_layers=tower["depth"], num_heads=tower["num_heads"], intermediate_dim=tower["mlp_dim"],
        max_sequence_length=FLAGS.sequence_length)
    backbone = keras_hub.models.SigLIPBackbone(vision, text)
    backbone.save_to_preset(folder)
    out = backbone({"images": images, "token_ids": token_ids})
    return keras.ops.convert_to_numpy(out["vision_logits"])


def native_source(folder, tower, images, token_ids):
    model = SigLIP.from_variant(FLAGS.variant, image_size=FLAGS.image_size, patch_size=FLAGS.patch_size,
                                vocabulary_size=FLAGS.vocabulary_size, sequence_length=FLAGS.sequence_length)
    model.save_to_preset(folder)
    return our_logits(model, images, token_ids)


def siglip2(folder, tower, naflex):
    """A SigLIP 2 transformers folder (FixRes or NaFlex); `load_preset`'s time and its difference from transformers."""
    import torch
    import transformers

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from gemma_vocabulary import (
        HARD_TEXTS, transformers_siglip2_tokenizer, write_gemma_spm, write_transformers_tokenizer,
    )

    from keras_siglip.presets import load_preset

    common = dict(hidden_size=tower["width"], intermediate_size=tower["mlp_dim"],
                  num_hidden_layers=tower["depth"], num_attention_heads=tower["num_heads"])
    text = dict(common, vocab_size=256_000, max_position_embeddings=FLAGS.sequence_length,
                pad_token_id=0, eos_token_id=1, bos_token_id=2)
    rng = np.random.default_rng(0)
    if naflex:
        # The released NaFlex towers learn a 16x16 position grid.
        config = transformers.Siglip2Config(text_config=text, vision_config=dict(
            common, patch_size=FLAGS.patch_size, num_patches=256))
        reference = transformers.Siglip2Model(config).eval()
        processor = transformers.Siglip2ImageProcessorPil(patch_size=FLAGS.patch_size,
                                                          max_num_patches=FLAGS.max_num_patches)
        images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((480, 640, 3), (900, 300, 3))]
        kind = f"NaFlex {FLAGS.variant}/{FLAGS.patch_size}, {FLAGS.max_num_patches} patches"
    else:
        config = transformers.SiglipConfig(text_config=text, vision_config=dict(
            common, image_size=FLAGS.image_size, patch_size=FLAGS.patch_size))
        reference = transformers.SiglipModel(config).eval()
        processor = transformers.SiglipImageProcessor(size={"height": FLAGS.image_size, "width": FLAGS.image_size},
                                                      resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        images = list(rng.integers(0, 256, (2, FLAGS.image_size, FLAGS.image_size, 3), dtype=np.uint8))
        kind = f"FixRes {FLAGS.variant}/{FLAGS.patch_size}-{FLAGS.image_size}"
    reference.save_pretrained(folder)
    write_transformers_tokenizer(write_gemma_spm(os.path.join(folder, "gemma.model")), folder)
    processor.save_pretrained(folder)
    texts = HARD_TEXTS[:2]
    ids = transformers_siglip2_tokenizer(folder)(texts, padding="max_length", truncation=True,
                                                  max_length=FLAGS.sequence_length, return_tensors="pt")["input_ids"]
    pixels = transformers.AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    with torch.no_grad():
        out = reference(input_ids=ids, **pixels)
    best = float("inf")
    for _ in range(FLAGS.repeats):
        keras.utils.clear_session()
        start = time.perf_counter()
        model, tokenizer, image_converter = load_preset(folder)
        best = min(best, time.perf_counter() - start)
    our_ids = keras.ops.convert_to_numpy(tokenizer(texts))
    image_error = np.abs(keras.ops.convert_to_numpy(model.encode_images(image_converter(images)))
                         - out.image_embeds.numpy()).max()
    text_error = np.abs(keras.ops.convert_to_numpy(model.encode_texts(our_ids)) - out.text_embeds.numpy()).max()
    print(f"backend {keras.backend.backend()}, SigLIP 2 {kind}, Gemma 256k vocabulary, {FLAGS.sequence_length} tokens")
    print("| source | parameters | load_preset (s) | token ids equal | max abs image / text embedding error |")
    print("|---|---|---|---|---|")
    print(f"| transformers SigLIP 2 {kind} folder | {model.count_params():,} | {best:.2f} | "
          f"{bool((our_ids == ids.numpy()).all())} | {image_error:.1e} / {text_error:.1e} |")


def main(argv):
    del argv
    if FLAGS.siglip2 or FLAGS.naflex:
        with tempfile.TemporaryDirectory() as folder:
            return siglip2(folder, VARIANTS[FLAGS.variant], naflex=FLAGS.naflex)
    tower = VARIANTS[FLAGS.variant]
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, FLAGS.image_size, FLAGS.image_size, 3)).astype("float32")
    token_ids = rng.integers(0, FLAGS.vocabulary_size, (2, FLAGS.sequence_length)).astype("int32")
    rows = []
    for name, make in (("transformers", transformers_source), ("keras-hub", keras_hub_source),
                       ("keras_siglip", native_source)):
        with tempfile.TemporaryDirectory() as folder:
            reference = make(folder, tower, images, token_ids)
            model, seconds = timed_load(folder)
            error = float(np.max(np.abs(our_logits(model, images, token_ids) - reference)))
            rows.append((name, model.count_params(), seconds, error))
    print(f"backend {keras.backend.backend()}, variant {FLAGS.variant}, {FLAGS.image_size}px/{FLAGS.patch_size}")
    print(f"| source | parameters | from_preset (s) | max abs logit error |\n|---|---|---|---|")
    for name, parameters, seconds, error in rows:
        print(f"| {name} | {parameters:,} | {seconds:.2f} | {error:.1e} |")


if __name__ == "__main__":
    app.run(main)
