"""`keras-siglip-convert SOURCE TARGET --format ...`: any SigLIP checkpoint to any target format, checked.

SOURCE is anything `SigLIP.from_preset` reads (a built-in name, a keras_siglip
or keras-hub preset folder, a transformers folder, `hf://` / `kaggle://`
handles, a big_vision `.npz`); TARGET is written by `keras_siglip.export`
(`--format transformers | keras_hub | big_vision`) or, with `--format
keras_siglip`, as this library's own preset. The written files are then read
back by the target's own library where it is installed (transformers'
`SiglipModel`, keras-hub's `SigLIPBackbone`; big_vision and keras_siglip
targets by this library's loader) and their embeddings on random inputs
compared with the source's: the exit status is 0 only when they agree within
`--tolerance`, 1 on a mismatch, 2 when the conversion itself fails.

Example:
    keras-siglip-convert siglip_base_patch16_224 out/hf --format transformers
    keras-siglip-convert webli_en_b16_224.npz out/keras_hub --format keras_hub
"""

import argparse
import os
import sys

import numpy as np

TARGETS = ("transformers", "keras_hub", "big_vision", "keras_siglip")
# A progress bar is worth its lines from about this size (B/16 has 203M parameters).
PROGRESS_FROM_PARAMETERS = 10_000_000
OUTPUT_NAMES = ("image embeddings", "text embeddings", "log temperature and bias")


def build_parser():
    """The command line's `argparse` parser (no flags are defined at import time)."""
    parser = argparse.ArgumentParser(
        prog="keras-siglip-convert",
        description="Convert a SigLIP checkpoint to transformers, keras-hub, big_vision or keras_siglip, "
        "and check that the written model reproduces the source.")
    parser.add_argument("source", help="what SigLIP.from_preset reads: a preset name, folder, hf:// or "
                        "kaggle:// handle, or a big_vision .npz")
    parser.add_argument("target", help="the folder (or .npz for big_vision) to write")
    parser.add_argument("--format", required=True, choices=TARGETS, help="the target format")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest absolute difference allowed in the check (default 1e-5)")
    parser.add_argument("--text-pool-type", default="last",
                        help="big_vision sources: the text tower's pool_type in its config (default 'last')")
    parser.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help=f"progress bar while writing (auto: from {PROGRESS_FROM_PARAMETERS:,} parameters)")
    parser.add_argument("--batch-size", type=int, default=2, help="random pairs in the check (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the check's random inputs")
    return parser


def main(argv=None):
    """Runs the command line; returns the exit status (0 ok, 1 mismatch, 2 conversion error).

    Args:
        argv: the arguments after the program name; `sys.argv[1:]` when None.
    """
    args = build_parser().parse_args(argv)
    from keras_siglip.presets.conversion_check import ConversionMismatch

    try:
        convert_and_check(args.source, args.target, args.format, tolerance=args.tolerance,
                          text_pool_type=args.text_pool_type, progress=args.progress,
                          batch_size=args.batch_size, seed=args.seed)
    except ConversionMismatch as mismatch:
        print(f"Conversion check failed: {mismatch}", file=sys.stderr)
        return 1
    except (ValueError, OSError, ImportError) as error:
        print(f"keras-siglip-convert: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.target} ({args.format}); it reproduces {args.source}.")
    return 0


def convert_and_check(source, target, format, tolerance=1e-5, text_pool_type="last", progress="auto",
                      batch_size=2, seed=0):
    """Reads `source`, writes `target` in `format`, reads it back and compares; returns the differences.

    Raises `ConversionMismatch` (naming the worst output) when the written
    model does not reproduce the source within `tolerance`.
    """
    from keras_siglip.presets import conversion_check

    model, tokenizer, image_converter = load_source(source, text_pool_type)
    print(f"Read {source}: {model.count_params():,} parameters.")
    _write(model, target, format, tokenizer, image_converter, progress)
    images, token_ids = random_inputs(model, batch_size, seed, image_converter)
    expected = our_outputs(model, images, token_ids)
    written, reader = written_outputs(model, target, format, images, token_ids)
    print(f"Read back {target} with {reader}.")
    errors = conversion_check.differences(expected, written, names=OUTPUT_NAMES)
    conversion_check.print_report(errors, tolerance)
    conversion_check.assert_reproduces(errors, tolerance, source=os.path.basename(source.rstrip("/")) or source)
    return errors


def load_source(source, text_pool_type="last"):
    """`(model, tokenizer or None, image preprocessor or None)` for any handle `from_preset` reads."""
    from keras_siglip.presets import from_big_vision, load_preset

    if str(source).endswith(".npz"):
        model = from_big_vision(source, text_pool_type=text_pool_type)
        vocabulary = source[: -len(".npz")] + ".model"  # where `export` puts a big_vision tokenizer
        tokenizer = None
        if os.path.isfile(vocabulary):
            from keras_siglip.models.siglip.tokenizer import SigLIPTokenizer

            tokenizer = SigLIPTokenizer(vocabulary, sequence_length=model.text_encoder.sequence_length)
        return model, tokenizer, None
    return tuple(load_preset(source))


