"""Converts a Hugging Face transformers SigLIP checkpoint into a keras_siglip preset folder, then checks it.

`--source` is a local folder (config.json + safetensors) or an `hf://org/name`
handle. The preset is written, reloaded, and its image embeddings, text
embeddings and logits on random inputs are compared with transformers'
`SiglipModel` (torch, CPU) on the same checkpoint. Prints one line per output
and exits 1, naming the worst output and the tolerance, unless the converted
model reproduces the checkpoint.

    python tools/convert_hf.py --source=hf://google/siglip-base-patch16-224 \
        --output=presets/siglip_base_patch16_224
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_check, however this is loaded

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from conversion_check import ConversionMismatch, assert_reproduces, differences, exit_status, print_report  # noqa: E402, F401
from keras_siglip import SigLIP  # noqa: E402
from keras_siglip.presets import from_transformers  # noqa: E402
from keras_siglip.presets.loader import preset_utils  # noqa: E402


def define_flags():
    flags.DEFINE_string("source", None, "transformers SigLIP folder or hf:// handle.", required=True)
    flags.DEFINE_string("output", None, "Preset folder to write.", required=True)
    flags.DEFINE_integer("batch_size", 2, "Random image-text pairs used for the numerical check.")
    flags.DEFINE_float("tolerance", 1e-4, "Largest absolute difference accepted.")
    flags.DEFINE_integer("seed", 0, "Seed of the random check inputs.")


def transformers_outputs(folder, images, token_ids):
    """transformers' own image embeddings, text embeddings and logits (images x texts)."""
    import torch
    import transformers

    reference = transformers.SiglipModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out = reference(input_ids=torch.from_numpy(token_ids).long(),
                        pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def convert_and_check(source, output, batch_size=2, tolerance=1e-4, seed=0):
    """Writes the preset and prints its differences from transformers on the same checkpoint.

    Returns `{output name: (largest absolute difference, index)}`; raises `ConversionMismatch`
    if any exceeds `tolerance`.
    """
    from_transformers(source).save_to_preset(output)
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
    # Downloaded files sit together in one snapshot folder that transformers can read.
    folder = os.path.dirname(preset_utils.get_file(source, preset_utils.CONFIG_FILE))
    errors = differences(ours, transformers_outputs(folder, images, token_ids))
    print_report(errors, tolerance)
    assert_reproduces(errors, tolerance, source=source)
    return errors


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    sys.exit(exit_status(convert_and_check, FLAGS.source, FLAGS.output, FLAGS.batch_size, FLAGS.tolerance,
                         FLAGS.seed))


if __name__ == "__main__":
    define_flags()
    app.run(main)
