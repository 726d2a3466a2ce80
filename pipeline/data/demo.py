"""The demo data set `graft run` trains on without --data: real photos that ship with graft.

pipeline/data/demo_flowers/<class>/*.jpg: 300 photos of tf_flowers (TensorFlow's
`flower_photos`, Flickr photos under CC BY 2.0), 60 for each of daisy, dandelion, roses,
sunflowers and tulips, at most 256 px on the long side (4.4 MB). NOTICE beside them names the
source, the licence and each photo's Flickr id; scripts/make_demo_flowers.py made both from
../shared/data/flowers-dev (a deterministic subset by hash).

build() converts them with make_tfrecords.convert (the split policy of `graft make-tfrecords`)
into OUTPUT/demo-data/flowers-<fingerprint>/ once; later runs reuse it. The fingerprint is a
hash of the shipped files, so changed photos get a new directory rather than a stale one.
"""
from __future__ import annotations

import hashlib
import os
from typing import Callable

IMAGES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_flowers")
NOTICE = os.path.join(IMAGES_DIR, "NOTICE")


def photos() -> list[str]:
    """The shipped photos, '<class>/<file>', sorted."""
    return sorted("%s/%s" % (cls, name) for cls in os.listdir(IMAGES_DIR)
                  if os.path.isdir(os.path.join(IMAGES_DIR, cls))
                  for name in os.listdir(os.path.join(IMAGES_DIR, cls)))


def fingerprint() -> str:
    h = hashlib.sha256()
    for rel in photos():
        h.update(rel.encode() + b"\0")
        with open(os.path.join(IMAGES_DIR, rel), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:12]


def build(output_dir: str, log: Callable[[str], None] = print) -> str:
    """The demo TFRecords under output_dir (made once); returns their directory."""
    from pipeline.data import make_tfrecords
    out = os.path.join(output_dir, "demo-data", "flowers-" + fingerprint())
    if not os.path.isdir(os.path.join(out, "span-1")):
        make_tfrecords.convert(IMAGES_DIR, out, strict=True, log=log)
    return out
