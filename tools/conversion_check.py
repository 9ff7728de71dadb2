"""The converter scripts' numerical check, now `keras_siglip.presets.conversion_check` (re-exported here).

`tools/convert_big_vision.py` and `tools/convert_hf.py` import it by this name;
the console script `keras-siglip-convert` uses the package module.
"""

from keras_siglip.presets.conversion_check import (  # noqa: F401
    OUTPUTS,
    ConversionMismatch,
    assert_reproduces,
    differences,
    exit_status,
    print_report,
)
