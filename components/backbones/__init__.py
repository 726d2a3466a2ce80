"""Pretrained ImageNet backbones (tf_keras) for graft: the registry, EfficientNet-Lite
built from offline torch weights, and a torch-free reader for torch.save files."""
from components.backbones.registry import Backbone, get_backbone, names

__all__ = ["Backbone", "get_backbone", "names"]
