"""ImageCheck without a pipeline: bad records dropped and listed, good records copied byte for
byte in the same layout, the fraction limit, and the span/format properties copied."""
from __future__ import annotations

import io
import json
import os

import pytest

from components.custom import image_check


def _png(value: int) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _example(image: bytes | None, label: int, filename: str) -> bytes:
    import tensorflow as tf

    feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
               "filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                   value=[filename.encode()]))}
    if image is not None:
        feature["image"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_split(root, split: str, shards: dict) -> None:
    import tensorflow as tf

    os.makedirs(os.path.join(root, "Split-%s" % split), exist_ok=True)
    for name, records in shards.items():
        with tf.io.TFRecordWriter(os.path.join(root, "Split-%s" % split, name), "GZIP") as w:
            for r in records:
                w.write(r)


def _read(path: str) -> list:
    import tensorflow as tf
    return [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]


@pytest.fixture()
def examples(tmp_path):
    good = [_example(_png(10 * i), i % 2, "ok/%d.png" % i) for i in range(12)]
    truncated = _example(_png(200)[:20], 1, "bad/truncated.png")
    garbage = _example(b"\x00not an image", 0, "bad/garbage.bin")
    root = str(tmp_path / "examples")
    _write_split(root, "train", {"data_tfrecord-00000-of-00002.gz": good[:5] + [truncated]
                                 + good[5:8],
                                 "data_tfrecord-00001-of-00002.gz": good[8:]})
    _write_split(root, "eval", {"data_tfrecord-00000-of-00001.gz": good[:4] + [garbage]
                                + good[4:10]})
    return root, good, truncated, garbage


def test_bad_records_dropped_listed_and_good_ones_copied(examples, tmp_path):
    root, good, _, _ = examples
    out = str(tmp_path / "cleaned")
    report = image_check.check_examples(root, out, ["train", "eval"], "image", "label",
                                        max_bad_fraction=0.1)
    assert sorted(os.listdir(os.path.join(out, "Split-train"))) == [
        "data_tfrecord-00000-of-00002.gz", "data_tfrecord-00001-of-00002.gz"]
    assert _read(os.path.join(out, "Split-train", "data_tfrecord-00000-of-00002.gz")) == good[:8]
    assert _read(os.path.join(out, "Split-train", "data_tfrecord-00001-of-00002.gz")) == good[8:]
    assert _read(os.path.join(out, "Split-eval", "data_tfrecord-00000-of-00001.gz")) == good[:10]
    assert report["splits"]["train"] == {"records": 13, "bad": 1,
                                         "label_counts": {"0": 6, "1": 6}}
    assert report["splits"]["eval"]["bad"] == 1
    bad = {b["filename"]: b for b in report["bad_records"]}
    assert bad["bad/truncated.png"]["split"] == "train"
    assert bad["bad/truncated.png"]["file"] == "Split-train/data_tfrecord-00000-of-00002.gz"
    assert bad["bad/truncated.png"]["index"] == 5
    assert bad["bad/garbage.bin"]["index"] == 4
    assert "Unknown image file format" in bad["bad/garbage.bin"]["error"]
    assert "Op:" not in bad["bad/truncated.png"]["error"]
    json.dumps(report)  # the component writes it as JSON


def test_more_bad_than_the_limit_fails_naming_the_records(tmp_path):
    good = [_example(_png(i), 0, "ok/%d.png" % i) for i in range(8)]
    bad = [_example(b"junk%d" % i, 0, "bad/%d.jpg" % i) for i in range(2)]
    root = str(tmp_path / "examples")
    _write_split(root, "train", {"a.gz": good})
    _write_split(root, "eval", {"a.gz": good[:4] + bad})
    with pytest.raises(image_check.CorruptImages) as info:
        image_check.check_examples(root, str(tmp_path / "out"), ["train", "eval"], "image",
                                   "label", max_bad_fraction=0.1)
    message = str(info.value)
    assert "split 'eval': 2 of 6 records" in message and "10 %" in message
    assert "bad/0.jpg" in message and "Split-eval/a.gz record 4" in message
    assert "'train'" not in message
    # the same data passes with a looser limit
    report = image_check.check_examples(root, str(tmp_path / "out2"), ["train", "eval"],
                                        "image", "label", max_bad_fraction=0.5)
    assert report["splits"]["eval"]["bad"] == 2


def test_missing_image_feature_names_the_flag(tmp_path):
    root = str(tmp_path / "examples")
    _write_split(root, "train", {"a.gz": [_example(None, 0, "x.png")]})
    with pytest.raises(image_check.CorruptImages, match="--image-key"):
        image_check.check_examples(root, str(tmp_path / "out"), ["train"], "image", "label",
                                   max_bad_fraction=0.1)


def test_span_version_and_formats_are_copied():
    from tfx.dsl.input_resolution.strategies import span_range_strategy
    from tfx.types import standard_artifacts

    source = standard_artifacts.Examples()
    source.split_names = '["train", "eval"]'
    source.set_int_custom_property("span", 7)
    source.set_int_custom_property("version", 2)
    source.set_string_custom_property("payload_format", "FORMAT_TF_EXAMPLE")
    source.set_string_custom_property("file_format", "tfrecords_gzip")
    source.set_string_custom_property("input_fingerprint", "split:train,num_files:1")
    target = standard_artifacts.Examples()
    image_check.copy_properties(source, target)
    assert span_range_strategy._get_span_custom_property(target) == 7
    assert target.get_int_custom_property("version") == 2
    assert target.split_names == source.split_names
    assert target.get_string_custom_property("file_format") == "tfrecords_gzip"
    assert target.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"


def test_streaming_in_chunks_keeps_record_indices(examples, tmp_path):
    import concurrent.futures

    root, good, truncated, _ = examples
    src = os.path.join(root, "Split-train", "data_tfrecord-00000-of-00002.gz")
    dst = str(tmp_path / "out.gz")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        result = image_check.check_file(src, dst, "image", "label", pool, chunk=4)
    assert result["records"] == 9 and [b["index"] for b in result["bad"]] == [5]
    assert _read(dst) == good[:8]
