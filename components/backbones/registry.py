"""The one registry of pretrained ImageNet backbones: name -> :class:`Backbone`.

A Backbone knows its native input size, how to preprocess 0..255 RGB for its base (pure TF
ops, safe inside a tf.Transform ``preprocessing_fn`` and a SavedModel) and how to build the
base (``include_top=False``) or the 1000-class classifier. Everything is ``tf_keras``
(Keras 2), never Keras 3.

``family`` names the model family and its preprocessing convention: 'mobilenet'
(MobileNetV2 takes [-1, 1]; MobileNetV3 carries its own Rescaling layer and takes 0..255),
'caffe' (ResNet, VGG: BGR, ImageNet mean subtracted), 'efficientnet' (EfficientNetB*: own
Rescaling/Normalization, takes 0..255) and 'lite' (EfficientNet-Lite: (x - 127) / 128).
Consumers should rely on ``preprocess()`` and ``value_range`` rather than on ``family``.
``hub:HANDLE`` names a TF Hub image feature vector instead (family 'hub', see hub.py).
"""
from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_CAFFE_RANGE = (-_CAFFE_MEAN_BGR[2], 255.0 - _CAFFE_MEAN_BGR[0])
_LITE_RANGE = (-127.0 / 128.0, 1.0)



class _Spec(NamedTuple):
    input_size: int             # native pixels
    family: str                 # see the module docstring
    value_range: tuple          # (lo, hi) of preprocess() for inputs in [0, 255]
    app: str | None = None      # tf_keras.applications model constructor (None for 'lite')
    module: str | None = None   # tf_keras.applications module with its preprocess_input


_SPECS = {
    "efficientnet_lite0": _Spec(224, "lite", _LITE_RANGE),
    "mobilenet_v2": _Spec(224, "mobilenet", (-1.0, 1.0), "MobileNetV2", "mobilenet_v2"),
    "mobilenet_v3_small": _Spec(224, "mobilenet", (0.0, 255.0), "MobileNetV3Small",
                                "mobilenet_v3"),
    "mobilenet_v3_large": _Spec(224, "mobilenet", (0.0, 255.0), "MobileNetV3Large",
                                "mobilenet_v3"),
    "resnet50": _Spec(224, "caffe", _CAFFE_RANGE, "ResNet50", "resnet"),
    "resnet101": _Spec(224, "caffe", _CAFFE_RANGE, "ResNet101", "resnet"),
    "resnet152": _Spec(224, "caffe", _CAFFE_RANGE, "ResNet152", "resnet"),
    **{f"efficientnet_b{i}": _Spec(size, "efficientnet", (0.0, 255.0), f"EfficientNetB{i}",
                                   "efficientnet")
       for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))},
    "vgg16": _Spec(224, "caffe", _CAFFE_RANGE, "VGG16", "vgg16"),
    "vgg19": _Spec(224, "caffe", _CAFFE_RANGE, "VGG19", "vgg19"),
    "efficientnet_lite1": _Spec(240, "lite", _LITE_RANGE),
    "efficientnet_lite2": _Spec(260, "lite", _LITE_RANGE),
}


def _resolve_weights(weights):
    """'imagenet' | None for random init | an existing local file path."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if weights == "imagenet":
        return weights
    path = os.fspath(weights)
    if not (os.path.isfile(path) or os.path.isfile(path + ".index")):  # file or TF ckpt
        raise ValueError(f"weights must be 'imagenet', None/'none' or an existing file; "
                         f"no such file: {path!r}")
    return path


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str            # e.g. 'efficientnet_lite0', 'resnet50'
    input_size: int      # native pixels
    family: str          # 'mobilenet' | 'caffe' | 'efficientnet' | 'lite' | 'hub'
    value_range: tuple   # (lo, hi) of what preprocess() outputs for inputs in [0,255]

    def resolve_size(self, image_size: int | None) -> int:
        """The input size in pixels for a configured ``image_size``: None/0 = the backbone's
        native input size. The one place that decides it."""
        return int(image_size or self.input_size)

    def preprocess(self, images):
        """float32 RGB [..., H, W, 3] in 0..255 -> what the base expects. Pure TF ops."""
        import tensorflow as tf

        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        if self.family == "lite":
            from components.backbones import efficientnet_lite
            return efficientnet_lite.preprocess_input(images)
        module = _SPECS[self.name].module
        import tf_keras
        return getattr(tf_keras.applications, module).preprocess_input(images)

    def _app(self):
        import tf_keras
        return getattr(tf_keras.applications, _SPECS[self.name].app)

    def build_base(self, weights="imagenet", image_size=None):
        """tf_keras.Model without the top: (s, s, 3) preprocessed images -> 4D features."""
        weights = _resolve_weights(weights)
        size = self.resolve_size(image_size)
        if self.family == "lite":
            from components.backbones import efficientnet_lite
            return efficientnet_lite.build(self.name, include_top=False, weights=weights,
                                           image_size=size)
        model = self._app()(include_top=False, input_shape=(size, size, 3),
                            weights="imagenet" if weights == "imagenet" else None)
        if weights not in (None, "imagenet"):
            model.load_weights(weights)
        return model

    def build_classifier(self, weights="imagenet"):
        """tf_keras.Model with the 1000-class softmax head at the native size."""
        weights = _resolve_weights(weights)
        if self.family == "lite":
            from components.backbones import efficientnet_lite
            return efficientnet_lite.build(self.name, include_top=True, weights=weights)
        size = self.input_size
        model = self._app()(include_top=True, input_shape=(size, size, 3), classes=1000,
                            weights="imagenet" if weights == "imagenet" else None)
        if weights not in (None, "imagenet"):
            model.load_weights(weights)
        return model


_REGISTRY = {name: Backbone(name, s.input_size, s.family, tuple(float(v) for v in s.value_range))
             for name, s in _SPECS.items()}


def get_backbone(name, hub_value_range: str = "0,1") -> Backbone:
    """The registered Backbone called ``name``, or for ``hub:HANDLE`` a TF Hub module
    (components/backbones/hub.py) taking ``hub_value_range``; ValueError listing valid names
    otherwise."""
    if isinstance(name, str) and name.startswith("hub:"):
        from components.backbones import hub
        return hub.backbone(name, hub_value_range)
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backbone {name!r}; valid names: "
                         f"{', '.join(names())}, or hub:HANDLE (a TF Hub/Kaggle URL or a "
                         "TF2 SavedModel directory)") from None


def names() -> list[str]:
    return list(_REGISTRY)
