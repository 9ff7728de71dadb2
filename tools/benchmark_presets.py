"""Load time and exactness of `SigLIP.from_preset` for each checkpoint source; prints a table.

Random-weight checkpoints of one variant are written to a temporary folder by
transformers (`save_pretrained`), keras-hub (`save_to_preset`) and this
library (`save_to_preset`); each is loaded with `SigLIP.from_preset` (timed,
best of `--repeats`) and its logits compared with the source library's own.

    KERAS_BACKEND=jax python tools/benchmark_presets.py --variant=B --image_size=224
"""

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


def main(argv):
    del argv
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
