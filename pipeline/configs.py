"""The one typed configuration of a graft pipeline run, and its defaults.

Every runner and the CLI build a `PipelineConfig`; nothing else defines defaults. The
pipeline-facing fields are plain JSON-able values so that they can travel into the TFX
components as `custom_config`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Optional

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_OUTPUT_DIR = "graft-output"
DEFAULT_MODEL_NAME = "graft"
# The code that runs inside TFX components (module files live at its top level).
COMPONENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "components")

# The embedded offline demo data set (scikit-learn's digits, see pipeline/data/demo_dataset.py):
# small images, so a small input size and few epochs keep `graft run` under 10 minutes on 2 cores.
DEMO_PER_CLASS = 60
DEMO_PNG_SIZE = 64
DEMO_IMAGE_SIZE = 96
DEMO_EPOCHS = 25
DEMO_FINE_TUNE_EPOCHS = 3


@dataclasses.dataclass
class PipelineConfig:
    """Everything that decides what a pipeline run does."""

    # Data.
    data_dir: str = ""                      # holds span-N/{train,eval}/*; empty = embedded demo
    label_names: tuple = ()                 # class names, index = label id
    image_key: str = "image"                # tf.Example key of the encoded image bytes
    label_key: str = "label"                # tf.Example key of the int64 label
    num_spans: int = 1                      # rolling window of the last K spans
    max_bad_image_fraction: float = 0.1     # ImageCheck fails a split with more bad images
    train_pattern: str = "span-{SPAN}/train/*"  # relative to data_dir
    eval_pattern: str = "span-{SPAN}/eval/*"
    # Model.
    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"               # 'imagenet', a local weights file, or 'none'
                                            # ('none' trains every layer from scratch)
    image_size: Optional[int] = None        # None = the backbone's native input size
    head_units: int = 128
    dropout: float = 0.5
    # Training.
    batch_size: int = 32
    epochs: int = 10                        # phase 1 (frozen base) maximum epochs
    fine_tune_epochs: int = 5               # phase 2 maximum epochs; 0 skips phase 2
    learning_rate: float = 1e-3             # phase 1
    fine_tune_learning_rate: float = 1e-5   # phase 2 (10-100x lower)
    fine_tune_layers: int = 20              # top base layers unfrozen in phase 2
    early_stopping_patience: int = 3
    augment: bool = True
    seed: int = 42
    code_version: str = ""                  # hash of component sub-packages (cache key)
    # Evaluation and push.
    min_accuracy: float = 0.5               # blessing floor
    model_name: str = DEFAULT_MODEL_NAME
    # Where things go (owned by the runner).
    pipeline_name: str = "graft"
    output_dir: str = DEFAULT_OUTPUT_DIR
    serving_dir: str = ""                   # empty = OUTPUT_DIR/serving
    # Beam.
    beam_mode: str = "multi_processing"     # or in_memory
    beam_workers: int = 0                   # 0 = one per core

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_dir, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_dir, "metadata.sqlite")

    @property
    def resolved_serving_dir(self) -> str:
        return self.serving_dir or os.path.join(self.output_dir, "serving")

    def beam_args(self) -> list[str]:
        return [
            "--direct_running_mode=" + self.beam_mode,
            "--direct_num_workers=%d" % self.beam_workers,
        ]

    def component_config(self) -> dict[str, Any]:
        """The subset that the Transform and Trainer code reads (JSON-able)."""
        keys = ["label_names", "image_key", "label_key", "backbone", "weights", "image_size",
                "head_units", "dropout", "batch_size", "epochs", "fine_tune_epochs",
                "learning_rate", "fine_tune_learning_rate", "fine_tune_layers",
                "early_stopping_patience", "augment", "seed", "code_version"]
        cfg = {k: getattr(self, k) for k in keys}
        cfg["label_names"] = list(self.label_names)
        return json.loads(json.dumps(cfg))


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The `graft run` flags; defaults come from PipelineConfig."""
    d = PipelineConfig()
    p.add_argument("--data", default="",
                   help="directory with span-N/{train,eval}/* TFRecords and labels.txt, or a "
                   "folder of class sub-folders (converted first), or 'flowers' (downloads "
                   "tf_flowers); default: the embedded offline demo set")
    p.add_argument("--backbone", default=d.backbone, help="backbone name (default %(default)s)")
    p.add_argument("--weights", default=d.weights,
                   help="'imagenet', a local weights file, or 'none' (random init: one phase "
                   "trains every layer from scratch; default %(default)s)")
    p.add_argument("--output", default=d.output_dir,
                   help="pipeline root, ML Metadata and report go here (default %(default)s)")
    p.add_argument("--serving-dir", default="", help="push target (default OUTPUT/serving)")
    p.add_argument("--model-name", default=d.model_name, help="default %(default)s")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="blessing floor on eval accuracy (default %s)" % d.min_accuracy)
    p.add_argument("--epochs", type=int, default=None,
                   help="phase 1 maximum epochs (default %d)" % d.epochs)
    p.add_argument("--fine-tune-epochs", type=int, default=None,
                   help="phase 2 maximum epochs, 0 skips it (default %d)" % d.fine_tune_epochs)
    p.add_argument("--learning-rate", type=float, default=None,
                   help="phase 1 learning rate (default %g)" % d.learning_rate)
    p.add_argument("--fine-tune-learning-rate", type=float, default=None,
                   help="phase 2 learning rate, 10-100x lower (default %g)"
                   % d.fine_tune_learning_rate)
    p.add_argument("--fine-tune-layers", type=int, default=None,
                   help="top base layers unfrozen in phase 2 (default %d)" % d.fine_tune_layers)
    p.add_argument("--early-stopping-patience", type=int, default=None,
                   help="epochs without a better validation loss before a phase stops "
                   "(default %d)" % d.early_stopping_patience)
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in pixels (default: the backbone's native size)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--image-key", default=None, help="tf.Example key of the image bytes")
    p.add_argument("--label-key", default=None, help="tf.Example key of the int64 label")
    p.add_argument("--train-pattern", default=None,
                   help="train files under --data (default %s)" % d.train_pattern)
    p.add_argument("--eval-pattern", default=None,
                   help="eval files under --data (default %s)" % d.eval_pattern)
    p.add_argument("--num-spans", type=int, default=None,
                   help="train on a rolling window of the last K spans (default 1)")
    p.add_argument("--max-bad-image-fraction", type=float, default=None,
                   help="fail when more than this fraction of a split's images do not decode "
                   "(default %g; fewer are dropped and listed in the report)"
                   % d.max_bad_image_fraction)
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--beam-mode", choices=["multi_processing", "in_memory"], default=None,
                   help="Beam DirectRunner mode (default %s)" % d.beam_mode)


