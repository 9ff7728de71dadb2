"""Converts a big_vision SigLIP `.npz` into a keras_siglip preset folder, then checks it.

Reads both the per-layer and the stacked "scan" layouts (bf16 stored as void
included), writes `config.json` + `metadata.json` + `model.weights.h5`, reloads
the folder and compares image embeddings, text embeddings and logits on random
inputs with an independent NumPy forward pass over the checkpoint
(`tools/big_vision_reference.py`). Prints one line per output and exits 1,
naming the worst output and the tolerance, unless the converted model
reproduces the checkpoint.

    python tools/convert_big_vision.py --checkpoint=webli_en_b16_224_63724782.npz \
        --output=presets/siglip_base_patch16_224
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling modules below, however loaded

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import big_vision_reference  # noqa: E402
from conversion_check import ConversionMismatch, assert_reproduces, differences, exit_status, print_report  # noqa: E402, F401
from keras_siglip import SigLIP  # noqa: E402
from keras_siglip.presets import big_vision_format, checkpoint, from_big_vision  # noqa: E402
from keras_siglip.presets.loader import preset_utils  # noqa: E402


def define_flags():
    flags.DEFINE_string("checkpoint", None, "big_vision .npz file (local path or gs://...).", required=True)
    flags.DEFINE_string("output", None, "Preset folder to write.", required=True)
    flags.DEFINE_integer("batch_size", 2, "Random image-text pairs used for the numerical check.")
    flags.DEFINE_float("tolerance", 1e-4, "Largest absolute difference accepted (float32 model, float64 NumPy).")
    flags.DEFINE_integer("seed", 0, "Seed of the random check inputs.")


def convert_and_check(checkpoint_path, output, batch_size=2, tolerance=1e-4, seed=0):
    """Writes the preset and prints its differences from the checkpoint's NumPy forward pass.

    Returns `{output name: (largest absolute difference, index)}`; raises `ConversionMismatch`
    if any exceeds `tolerance`.
    """
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
    errors = differences(ours, big_vision_reference.forward(params, images, token_ids))
    print_report(errors, tolerance)
    assert_reproduces(errors, tolerance, source=os.path.basename(checkpoint_path))
    return errors


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    sys.exit(exit_status(convert_and_check, FLAGS.checkpoint, FLAGS.output, FLAGS.batch_size, FLAGS.tolerance,
                         FLAGS.seed))


if __name__ == "__main__":
    define_flags()
    app.run(main)
