"""examples/finetune_on_your_data.py: a tiny random preset fine-tuned on a folder of captioned JPEGs, then exported."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from keras_siglip import SigLIP, SigLIPImagePreprocessor, SigLIPTokenizer
from keras_siglip.data import EMBEDDED_VOCABULARY

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.backend_independent
def test_finetune_example_trains_evaluates_and_exports(tmp_path):
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("finetune_example", ROOT / "examples" / "finetune_on_your_data.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    images = tmp_path / "photos"
    images.mkdir()
    for i in range(20):
        pixels = np.full((10, 10, 3), 12 * i, "uint8")
        (images / f"{i:02d}.jpg").write_bytes(tf.io.encode_jpeg(pixels).numpy())
        (images / f"{i:02d}.txt").write_text(f"a grey square of shade {i}")
    (images / "no_caption.jpg").write_bytes(tf.io.encode_jpeg(np.zeros((4, 4, 3), "uint8")).numpy())
    model = SigLIP.from_variant("tiny", image_size=8, patch_size=4, vocabulary_size=400, sequence_length=8)
    preset = tmp_path / "preset"
    model.save_to_preset(str(preset), tokenizer=SigLIPTokenizer(str(EMBEDDED_VOCABULARY), sequence_length=8),
                         image_converter=SigLIPImagePreprocessor(8))

    before, results, exported = example.finetune(str(images), str(preset), str(tmp_path / "out"), steps=2,
                                                 batch_size=6)
    assert before["pairs"] == results["retrieval"]["pairs"] == 2  # every tenth of the 20 captioned images
    assert results["steps"] == 2 and 0.0 <= results["retrieval"]["image_to_text"][1] <= 1.0
    config = json.loads((pathlib.Path(exported) / "config.json").read_text())
    assert config["vision_config"]["image_size"] == 8
