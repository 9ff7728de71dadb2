"""Runs a locked image tower once over a data set and writes its embeddings (SigLiT).

    python tools/cache_image_embeddings.py --preset=siglip_base_patch16_224 \
        --manifest=pairs.csv --output=cache/ --batch_size=256

Rerun the same command after an interruption: it resumes after the last
complete shard. Train from the cache with
`keras_siglip.data.read_embedding_cache` and a `SigLIP(..., lock_image_tower=True)`.
"""

from absl import app, flags

flags.DEFINE_string("preset", None, "Model whose image tower is cached: a preset handle or a .keras file.", required=True)
flags.DEFINE_string("manifest", None, "CSV/TSV/JSONL manifest of image paths and captions.", required=True)
flags.DEFINE_string("output", None, "Cache folder (created; resumed if unfinished).", required=True)
flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
flags.DEFINE_integer("examples_per_shard", 8192, "Examples per shard file.")
FLAGS = flags.FLAGS


def main(argv):
    import keras

    from keras_siglip.data import read_manifest, write_embedding_cache
    from keras_siglip.presets import load_preset
    from keras_siglip.models.siglip import SigLIPImagePreprocessor

    if FLAGS.preset.endswith(".keras"):
        raise app.UsageError(
            "A .keras file holds no tokenizer; save the model with save_to_preset(folder, tokenizer=...) "
            "and pass that folder."
        )
    model, tokenizer, image_converter = load_preset(FLAGS.preset)
    if tokenizer is None:
        raise app.UsageError(f"{FLAGS.preset} has no tokenizer to encode the captions with.")
    image_converter = image_converter or SigLIPImagePreprocessor(image_size=model.image_encoder.image_size)
    dataset = read_manifest(
        FLAGS.manifest, tokenizer, image_converter, FLAGS.batch_size, training=False, shuffle_buffer=0,
        drop_remainder=False, deterministic=True,
    )
    manifest = write_embedding_cache(
        model.image_encoder, dataset.as_numpy_iterator(), FLAGS.output, FLAGS.examples_per_shard
    )
    skipped = getattr(dataset, "skipped_images", None)
    print(
        f"{FLAGS.output}: {manifest['count']} embeddings of width {manifest['embedding_dim']} in "
        f"{len(manifest['shards'])} shards" + (f"; {skipped}" if skipped else "")
    )
    keras.utils.clear_session()


if __name__ == "__main__":
    app.run(main)
