"""bench/scale_records.py: the K-times data set for timing runs keeps every copy in its
original's split, with the original's label, and the copies of a record differ in bytes."""
from __future__ import annotations

import collections
import glob
import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
import span_records  # noqa: E402
from PIL import Image  # noqa: E402

from bench import scale_records  # noqa: E402
from pipeline.data import make_tfrecords  # noqa: E402


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Three classes of eight 24 x 20 noise JPEGs."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(8):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(buf, "JPEG")
            (tmp_path / "images" / cls / ("%d.jpg" % i)).write_bytes(buf.getvalue())
    return tmp_path / "images"


def test_copies_stay_in_their_split_with_their_label_and_differ(images, tmp_path):
    out = tmp_path / "records"
    make_tfrecords.convert(str(images), str(out), eval_fraction=0.25, test_fraction=0.25,
                           log=lambda _: None)
    before = span_records.splits(out)
    counts = scale_records.scale(str(out), 3)

    after = span_records.splits(out)
    assert counts == {s: 3 * len(r) for s, r in before.items()}
    assert not (out / "span-1" / "conversion.json").exists()
    for split, records in before.items():
        # Every original, by file name, is in the same split three times with its label.
        want = collections.Counter((r["filename"], r["label"]) for r in records)
        got = collections.Counter((r["filename"].split(b"#copy")[0], r["label"])
                                  for r in after[split])
        assert got == collections.Counter({k: 3 * n for k, n in want.items()})
    copies = collections.defaultdict(set)
    for r in (r for rs in after.values() for r in rs):
        copies[r["filename"].split(b"#copy")[0]].add(r["image"])
    assert all(len(v) == 3 for v in copies.values()), copies
    for record in after["train"]:
        assert tf.io.decode_image(record["image"], channels=3).shape[-1] == 3
    assert not glob.glob(str(out / "span-1" / "*" / "*.tmp"))


def test_one_copy_is_the_data_itself_and_zero_is_refused(images, tmp_path):
    out = tmp_path / "records"
    make_tfrecords.convert(str(images), str(out), log=lambda _: None)
    before = span_records.splits(out)
    assert scale_records.scale(str(out), 1) == {s: len(r) for s, r in before.items()}
    assert span_records.splits(out) == before
    assert (out / "span-1" / "conversion.json").exists()
    with pytest.raises(ValueError, match="copies must be >= 1"):
        scale_records.scale(str(out), 0)
