"""The one typed configuration of the code that runs inside the Transform and Trainer.

`TrainingConfig` holds every setting the module files read, with its default, defined here
and nowhere else. `pipeline.configs.PipelineConfig` contains one; it travels into the TFX
components as `custom_config` (`to_custom_config()`, a JSON-able dict in field order) and
comes back out with `from_custom_config()`, which refuses unknown keys so that a setting
cannot be misspelled on one side. Component code reads attributes, never
`custom_config.get(key, default)`.

Each field's `metadata["help"]` is the help text of its `graft run` flag (pipeline/configs.py
generates the flags from the fields, so a field cannot be forgotten in a flag list).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

DEFAULT_BACKBONE = "efficientnet_lite0"


def config_field(default, help: str = "", **metadata):  # noqa: A002 - argparse's word
    """A dataclass field; a non-empty help makes it a command-line flag."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Everything the Transform and Trainer module files read."""

    # Data: which features hold what.
    label_names: tuple = config_field(())        # class names, index = label id
    image_key: str = config_field("image", "tf.Example key of the encoded image bytes")
    label_key: str = config_field("label", "tf.Example key of the int64 label")
    # Model.
    backbone: str = config_field(DEFAULT_BACKBONE, "backbone name")
    weights: str = config_field(
        "imagenet", "'imagenet', a local weights file, or 'none' (random init: one phase trains "
        "every layer from scratch)")
    image_size: Optional[int] = config_field(
        None, "input size in pixels (default: the backbone's native size)", type=int)
    head_units: int = 128
    dropout: float = 0.5
    # Training.
    batch_size: int = config_field(32, "per-replica batch size")
    epochs: int = config_field(10, "phase 1 maximum epochs")
    fine_tune_epochs: int = config_field(5, "phase 2 maximum epochs, 0 skips it")
    learning_rate: float = config_field(1e-3, "phase 1 learning rate")
    fine_tune_learning_rate: float = config_field(1e-5, "phase 2 learning rate, 10-100x lower")
    fine_tune_layers: int = config_field(20, "top base layers unfrozen in phase 2")
    early_stopping_patience: int = config_field(
        3, "epochs without a better validation loss before a phase stops")
    augment: bool = config_field(True, "augmentation (flip, crop, brightness) of training images",
                                 negative="--no-augment")
    seed: int = 42
    code_version: str = ""                 # hash of component sub-packages (cache key)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def from_scratch(self) -> bool:
        """True when the backbone starts from random weights (nothing to transfer)."""
        return self.weights in ("", "none", "None", None)

    def input_size(self) -> int:
        """The input size in pixels: configured, or the backbone's native size."""
        from components.backbones import registry
        return registry.get_backbone(self.backbone).resolve_size(self.image_size)

    def to_custom_config(self) -> dict[str, Any]:
        """The JSON-able dict that travels as TFX `custom_config` (keys in field order)."""
        cfg = dataclasses.asdict(self)
        cfg["label_names"] = list(self.label_names)
        return json.loads(json.dumps(cfg))

    @classmethod
    def from_custom_config(cls, custom_config: dict) -> "TrainingConfig":
        """The config a component received; unknown keys are an error, missing ones default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(custom_config) - names)
        if unknown:
            raise ValueError("custom_config has unknown keys %s (known: %s)"
                             % (unknown, sorted(names)))
        values = dict(custom_config)
        if "label_names" in values:
            values["label_names"] = tuple(values["label_names"])
        return cls(**values)
