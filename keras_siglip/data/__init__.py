"""Data: readers that feed `SigLIP.fit` and the small embedded data sets."""

from keras_siglip.data.readers import SkippedImages, make_pipeline, read_manifest, read_tar_shards, read_tfrecords
