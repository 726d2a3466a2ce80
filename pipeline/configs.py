"""The one typed configuration of a graft pipeline run, and its defaults.

`PipelineConfig` holds what the pipeline and its runners decide (data layout, blessing floor,
paths, Beam) and contains the `TrainingConfig` that the Transform and Trainer read
(components/training_config.py, which owns those defaults). Nothing else defines defaults:
the `graft run` / `graft retrain` / `graft kubeflow compile` flags are generated from the
fields of both dataclasses (a field with a help text is a flag named after it), and
`from_args()` is the only place that turns flags into a config.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Iterable

from components.training_config import DEFAULT_BACKBONE, RECIPES, TrainingConfig, config_field

DEFAULT_OUTPUT_DIR = "graft-output"
DEFAULT_MODEL_NAME = "graft"
TFLITE_FORMATS = ("none", "float32", "float16", "int8")
# The code that runs inside TFX components (module files live at its top level).
COMPONENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "components")

__all__ = ["DEFAULT_BACKBONE", "PipelineConfig", "TrainingConfig"]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that decides what a pipeline run does."""

    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    # Data.
    data_dir: str = ""                      # span-N/{train,eval[,test]}/*
    num_spans: int = config_field(1, "train on a rolling window of the last K spans")
    max_bad_image_fraction: float = config_field(
        0.1, "fail when more than this fraction of a split's images do not decode (fewer are "
        "dropped and listed in the report)")
    train_pattern: str = config_field("span-{SPAN}/train/*", "train files under --data")
    eval_pattern: str = config_field("span-{SPAN}/eval/*", "eval files under --data (early "
                                     "stopping and the phase choice)")
    test_pattern: str = config_field(
        "span-{SPAN}/test/*", "test files under --data: the split the blessing gate scores; "
        "graft run falls back to the eval split (and says so) when the data has none; '' = "
        "no test split")
    # Evaluation and push.
    min_accuracy: float = config_field(
        0.5, "blessing floor on the gating split's accuracy, a fraction (0.5 = half right)")
    # 0.03: two models of the same recipe and data differ by up to 2.7 points (95th percentile
    # and max over 45 seed pairs) on flowers-dev's 148 test photos (bench/gate_tolerance.py).
    max_regression: float = config_field(
        0.03, "how much lower than the last blessed model's a new model's accuracy may be on "
        "the same gating split and still be blessed, a fraction like --min-accuracy (0.03 = "
        "3 points: the seed-to-seed spread measured on flowers-dev; 0 = never lower)")
    model_name: str = config_field(DEFAULT_MODEL_NAME, "served model name")
    # TFLite export (components/custom/tflite_export.py).
    tflite: str = config_field(
        "int8", "TFLite export after the Trainer, pushed to SERVING_DIR/NAME-tflite/VERSION/ "
        "(int8: full-integer quantization; none: no export)", choices=TFLITE_FORMATS)
    tflite_max_drop: float = config_field(
        0.01, "push the TFLite model only if its accuracy on the gating split is at most this "
        "much below the SavedModel's on the same images (0.01 = 1 point)")
    # Where things go (owned by the runner).
    pipeline_name: str = "graft"
    output_dir: str = DEFAULT_OUTPUT_DIR
    serving_dir: str = ""                   # empty = OUTPUT_DIR/serving
    # Beam.
    # in_memory (Beam's own default) on the local runner: one process, no worker start-up
    # and the Evaluator loads the model once (flowers-dev, 2 shared cores: Evaluator 61 s vs
    # 216 s, whole run 596 s vs 947 s, peak 4.4 GB in one process vs 4.9 GB + workers).
    beam_mode: str = config_field("in_memory", "Beam DirectRunner mode of the local runner "
                                  "(multi_processing: one worker process per core)",
                                  choices=("in_memory", "multi_processing"))
    beam_workers: int = 0                   # 0 = one per core

    @property
    def gate_split(self) -> str:
        """The split the Evaluator blesses on: test when the data has one, else eval."""
        return "test" if self.test_pattern else "eval"

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


def flag_fields() -> list[tuple[type, dataclasses.Field]]:
    """(dataclass, field) of every setting that is a command-line flag, training first."""
    return [(cls, f) for cls in (TrainingConfig, PipelineConfig)
            for f in dataclasses.fields(cls) if f.metadata.get("help")]


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("negative") or "--" + field.name.replace("_", "-")


def add_config_arguments(p: argparse.ArgumentParser, exclude: Iterable[str] = ()) -> None:
    """One flag per config field with a help text (not given = the config's default)."""
    for cls, f in flag_fields():
        if f.name in exclude:
            continue
        default = f.default
        if isinstance(default, bool):
            p.add_argument(flag_name(f), dest=f.name, action="store_const", const=not default,
                           default=None, help="%s (%s by default; this flag turns it %s)"
                           % (f.metadata["help"], "on" if default else "off",
                              "off" if default else "on"))
            continue
        kind = f.metadata.get("type") or type(default)
        help_text = f.metadata["help"]
        if default not in (None, ""):
            help_text += " (default %s)" % str(default).replace("%", "%%")
        p.add_argument(flag_name(f), dest=f.name, type=kind, default=None,
                       choices=f.metadata.get("choices"), help=help_text)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The `graft run` / `graft retrain` flags."""
    p.add_argument("--data", default="",
                   help="directory with span-N/{train,eval}/* TFRecords and labels.txt, or a "
                   "folder of class sub-folders (converted first), or 'flowers' (downloads "
                   "tf_flowers); default: the demo photos shipped with graft (300 of tf_flowers)")
    p.add_argument("--output", default=DEFAULT_OUTPUT_DIR,
                   help="pipeline root, ML Metadata and report go here (default %(default)s)")
    p.add_argument("--serving-dir", default="", help="push target (default OUTPUT/serving)")
    add_config_arguments(p)


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


def from_args(args: argparse.Namespace, *, data_dir: str, label_names: tuple, output_dir: str,
              serving_dir: str = "", code_version: str = "") -> PipelineConfig:
    """The config of a run: defaults (of the chosen --recipe), then the given flags."""
    given = {f.name: getattr(args, f.name) for _, f in flag_fields()
             if getattr(args, f.name, None) is not None}
    training_names = {f.name for f in dataclasses.fields(TrainingConfig)}
    training = {**RECIPES[given.get("recipe", "default")],
                **{k: v for k, v in given.items() if k in training_names}}
    pipeline = {k: v for k, v in given.items() if k not in training_names}
    if str(training.get("backbone", "")).startswith("hub:"):
        from components.backbones import hub  # a local module's content is part of the key
        training["hub_fingerprint"] = hub.fingerprint(training["backbone"])
    return PipelineConfig(
        training=TrainingConfig(label_names=tuple(label_names), code_version=code_version,
                                **training),
        data_dir=data_dir, output_dir=output_dir, serving_dir=serving_dir, **pipeline)


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
