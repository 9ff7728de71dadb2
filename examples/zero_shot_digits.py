"""Zero-shot classification and retrieval with the preset the main job wrote.

    KERAS_BACKEND=jax python -m keras_siglip.train          # writes siglip_main_job/preset
    KERAS_BACKEND=jax python examples/zero_shot_digits.py siglip_main_job/preset
"""

import sys

from keras_siglip import evaluation, presets
from keras_siglip.data import load_digits

model, tokenizer, _ = presets.load_preset(sys.argv[1] if len(sys.argv) > 1 else "siglip_main_job/preset")
test = load_digits("test", image_size=model.image_encoder.image_size[0])

# Class names and templates, as one would write them for a new task.
classifier = evaluation.ZeroShotClassifier(
    model, tokenizer, test.class_names, templates=["a picture of the digit {}", "{}"]
)
print("zero-shot:", classifier.evaluate(test.images, test.labels))
print("first predictions:", [test.class_names[i] for i in classifier.predict(test.images[:8])])

texts, relevance = test.retrieval_set()
recall = evaluation.retrieval_recall(
    evaluation.encode_images(model, test.images),
    evaluation.encode_texts(model, tokenizer, texts),
    relevance=relevance,
)
print("retrieval:", recall)
