"""Data: readers that feed `SigLIP.fit` and the small embedded data sets.

The embedded data sets (`load_digits`, `load_shapes`, `PairBatches`) need NumPy
only (`load_digits` also scikit-learn); the readers (`read_manifest`,
`read_tar_shards`, `read_tfrecords`, `make_pipeline`) are `tf.data` pipelines,
imported on first use: without TensorFlow they raise an ImportError naming
`pip install "keras-siglip[tensorflow]"`.
"""

import importlib

from keras_siglip.data.digits import load_digits
from keras_siglip.data.embedded import EMBEDDED_VOCABULARY, CaptionedImages, PairBatches
from keras_siglip.data.embedding_cache import read_embedding_cache, write_embedding_cache
from keras_siglip.data.shapes import load_shapes

_LAZY_ATTRIBUTES = {
    name: "keras_siglip.data.readers"
    for name in ("SkippedImages", "make_pipeline", "read_manifest", "read_tar_shards", "read_tfrecords")
}


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "EMBEDDED_VOCABULARY",
    "CaptionedImages",
    "PairBatches",
    "SkippedImages",
    "load_digits",
    "load_shapes",
    "make_pipeline",
    "read_embedding_cache",
    "read_manifest",
    "read_tar_shards",
    "read_tfrecords",
    "write_embedding_cache",
]
