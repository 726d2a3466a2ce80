"""Duplicates found by make-tfrecords reach the run report: span-N/conversion.json is read by
pipeline.reporting.facts and shown in the Data section of report.html (the same photo in
train and eval inflates the accuracy that gates a push)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402

from pipeline.data.make_tfrecords import convert, split_fraction  # noqa: E402
from pipeline.reporting import facts, html  # noqa: E402


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 30 % 256, 90, 20)).save(buf, "PNG")
    return buf.getvalue()


def _name(cls: str, want_eval: bool) -> str:
    return next(f"p{i}.png" for i in range(1000)
                if (split_fraction(f"{cls}/p{i}.png") < 0.2) == want_eval)


@pytest.fixture
def leaky_data(tmp_path: Path) -> Path:
    """Two classes; one photo sits in cats' train and eval split and under dogs as well."""
    root = tmp_path / "images"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            (root / cls / f"own{i}.png").write_bytes(_png(i + (10 if cls == "dogs" else 0)))
    leaked = _png(99)
    (root / "cats" / _name("cats", False)).write_bytes(leaked)
    (root / "cats" / _name("cats", True)).write_bytes(leaked)
    (root / "dogs" / "same.png").write_bytes(leaked)
    out = tmp_path / "tfrecords"
    convert(root, out, log=lambda m: None)
    return out


def test_report_facts_read_the_duplicates(leaky_data: Path):
    found = facts.conversion_duplicates(str(leaky_data), 1)
    assert found == {"groups": 1, "files": 3, "across_classes": 1, "across_splits": 1}
    assert facts.conversion_duplicates(str(leaky_data), 2) is None  # no such span
    assert facts.conversion_duplicates("", 1) is None


def test_report_html_shows_the_duplicates_line(leaky_data: Path):
    data = {"label_names": ["cats", "dogs"], "splits": {},
            "duplicates": facts.conversion_duplicates(str(leaky_data), 1)}
    page = html._data({"data": data})
    assert ('<p class="note">Duplicate images (identical bytes, found by make-tfrecords): 1 '
            "groups, 3 files; under two or more classes: 1; in both train and eval: 1 (eval "
            "accuracy counts those as unseen photos)</p>") in page
    clean = {"groups": 0, "files": 0, "across_classes": 0, "across_splits": 0}
    assert "<p>Duplicate images: none.</p>" in html._data({"data": dict(data,
                                                                       duplicates=clean)})
    assert "Duplicate images" not in html._data({"data": dict(data, duplicates=None)})
