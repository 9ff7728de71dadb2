"""Data: readers that feed `SigLIP.fit` and the small embedded data sets."""

from keras_siglip.data.readers import SkippedImages, make_pipeline, read_manifest, read_tar_shards, read_tfrecords
from keras_siglip.data.embedding_cache import read_embedding_cache, write_embedding_cache
from keras_siglip.data.embedded import EMBEDDED_VOCABULARY, CaptionedImages, PairBatches
from keras_siglip.data.digits import load_digits
from keras_siglip.data.shapes import load_shapes
