"""The embedded offline demo data set: scikit-learn's 8x8 digits as PNG class folders.

`graft run` without --data trains on this. `sklearn.datasets.load_digits` ships inside
scikit-learn (1,797 images, 174-183 per digit), so nothing is downloaded. build() writes

    out_dir/images/<zero|one|...>/digit-<index in load_digits>.png   grayscale, image_size^2
    out_dir/tfrecords/labels.txt, out_dir/tfrecords/span-1/...       via make_tfrecords.convert

and returns out_dir/tfrecords. Per class it takes the first `per_class` images of that digit in
load_digits order, scales 0..16 to 0..255 and upscales bilinearly, so the output is
deterministic (PNG encoding has no timestamps). It is idempotent: out_dir/demo.json records the
parameters of a finished build; a second call with the same parameters reuses it, a call with
other parameters rebuilds images/ and tfrecords/. Content in images/ or tfrecords/ that build()
did not make is never deleted (error instead). A lock file serialises concurrent builds.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Callable

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_FORMAT = 1
_MARKER = "demo.json"
_INCOMPLETE = ".demo-incomplete"


def _write_images(images_dir: Path, per_class: int, image_size: int, classes: int) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in range(classes):
        indices = np.flatnonzero(digits.target == digit)
        if per_class > len(indices):
            raise ValueError(f"per_class={per_class} but load_digits has only {len(indices)} "
                             f"images of {DIGIT_NAMES[digit]!r}")
        class_dir = images_dir / DIGIT_NAMES[digit]
        class_dir.mkdir(parents=True)
        for index in indices[:per_class]:
            pixels = np.clip(np.round(digits.images[index] * (255.0 / 16.0)), 0, 255)
            image = Image.fromarray(pixels.astype(np.uint8), mode="L")
            image = image.resize((image_size, image_size), Image.BILINEAR)
            image.save(class_dir / f"digit-{index}.png", format="PNG")


def build(out_dir, per_class: int = 100, image_size: int = 64, classes: int = 10,
          eval_fraction: float | None = None, shards: int = 1,
          log: Callable[[str], None] = print, test_fraction: float | None = None) -> str:
    """Build (or reuse) the digits demo set under out_dir; return its TFRecords directory.
    The split fractions default to make-tfrecords' (train/eval/test)."""
    from pipeline.data import make_tfrecords

    if eval_fraction is None:
        eval_fraction = make_tfrecords.DEFAULT_EVAL_FRACTION
    if test_fraction is None:
        test_fraction = make_tfrecords.DEFAULT_TEST_FRACTION

    if not 2 <= classes <= 10:
        raise ValueError(f"classes must be in 2..10, got {classes}")
    if per_class < 1 or image_size < 8:
        raise ValueError(f"need per_class >= 1 and image_size >= 8, got {per_class}, "
                         f"{image_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images_dir, tfr_dir = out_dir / "images", out_dir / "tfrecords"
    marker, incomplete = out_dir / _MARKER, out_dir / _INCOMPLETE
    params = {"format": _FORMAT, "per_class": per_class, "image_size": image_size,
              "classes": classes, "eval_fraction": eval_fraction, "test_fraction": test_fraction,
              "shards": shards}

    with open(out_dir / ".demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.exists() and (tfr_dir / "span-1").is_dir():
                try:
                    if json.loads(marker.read_text()) == params:
                        return str(tfr_dir)
                except ValueError:
                    pass
            ours = marker.exists() or incomplete.exists()
            if (images_dir.exists() or tfr_dir.exists()) and not ours:
                raise FileExistsError(f"{out_dir} has images/ or tfrecords/ not made by the "
                                      "demo data set; choose an empty directory")
            log(f"building the digits demo data set in {out_dir} ({params})")
            incomplete.touch()
            marker.unlink(missing_ok=True)
            shutil.rmtree(images_dir, ignore_errors=True)
            shutil.rmtree(tfr_dir, ignore_errors=True)
            _write_images(images_dir, per_class, image_size, classes)
            make_tfrecords.convert(images_dir, tfr_dir, eval_fraction=eval_fraction, span=1,
                                   shards=shards, strict=True, log=log,
                                   test_fraction=test_fraction)
            tmp = out_dir / f".{_MARKER}.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(params, sort_keys=True))
            os.replace(tmp, marker)
            incomplete.unlink()
            return str(tfr_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