def read_label_names(data_dir: str) -> tuple:
    """Class names from DATA_DIR/labels.txt (one per line, index = label id)."""
    path = os.path.join(data_dir, "labels.txt")
    if not os.path.exists(path):
        raise FileNotFoundError("%s not found: the data directory needs a labels.txt with one "
                                "class name per line (graft make-tfrecords writes it)" % path)
    with open(path) as f:
        names = tuple(line.strip() for line in f if line.strip())
    if len(names) < 2:
        raise ValueError("%s lists %d classes; need at least 2" % (path, len(names)))
    return names


def from_args(args: argparse.Namespace, data_dir: str, label_names: tuple,
              demo: bool = False) -> PipelineConfig:
    """The config of a `graft run`: flags override defaults (demo defaults for the demo set)."""
    cfg = PipelineConfig(data_dir=os.path.abspath(data_dir), label_names=tuple(label_names),
                         output_dir=os.path.abspath(args.output), model_name=args.model_name,
                         backbone=args.backbone, weights=args.weights)
    if demo:
        cfg.image_size = DEMO_IMAGE_SIZE
        cfg.epochs = DEMO_EPOCHS
        cfg.fine_tune_epochs = DEMO_FINE_TUNE_EPOCHS
    cfg.serving_dir = os.path.abspath(args.serving_dir) if args.serving_dir else ""
    overrides = {"min_accuracy": args.min_accuracy, "epochs": args.epochs,
                 "fine_tune_epochs": args.fine_tune_epochs,
                 "fine_tune_layers": args.fine_tune_layers, "image_size": args.image_size,
                 "learning_rate": args.learning_rate,
                 "early_stopping_patience": args.early_stopping_patience,
                 "fine_tune_learning_rate": args.fine_tune_learning_rate,
                 "batch_size": args.batch_size, "image_key": args.image_key,
                 "label_key": args.label_key, "num_spans": args.num_spans,
                 "train_pattern": args.train_pattern, "eval_pattern": args.eval_pattern,
                 "beam_mode": args.beam_mode,
                 "max_bad_image_fraction": args.max_bad_image_fraction}
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    if args.no_augment:
        cfg.augment = False
    return cfg


@dataclasses.dataclass
class KubeflowSettings:
    """Deployment defaults of `graft kubeflow compile|submit` (what the pipeline does stays in
    PipelineConfig; this only says where and on what it runs)."""

    target: str = "kfp"                     # 'kfp' (open-source Kubeflow Pipelines 2.x) or 'vertex'
    project_dir: str = "/app"               # where the image installs this project
    gpus: int = 1                           # Trainer accelerators
    gpu_type: str = "nvidia.com/gpu"        # a Kubernetes resource name on KFP
    trainer_cpu: float = 8.0
    trainer_memory_gb: float = 32.0
    cpu: float = 4.0                        # every other component (Beam DirectRunner)
    memory_gb: float = 16.0
    package: str = "kubeflow/pipeline.yaml"
    experiment: str = "graft"
    max_concurrency: int = 1
