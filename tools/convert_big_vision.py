"""Converts a big_vision SigLIP `.npz` into a keras_siglip preset folder, then checks it.

Reads both the per-layer and the stacked "scan" layouts (bf16 stored as void
included), writes `config.json` + `metadata.json` + `model.weights.h5`, reloads
the folder and compares image embeddings, text embeddings and logits on random
inputs with an independent NumPy forward pass over the checkpoint
(`keras_siglip.presets.big_vision_reference`). Exits 1 on a mismatch.

    python tools/convert_big_vision.py --checkpoint=webli_en_b16_224_63724782.npz \
        --output=presets/siglip_base_patch16_224
"""

import os
import sys

import numpy as np
from absl import app, flags

from keras_siglip import SigLIP
from keras_siglip.presets import big_vision_format, big_vision_reference, checkpoint, from_big_vision
from keras_siglip.presets.checkpoint import report_differences as report
from keras_siglip.presets.loader import preset_utils


def define_flags():
    flags.DEFINE_string("checkpoint", None, "big_vision .npz file (local path or gs://...).", required=True)
    flags.DEFINE_string("output", None, "Preset folder to write.", required=True)
    flags.DEFINE_integer("batch_size", 2, "Random image-text pairs used for the numerical check.")
    flags.DEFINE_float("tolerance", 1e-4, "Largest absolute difference accepted (float32 model, float64 NumPy).")
    flags.DEFINE_integer("seed", 0, "Seed of the random check inputs.")


def convert_and_check(checkpoint_path, output, batch_size=2, tolerance=1e-4, seed=0):
    """Writes the preset, checks it against the checkpoint; returns the exit status (0 or 1)."""
    if not os.path.isfile(checkpoint_path):
        checkpoint_path = preset_utils.get_file(os.path.dirname(checkpoint_path), os.path.basename(checkpoint_path))
    from_big_vision(checkpoint_path).save_to_preset(output)
    model = SigLIP.from_preset(output)
    print(f"wrote {output} ({model.count_params():,} parameters)")

    rng = np.random.default_rng(seed)
    height, width = model.image_encoder.image_size
    images = rng.uniform(-1, 1, (batch_size, height, width, 3)).astype("float32")
    text = model.text_encoder
    token_ids = rng.integers(0, text.vocabulary_size, (batch_size, text.sequence_length)).astype("int32")
    outputs = model({"images": images, "token_ids": token_ids})
    ours = (outputs["image_embeddings"], outputs["text_embeddings"],
            model.similarity(outputs["image_embeddings"], outputs["text_embeddings"]))
    params = big_vision_format.normalize_keys(checkpoint.load_npz(checkpoint_path))
    reference = big_vision_reference.forward(params, images, token_ids)
    return report(ours, reference, tolerance)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    sys.exit(convert_and_check(FLAGS.checkpoint, FLAGS.output, FLAGS.batch_size, FLAGS.tolerance, FLAGS.seed))


if __name__ == "__main__":
    define_flags()
    app.run(main)
