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
# Named sets of training settings, applied under explicit flags (pipeline.configs.from_args).
# 'default' is the dataclass defaults; 'seed' the recipe graft started with.
RECIPES = {
    "default": {},
    "seed": {"epochs": 10, "fine_tune_epochs": 5, "fine_tune_learning_rate": 1e-5,
             "fine_tune_layers": 20, "fine_tune_schedule": "constant",
             "fine_tune_optimizer": "adam", "label_smoothing": 0.0, "keep_phase2": "val_loss",
             "fine_tune_input": "activations", "augmented_views": 0,
             "freeze_depthwise": False},
}


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
    backbone: str = config_field(
        DEFAULT_BACKBONE, "backbone name, or hub:HANDLE: a TF Hub/Kaggle model URL or a local "
        "TF2 SavedModel image feature vector (what hub.KerasLayer loads); phase 2 fine-tunes "
        "such a module as one block (see --fine-tune-fraction)")
    weights: str = config_field(
        "imagenet", "'imagenet', a local weights file, or 'none' (random init: one phase trains "
        "every layer from scratch)")
    image_size: Optional[int] = config_field(
        None, "input size in pixels (default: the backbone's native size; 224 for hub:)",
        type=int)
    hub_value_range: str = config_field(
        "0,1", "hub: backbones: the RGB value range the module takes, 'LO,HI' (TF Hub image "
        "modules take [0, 1]); the Transform graph scales 0..255 onto it")
    hub_fingerprint: str = ""              # hash of a local hub: module (cache key)
    head_units: int = 128
    dropout: float = 0.5
    # Training. Phase 1: the head on the frozen base (on cached features by default).
    batch_size: int = config_field(32, "per-replica batch size")
    epochs: int = config_field(30, "phase 1 maximum epochs (early stopping decides)")
    learning_rate: float = config_field(1e-3, "phase 1 learning rate")
    feature_cache: bool = config_field(
        True, "phase 1 on cached features: the frozen base runs once per image (and once per "
        "horizontal flip of each training image), the head trains on the pooled features",
        negative="--no-feature-cache")
    activation_cache: bool = config_field(
        True, "phase 2 on what the feature cache kept from its pass over the images: for a "
        "partial fine-tune with --fine-tune-input activations (the default) the frozen bottom's "
        "activations of each image's views (see --augmented-views), else the decoded, "
        "transformed images (float16, augmented every epoch), instead of reading and decoding "
        "the image files every epoch; needs the feature cache",
        negative="--no-activation-cache")
    # Phase 2: fine-tuning the top of the base, BatchNorm always frozen.
    # The defaults (half the layers, depthwise kernels frozen, on the frozen bottom's cached
    # activations of 4 views per image) by 5-fold cross-validation (half_10_nodw_v4 in
    # bench/results/finetune_cv.json: within 0.34 points of every layer over mri-dev and
    # flowers-dev, ~0.5 below the same on images augmented every epoch on flowers-dev) and
    # bench/pipeline_flowers.py (the wall time of the seed recipe, README).
    # 10, not 6: 5-fold cross-validation (bench/results/finetune_cv.json) +1.75 points on
    # mri-dev (p = 0.04), +0.2 on flowers-dev; the reference recipe ran 15.
    fine_tune_epochs: int = config_field(
        10, "phase 2 maximum epochs (the cosine schedule's length; early stopping may end it "
        "sooner), 0 skips it")
    fine_tune_learning_rate: float = config_field(1e-4, "phase 2 peak learning rate")
    fine_tune_fraction: float = config_field(
        0.5, "fraction of the base's layers unfrozen in phase 2, counted from the top "
        "(BatchNorm layers stay frozen; any fraction > 0 unfreezes at least one layer). A hub: "
        "module is one layer: > 0 fine-tunes all its variables at the phase 2 learning rate, "
        "BatchNorm statistics in inference mode")
    fine_tune_layers: Optional[int] = config_field(
        None, "top base layers unfrozen in phase 2 (overrides --fine-tune-fraction)", type=int)
    fine_tune_input: str = config_field(
        "activations", "what a partial fine-tune's phase 2 trains on from the cache: 'images' (the "
        "cached transformed images, augmented every epoch with flips, crops and brightness; the "
        "frozen bottom runs forward each step, without gradients) or 'activations' (the frozen "
        "bottom's output for each image's views, computed once: faster per epoch; see "
        "--augmented-views)", choices=("images", "activations"))
    augmented_views: int = config_field(
        2, "with --fine-tune-input activations: augmented copies of each training image (flip, "
        "crop, brightness, drawn once) whose activations the cache keeps beside the original's "
        "and the flip's; each phase-2 epoch trains on one view of each image at random")
    freeze_depthwise: bool = config_field(
        True, "phase 2 keeps the depthwise convolution kernels frozen too (their filter "
        "gradients are about a fifth of a fine-tuning step on a CPU)",
        negative="--no-freeze-depthwise")
    fine_tune_schedule: str = config_field(
        "cosine", "phase 2 learning-rate schedule: cosine decay to 0 after a linear warm-up, "
        "or constant", choices=("cosine", "constant"))
    warmup_epochs: float = config_field(1.0, "phase 2 linear warm-up epochs (cosine schedule)")
    fine_tune_optimizer: str = config_field("adamw", "phase 2 optimizer",
                                            choices=("adamw", "adam"))
    weight_decay: float = config_field(1e-4, "AdamW's decoupled weight decay")
    micro_batch_size: int = config_field(
        16, "phase 2 computes each batch's gradient in slices of this many images (per replica) "
        "and applies their sum once: the whole batch's update with a slice's activation memory "
        "(BatchNorm is frozen); 0 = the whole batch at once")
    label_smoothing: float = config_field(0.1, "label smoothing of the loss (both phases)")
    class_weight: str = config_field(
        "balanced", "loss weight per class in both phases: 'balanced' weighs each class by the "
        "inverse of its share of the training images (n / (classes x count)), 'none' weighs "
        "every image alike", choices=("balanced", "none"))
    early_stopping_patience: int = config_field(
        3, "epochs without a better validation loss before a phase stops (phase 2's warm-up "
        "epochs are not judged)")
    keep_phase2: str = config_field(
        "either", "when phase 2's weights are kept over phase 1's, judged at the epoch early "
        "stopping restored: 'either' unless its validation loss is higher and its validation "
        "accuracy lower than phase 1's; 'accuracy' unless its validation accuracy is lower; "
        "'val_loss' unless its validation loss is higher (the seed's rule)",
        choices=("either", "accuracy", "val_loss"))
    augment: bool = config_field(True, "augmentation (flip, crop, brightness) of training images",
                                 negative="--no-augment")
    recipe: str = config_field(
        "default", "'seed' restores the original recipe (phase 2: top 20 layers, Adam 1e-5, "
        "constant, no label smoothing, 10 + 5 epochs, kept on validation loss; with "
        "--no-feature-cache also its code path: every epoch on augmented images); explicit "
        "flags still win",
        choices=tuple(RECIPES))
    seed: int = config_field(
        42, "random seed of training: the head's initial weights, the shuffles, the "
        "augmentation and the views phase 2 picks (the split is make-tfrecords')")
    code_version: str = ""                 # hash of component sub-packages (cache key)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def from_scratch(self) -> bool:
        """True when the backbone starts from random weights (nothing to transfer)."""
        return self.weights in ("", "none", "None", None)

    def fine_tune_count(self, num_base_layers: int) -> int:
        """How many of the base's top layers phase 2 unfreezes: `fine_tune_layers` if set,
        else `fine_tune_fraction` of the base's layers (rounded; at least one when the fraction
        is > 0), at most all of them."""
        if self.fine_tune_layers is not None:
            return min(int(self.fine_tune_layers), num_base_layers)
        count = int(round(self.fine_tune_fraction * num_base_layers))
        if self.fine_tune_fraction > 0:
            count = max(1, count)  # a hub: module is a single layer
        return min(num_base_layers, count)

    def get_backbone(self):
        """The configured backbone (registry name or hub:HANDLE with its value range)."""
        from components.backbones import registry
        return registry.get_backbone(self.backbone, hub_value_range=self.hub_value_range)

    def input_size(self) -> int:
        """The input size in pixels: configured, or the backbone's native size."""
        return self.get_backbone().resolve_size(self.image_size)

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
