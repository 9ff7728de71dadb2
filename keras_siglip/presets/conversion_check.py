"""The converters' numerical check: a converted model must reproduce its source.

`keras-siglip-convert` (`keras_siglip.convert`), `tools/convert_big_vision.py`
and `tools/convert_hf.py` run the converted model and its source (a NumPy
oracle, or transformers / keras-hub themselves) on the same random inputs,
print one line per output with `print_report`, and `assert_reproduces` raises
`ConversionMismatch` naming the worst output, its largest difference, where it
lies and the tolerance. `exit_status` turns that into the scripts' exit status
(1 on a mismatch).
"""

import sys

import numpy as np

OUTPUTS = ("image embeddings", "text embeddings", "logits")


class ConversionMismatch(AssertionError):
    """A converted model's outputs differ from its source's by more than the tolerance."""


def differences(ours, reference, names=OUTPUTS):
    """`{name: (largest absolute difference, index of it)}` per output pair, in float64.

    A shape mismatch raises `ConversionMismatch`; a NaN or infinity counts as an infinite difference.
    """
    result = {}
    for name, mine, theirs in zip(names, ours, reference, strict=True):
        mine, theirs = _to_float64(mine), _to_float64(theirs)
        if mine.shape != theirs.shape:
            raise ConversionMismatch(f"{name}: converted shape {mine.shape}, source shape {theirs.shape}.")
        difference = np.abs(mine - theirs)
        difference[~np.isfinite(difference)] = np.inf
        index = np.unravel_index(int(np.argmax(difference)), difference.shape) if difference.size else ()
        result[name] = (float(difference[index]) if difference.size else 0.0, tuple(int(i) for i in index))
    return result


def print_report(errors, tolerance, file=None):
    """One line per output: its largest absolute difference and `ok` or `MISMATCH`."""
    for name, (error, _) in errors.items():
        print(f"{name:<17} max abs error {error:.2e}  {'ok' if error <= tolerance else 'MISMATCH'}", file=file)


def assert_reproduces(errors, tolerance, source="the source"):
    """Raises `ConversionMismatch` unless every output's largest difference is within `tolerance`."""
    worst, (error, index) = max(errors.items(), key=lambda item: item[1][0])
    if not error <= tolerance:
        others = ", ".join(f"{name} {e:.2e}" for name, (e, _) in errors.items() if name != worst)
        raise ConversionMismatch(
            f"the converted model does not reproduce {source}: {worst} differ by up to {error:.2e} "
            f"at {list(index)}, above the tolerance {tolerance:g} (others: {others})."
        )


def exit_status(check, *args, **kwargs):
    """`check(*args, **kwargs)`; 0 if it passes, 1 (with the reason on stderr) on a `ConversionMismatch`."""
    try:
        check(*args, **kwargs)
    except ConversionMismatch as mismatch:
        print(f"Conversion check failed: {mismatch}", file=sys.stderr)
        return 1
    return 0


def _to_float64(x):
    if not isinstance(x, np.ndarray):
        import keras

        x = keras.ops.convert_to_numpy(x)
    return np.asarray(x, np.float64)
