"""Test data with faults: the small digits set of the e2e test, plus corrupt images written
into its TFRecord shards among the good records (truncated JPEG bytes, random bytes)."""
from __future__ import annotations

import io
import random
from pathlib import Path

from pipeline_runs import CLASSES, PER_CLASS, PNG_SIZE


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (PNG_SIZE, PNG_SIZE, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90)
    return buf.getvalue()


def bad_example(image: bytes, filename: str, label: int = 0) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# (split, position in the shard, filename feature, bytes): 2 of ~50 train, 1 of ~11 test (the
# split the Evaluator reads).
def corrupt_records() -> list:
    jpeg = _jpeg(0)
    return [
        ("train", 5, "corrupt/truncated.jpg", jpeg[: len(jpeg) // 2]),
        ("train", 11, "corrupt/random.bin", random.Random(1).randbytes(700)),
        ("test", 3, "corrupt/test-truncated.jpg", jpeg[: len(jpeg) * 2 // 3]),
    ]


def inject(data_dir: Path, records=None) -> list:
    """Rewrites the first shard of each split of span-1 with the corrupt records inserted at
    their positions; returns the records (split, position, filename, bytes)."""
    import tensorflow as tf

    records = corrupt_records() if records is None else records
    for split in sorted({s for s, _, _, _ in records}):
        shard = sorted((Path(data_dir) / "span-1" / split).iterdir())[0]
        good = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
        for s, position, filename, image in records:
            if s == split:
                good.insert(position, bad_example(image, filename))
        with tf.io.TFRecordWriter(str(shard)) as w:
            for r in good:
                w.write(r)
    return records


def build(root: Path, corrupt: bool = True) -> Path:
    from pipeline.data import demo_dataset

    data = Path(demo_dataset.build(Path(root) / "data", per_class=PER_CLASS,
                                   image_size=PNG_SIZE, classes=CLASSES, log=lambda *_: None))
    if corrupt:
        inject(data)
    return data
