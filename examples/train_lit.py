"""SigLiT on the embedded digits: lock a pretrained image tower, cache its embeddings once,
then train a fresh text tower from the cache (only the text tower runs).

    KERAS_BACKEND=jax python examples/train_lit.py                       # pretrains a small tower first
    KERAS_BACKEND=jax python examples/train_lit.py --pretrained=siglip_main_job/preset --lit_steps=300

`--pretrained` takes any handle `SigLIP.from_preset` accepts (the main job's
`preset/` folder, a transformers folder, a built-in name when online).
"""

import pathlib

from absl import app, flags

flags.DEFINE_string("pretrained", None, "Preset whose image tower is locked; default: pretrain one here.")
flags.DEFINE_integer("pretrain_steps", 300, "Steps of the SigLIP run that makes the image tower.")
# Prefixed, to stay clear of the main job's flag names (`python -m keras_siglip.train --helpfull`).
flags.DEFINE_integer("lit_steps", 300, "SigLiT text-tower training steps.")
flags.DEFINE_integer("lit_batch_size", 64, "Pairs per SigLiT step.")
flags.DEFINE_string("lit_workdir", "siglit_example", "Output folder.")
FLAGS = flags.FLAGS


def main(argv):
    import keras
    import numpy as np

    from keras_siglip import SigLIP, TextEncoder, train
    from keras_siglip.data import read_embedding_cache, write_embedding_cache
    from keras_siglip.presets import load_preset

    workdir = pathlib.Path(FLAGS.lit_workdir)
    pretrained = FLAGS.pretrained
    if pretrained is None:
        train.run(train.default_config(steps=FLAGS.pretrain_steps, workdir=str(workdir / "pretrain"),
                                       eval_every=0, tensorboard=False, verbose=2))
        pretrained = str(workdir / "pretrain" / "preset")
    source, tokenizer, _ = load_preset(pretrained)

    # A fresh text tower of the same shape on the locked, pretrained image tower.
    keras.utils.set_random_seed(1)
    text_encoder = TextEncoder.from_config(source.text_encoder.get_config())
    model = SigLIP(source.image_encoder, text_encoder, lock_image_tower=True)

    image_size = model.image_encoder.image_size[0]
    train_split, test_split = train.load_data("digits", "en", image_size)
    texts, caption_ids = train_split.caption_table()
    token_ids = train.tokenize(tokenizer, texts)
    # One cache entry per (image, caption) pair: each image is embedded once per caption.
    images = np.repeat(train_split.images, caption_ids.shape[1], axis=0)
    pair_tokens = token_ids[caption_ids.reshape(-1)]
    batches = ({"images": images[i : i + 256], "token_ids": pair_tokens[i : i + 256]} for i in range(0, len(images), 256))
    manifest = write_embedding_cache(model.image_encoder, batches, str(workdir / "cache"))
    print(f"Cached {manifest['count']} image embeddings of width {manifest['embedding_dim']}.")

    dataset = read_embedding_cache(str(workdir / "cache"), FLAGS.lit_batch_size, embedding_dim=model.image_encoder.embedding_dim,
                                   expected_count=len(images), seed=0)
    steps_per_epoch = manifest["count"] // FLAGS.lit_batch_size
    model.compile(learning_rate=train.learning_rate_schedule(3e-3, 50, FLAGS.lit_steps))
    model.fit(dataset.repeat(), steps_per_epoch=steps_per_epoch, epochs=max(FLAGS.lit_steps // steps_per_epoch, 1), verbose=2)

    for name, evaluated in (("pretrained SigLIP", source), ("SigLiT (new text tower)", model)):
        results = train.evaluate(evaluated, tokenizer, test_split)
        print(f"{name}: held-out zero-shot top-1 {results['zero_shot']['en']['top1']:.1%}")


if __name__ == "__main__":
    app.run(main)