def _write(model, target, format, tokenizer, image_converter, progress):
    show = progress == "always" or (progress == "auto" and model.count_params() >= PROGRESS_FROM_PARAMETERS)
    bar = _ProgressBar() if show else None
    if format == "keras_siglip":
        from keras_siglip.presets import save_preset

        save_preset(target, model, tokenizer=tokenizer, image_converter=image_converter)
        return
    from keras_siglip.presets.export import export

    export(model, target, format=format, tokenizer=tokenizer,
           image_converter=image_converter if format != "big_vision" else None, progress=bar)


class _ProgressBar:
    """`progress(done, total)` drawn with Keras's progress bar, created on the first call."""

    def __init__(self):
        self.bar = None

    def __call__(self, done, total):
        import keras

        if self.bar is None:
            print("Writing weights:")
            self.bar = keras.utils.Progbar(total, unit_name="weight")
        self.bar.update(done)


def random_inputs(model, batch_size, seed, image_converter=None):
    """Random images and token ids inside the vocabulary, sized for `model`.

    Images are `(B, S, S, 3)` in [-1, 1]; for a NaFlex tower, random uint8
    images of other sizes and aspect ratios run through its preprocessor
    (`image_converter`, or one of 256 patches), giving its dict of inputs.
    """
    rng = np.random.default_rng(seed)
    if "pixel_values" in getattr(model.image_encoder, "input_keys", ()):
        from keras_siglip.models.siglip.naflex_image_preprocessor import NaFlexImagePreprocessor

        preprocessor = image_converter or NaFlexImagePreprocessor(model.image_encoder.patch_size, 256)
        sizes = [(int(rng.integers(16, 400)), int(rng.integers(16, 400))) for _ in range(batch_size)]
        images = {key: np.asarray(value) for key, value in preprocessor(
            [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]).items()}
    else:
        size = model.image_encoder.image_size[0]
        images = rng.uniform(-1, 1, (batch_size, size, size, 3)).astype("float32")
    token_ids = rng.integers(0, model.text_encoder.vocabulary_size,
                             (batch_size, model.text_encoder.sequence_length)).astype("int32")
    return images, token_ids


def _scalars(log_temperature, bias):
    return np.array([float(np.asarray(log_temperature).reshape(())), float(np.asarray(bias).reshape(()))])


def our_outputs(model, images, token_ids):
    """`(image embeddings, text embeddings, [t', b])` of a keras_siglip model."""
    import keras

    out = model({**(images if isinstance(images, dict) else {"images": images}), "token_ids": token_ids})
    scalars = _scalars(keras.ops.convert_to_numpy(model.log_temperature), keras.ops.convert_to_numpy(model.bias))
    return keras.ops.convert_to_numpy(out["image_embeddings"]), keras.ops.convert_to_numpy(out["text_embeddings"]), scalars


def written_outputs(model, target, format, images, token_ids):
    """The written model's outputs, computed by the target's own library where it is installed."""
    import importlib.util

    if format == "transformers" and all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        if isinstance(images, dict):
            return _transformers_outputs(target, images, token_ids), "transformers' Siglip2Model"
        return _transformers_outputs(target, images, token_ids), "transformers' SiglipModel"
    if format == "keras_hub":
        return _keras_hub_outputs(target, images, token_ids), "keras-hub's SigLIPBackbone"
    from keras_siglip.presets import from_big_vision, from_preset

    if format == "big_vision":
        from keras_siglip.presets import big_vision_format
        from keras_siglip.presets.checkpoint import model_config

        pool_type = big_vision_format.pool_type(model_config(model))
        reloaded = from_big_vision(target, text_pool_type=pool_type)
    else:
        reloaded = from_preset(target)
    return our_outputs(reloaded, images, token_ids), "keras_siglip's loader"


def _transformers_outputs(folder, images, token_ids):
    import torch
    import transformers

    naflex = isinstance(images, dict)  # a NaFlex tower's inputs: transformers' Siglip2Model
    model_class = transformers.Siglip2Model if naflex else transformers.SiglipModel
    model, info = model_class.from_pretrained(folder, output_loading_info=True)
    problems = {key: sorted(value) for key, value in info.items() if value}
    if problems:
        from keras_siglip.presets.conversion_check import ConversionMismatch

        raise ConversionMismatch(f"transformers reports problems loading {folder}: {problems}")
    model.eval()
    with torch.no_grad():
        if naflex:
            pixels = {key: torch.from_numpy(value) for key, value in images.items()}
        else:
            pixels = {"pixel_values": torch.from_numpy(images.transpose(0, 3, 1, 2).copy())}
        out = model(input_ids=torch.from_numpy(token_ids).long(), **pixels)
    return (out.image_embeds.numpy(), out.text_embeds.numpy(),
            _scalars(model.logit_scale.detach().numpy(), model.logit_bias.detach().numpy()))


def _keras_hub_outputs(folder, images, token_ids):
    import keras
    import keras_hub

    backbone = keras_hub.models.SigLIPBackbone.from_preset(folder)

    def normalized(x):
        x = keras.ops.convert_to_numpy(x)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    head = backbone.siglip_head
    return (normalized(backbone.get_vision_embeddings(images)), normalized(backbone.get_text_embeddings(token_ids)),
            _scalars(keras.ops.convert_to_numpy(head.logit_scale), keras.ops.convert_to_numpy(head.logit_bias)))


if __name__ == "__main__":
    sys.exit(main())
