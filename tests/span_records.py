"""The records of a `graft make-tfrecords` span, parsed: a test helper
(`import span_records` in tests, as toy_model)."""
from __future__ import annotations

import glob
from pathlib import Path

import tensorflow as tf

from pipeline.data import make_tfrecords

FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "label_text": tf.io.FixedLenFeature([], tf.string),
    "filename": tf.io.FixedLenFeature([], tf.string),
}


def read(paths) -> list[dict]:
    """Every record of the TFRecord files, in file order, as {feature: numpy value}."""
    ds = tf.data.TFRecordDataset(sorted(paths)).map(
        lambda r: tf.io.parse_single_example(r, FEATURES))
    return [{k: v.numpy() for k, v in ex.items()} for ex in ds]


def splits(out: Path, span: int = 1) -> dict[str, list[dict]]:
    """{split: read(its files)} for each split OUT/span-SPAN has."""
    return {s: read(glob.glob(str(out / f"span-{span}" / s / "*")))
            for s in make_tfrecords.SPLITS if (out / f"span-{span}" / s).is_dir()}
