"""The demo photos that ship with graft (pipeline/data/demo_flowers/): NOTICE names the source,
the licence and every shipped photo with its Flickr id, and nothing else; the photos are what
scripts/make_demo_flowers.py promises (JPEG, at most 256 px on the long side)."""
from __future__ import annotations

import re

from PIL import Image

from pipeline.data import demo

ENTRY = re.compile(r"^(\w+/(\d+)_[0-9a-f]{10}(?:_[a-z])?\.jpg)  (\d+)$")


def _entries() -> dict:
    text = open(demo.NOTICE, encoding="utf-8").read()
    header, table = text.split("\nfile  flickr_photo_id\n")
    assert "CC BY 2.0" in header and "creativecommons.org/licenses/by/2.0" in header
    assert "tf_flowers" in header and "flower_photos" in header
    entries = {}
    for line in table.splitlines():
        m = ENTRY.match(line)
        assert m, "NOTICE line is not '<class>/<file>  <flickr id>': %r" % line
        assert m.group(2) == m.group(3), "Flickr id does not match the file name: %r" % line
        assert m.group(1) not in entries, "listed twice: %s" % m.group(1)
        entries[m.group(1)] = m.group(3)
    return entries


def test_notice_lists_every_shipped_photo_and_nothing_else():
    shipped = demo.photos()
    assert len(shipped) == 300
    assert sorted(_entries()) == shipped


def test_photos_are_small_jpegs_with_60_per_class():
    per_class = {}
    for rel in demo.photos():
        with Image.open("%s/%s" % (demo.IMAGES_DIR, rel)) as image:
            assert image.format == "JPEG" and image.mode == "RGB", rel
            assert max(image.size) <= 256, (rel, image.size)
        per_class[rel.split("/")[0]] = per_class.get(rel.split("/")[0], 0) + 1
    assert per_class == {c: 60 for c in ("daisy", "dandelion", "roses", "sunflowers", "tulips")}


def test_photos_come_from_flowers_dev_under_the_same_class(shared_data):
    for rel in demo.photos():
        assert (shared_data / "flowers-dev" / rel).is_file(), rel
