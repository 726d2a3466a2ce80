"""Make the demo photos that ship with graft (pipeline/data/demo_flowers/) from tf_flowers.

    .venv/bin/python scripts/make_demo_flowers.py [SOURCE] [--per-class 60]

SOURCE (default ../shared/data/flowers-dev) holds tf_flowers' `flower_photos` class folders.
Per class the script takes the `--per-class` files whose sha256("graft-demo/<class>/<name>")
is lowest (deterministic, independent of the other files), shrinks each to at most 256 px on
the long side (Lanczos), re-encodes it as a baseline JPEG of quality 85 without metadata, and
keeps the tf_flowers file name. It then writes NOTICE: the source, the licence and, per photo,
its Flickr photo id.

The id rule: tf_flowers names its files like Flickr's static image URLs,
`<photo id>_<secret>[_<size suffix>].jpg`, so the digits before the first underscore are the
Flickr photo id. Checked against tf_flowers' own LICENSE.txt line
"daisy/7568630428_8cf0fc16ff_n.jpg CC-BY by A Guy Taking Pictures -
https://www.flickr.com/photos/80901381@N04/7568630428/"; every file of flowers-dev matches
`^[0-9]+_[0-9a-f]{10}(_[a-z])?\\.jpg$`. The script refuses a name that does not.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.path.join(os.path.dirname(ROOT), "shared", "data", "flowers-dev")
DEST = os.path.join(ROOT, "pipeline", "data", "demo_flowers")
NAME = re.compile(r"^(\d+)_[0-9a-f]{10}(_[a-z])?\.jpg$")
MAX_SIDE = 256
QUALITY = 85

HEADER = """\
graft demo photos: {count} photos, {per_class} per class, from tf_flowers
=========================================================================

Source: the tf_flowers data set (TensorFlow's `flower_photos`,
https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz),
photos from Flickr. Licence: Creative Commons Attribution 2.0 (CC BY 2.0),
https://creativecommons.org/licenses/by/2.0/ ; the photographer of each photo is named in
tf_flowers' LICENSE.txt under the same file name and on the photo's Flickr page.

Changes: a deterministic subset (scripts/make_demo_flowers.py), each photo shrunk to at most
{max_side} px on its long side and re-encoded as JPEG (quality {quality}).

Flickr photo id: the digits before the first underscore of the file name (tf_flowers names
files <photo id>_<secret>[_<size>].jpg); page: https://www.flickr.com/photo.gne?id=<photo id>

file  flickr_photo_id
"""


def _hash(cls: str, name: str) -> bytes:
    return hashlib.sha256(("graft-demo/%s/%s" % (cls, name)).encode()).digest()


def choose(source: str, per_class: int) -> dict[str, list[str]]:
    """{class: [file names]}: the per_class lowest hashes of each class folder."""
    chosen = {}
    for cls in sorted(os.listdir(source)):
        folder = os.path.join(source, cls)
        if not os.path.isdir(folder) or cls.startswith("."):
            continue
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        bad = [n for n in names if not NAME.match(n)]
        if bad:
            raise ValueError("%s/%s: not a tf_flowers file name (<id>_<secret>[_x].jpg)"
                             % (cls, bad[0]))
        if len(names) < per_class:
            raise ValueError("%s has %d photos, fewer than %d" % (folder, len(names), per_class))
        chosen[cls] = sorted(sorted(names, key=lambda n, c=cls: _hash(c, n))[:per_class])
    return chosen


def shrink(data: bytes) -> bytes:
    """At most MAX_SIDE px on the long side, RGB baseline JPEG, no metadata."""
    from PIL import Image
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", default=DEFAULT_SOURCE)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--dest", default=DEST)
    args = p.parse_args(argv)
    chosen = choose(args.source, args.per_class)
    shutil.rmtree(args.dest, ignore_errors=True)
    lines = []
    total = 0
    for cls, names in chosen.items():
        os.makedirs(os.path.join(args.dest, cls))
        for name in names:
            with open(os.path.join(args.source, cls, name), "rb") as f:
                data = shrink(f.read())
            with open(os.path.join(args.dest, cls, name), "wb") as f:
                f.write(data)
            total += len(data)
            lines.append("%s/%s  %s\n" % (cls, name, NAME.match(name).group(1)))
    with open(os.path.join(args.dest, "NOTICE"), "w") as f:
        f.write(HEADER.format(count=len(lines), per_class=args.per_class, max_side=MAX_SIDE,
                              quality=QUALITY))
        f.writelines(lines)
    print("%d photos in %d classes, %.1f MB, in %s"
          % (len(lines), len(chosen), total / 1e6, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
