"""A data set K times larger for timing runs: each record of each split of a `graft
make-tfrecords` span written K times, copies 2..K altered (flipped and/or cropped, re-encoded
as JPEG) so that no two copies of a record hold the same image bytes.

For wall-time measurements at a scale the shared data does not reach (#11's held-out
flowers split: 2,934 training and 736 held-out photos; flowers-dev x4 gives 2,844 / 564 /
592). Copies stay in their original's split (no photo crosses from train to eval or test),
but a split's copies of one photo are near-duplicates of each other: accuracy on such a set
says nothing about held-out photos and the benchmarks that use it report it only as a
check that training ran.

    .venv/bin/python -m bench.scale_records TFRECORDS_DIR K
"""
from __future__ import annotations

import glob
import json
import os
import sys

import tensorflow as tf

SPLITS = ("train", "eval", "test")


def variant(image: bytes, copy: int) -> bytes:
    """Copy `copy` (1..K-1) of an encoded image: odd copies flipped left-right; copies 2 and
    up centre-cropped to 100 - 4 * (copy // 2) percent of each side; JPEG quality 90."""
    pixels = tf.io.decode_image(image, channels=3, expand_animations=False)
    if copy % 2:
        pixels = tf.image.flip_left_right(pixels)
    if copy >= 2:
        pixels = tf.image.central_crop(pixels, 1.0 - 0.04 * (copy // 2))
    return tf.io.encode_jpeg(pixels, quality=90).numpy()


def scale(data_dir: str, copies: int, span: int = 1) -> dict:
    """Rewrites DATA_DIR/span-N/<split>/ in place with `copies` records per record (all the
    originals first, then every first copy, ...: a photo's copies are not adjacent); returns
    {split: records}. The span's conversion.json (make-tfrecords' duplicate report) is
    removed: it describes the original files. copies=1 leaves the files as they are."""
    if copies < 1:
        raise ValueError("copies must be >= 1, got %d" % copies)
    span_dir = os.path.join(data_dir, "span-%d" % span)
    counts = {}
    for split in SPLITS:
        shards = sorted(glob.glob(os.path.join(span_dir, split, "*.tfrecord")))
        if not shards:
            continue
        records = [r.numpy() for r in tf.data.TFRecordDataset(shards)]
        if copies == 1:
            counts[split] = len(records)
            continue
        writers = [tf.io.TFRecordWriter(path + ".tmp") for path in shards]
        n = 0
        for copy in range(copies):
            for record in records:
                if copy:
                    example = tf.train.Example.FromString(record)
                    feature = example.features.feature
                    feature["image"].bytes_list.value[0] = variant(
                        feature["image"].bytes_list.value[0], copy)
                    if "filename" in feature:
                        name = feature["filename"].bytes_list.value[0]
                        feature["filename"].bytes_list.value[0] = name + b"#copy%d" % copy
                    record = example.SerializeToString()
                writers[n % len(writers)].write(record)
                n += 1
        for writer, path in zip(writers, shards):
            writer.close()
            os.replace(path + ".tmp", path)
        counts[split] = n
    summary = os.path.join(span_dir, "conversion.json")
    if copies > 1 and os.path.exists(summary):
        os.remove(summary)
    return counts


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip())
        return 2
    print(json.dumps(scale(argv[0], int(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
