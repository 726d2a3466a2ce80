"""Benchmark: what decoding and resizing one image costs, for the photos of flowers-dev and
for a phone-sized photo: the work phase 2 repeats every epoch when it reads the image files,
and skips on the feature cache's images (components/feature_cache.py).

The pipeline's own op (components.image_ops.decode_resize: decode, bilinear antialiased resize
to 224 px) on 8 copies of one image, run eagerly (map_fn takes them one after another), best
of 5 after a warm-up, in ms per image. The 12 MP photo is a flowers-dev photo upscaled to
4000 x 3000 and saved as a JPEG at quality 90 (smooth, so smaller than a real phone photo of
the same size; decoding cost follows the pixels).

    .venv/bin/python -m bench.decode_cost [--data IMAGES_DIR]
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from bench import common

SIZE = 224


def ms_per_image(data: bytes, copies: int = 8, repeats: int = 5) -> float:
    import tensorflow as tf

    from components import image_ops
    batch = tf.constant([data] * copies)
    image_ops.decode_resize(batch, SIZE).numpy()  # warm-up: traces the map_fn
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        image_ops.decode_resize(batch, SIZE).numpy()
        best = min(best, (time.perf_counter() - start) / copies)
    return round(best * 1000, 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(common.FLOWERS))
    args = p.parse_args()
    photos = sorted(Path(args.data).glob("*/*.jpg"))
    if not photos:
        print("skipped: no JPEGs under %s" % args.data)
        return 0
    from PIL import Image
    small = photos[0].read_bytes()
    image = Image.open(io.BytesIO(small)).convert("RGB")
    buf = io.BytesIO()
    image.resize((4000, 3000), Image.BICUBIC).save(buf, "JPEG", quality=90)
    result = {"machine": common.machine(), "command": "python -m bench.decode_cost",
              "photo": str(photos[0].relative_to(Path(args.data).parent)),
              "size_px": SIZE,
              "flowers_dev_photo": {"pixels": list(image.size), "bytes": len(small),
                                    "ms_per_image": ms_per_image(small)},
              "phone_12mp_photo": {"pixels": [4000, 3000], "bytes": len(buf.getvalue()),
                                   "ms_per_image": ms_per_image(buf.getvalue())}}
    common.write_json("decode_cost.json", result)
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
