"""TFLiteExport: converts the trained model to TFLite, evaluates it like the SavedModel, and
pushes it next to the SavedModel when it is close enough.

After VersionedPusher. Reads the Trainer's SavedModel, the latest span's cleaned examples
(ImageCheck's output: one artifact, the newest data), the Evaluator's blessing and the
VersionedPusher's result (to reuse its version). Steps (components/custom/tflite.py):

1. convert (`format`: float32 | float16 | int8; int8 calibrates on REPRESENTATIVE_COUNT
   training images, a seeded uniform sample, decoded and resized by the Transform graph's ops);
2. evaluate the TFLite interpreter and the SavedModel's `serving_default` on the same images
   of the gating split (`test` if the examples have one, else `eval`);
3. push `SERVING_DIR/NAME-tflite/VERSION/{model.tflite,labels.txt}` only if the SavedModel
   was pushed in this run (VERSION = its version) and the TFLite accuracy is at most
   `max_drop` below the SavedModel's.

Output `tflite_model` (graft.TFLiteModel): model.tflite, labels.txt and tflite_export.json
in its directory; custom properties format, size_bytes, savedmodel_size_bytes, split,
examples, tflite_accuracy, savedmodel_accuracy, drop, max_abs_diff, metadata, pushed,
pushed_version, pushed_destination, push_reason (what the run report shows).
"""

import json
import os

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components.backbones import registry
from components.custom import tflite
from components.training_config import TrainingConfig

RESULT_FILE = "tflite_export.json"
TFLITE_SUFFIX = "-tflite"
# int8 calibration images. Measured (bench/tflite_calibration.py, 3 samples per count, Lite0
# models of flowers-dev and mri-dev): top-1 agreement with the SavedModel and the accuracy drop
# are the same from 25 to 300 images within one image's noise; the conversion takes ~5 s with
# 50 and ~10.5 s with 150 (the earlier default).
REPRESENTATIVE_COUNT = 50


class TFLiteModel(tfx.dsl.Artifact):
    """model.tflite + labels.txt + tflite_export.json (size, accuracy, drop, push)."""

    TYPE_NAME = "graft.TFLiteModel"


def gating_split(split_names: list) -> str:
    return "test" if "test" in split_names else "eval"


def _files(examples_uri: str, split: str) -> list:
    return sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-%s" % split, "*")))


def export(model_dir: str, examples_uri: str, split_names: list, cfg: TrainingConfig, fmt: str,
           out_dir: str, representative_count: int = REPRESENTATIVE_COUNT) -> dict:
    """Convert, evaluate against the SavedModel, write out_dir/{model.tflite, labels.txt,
    tflite_export.json}; returns the result dict (no push)."""
    backbone = registry.get_backbone(cfg.backbone)
    size = cfg.input_size()
    split = gating_split(split_names)
    gating_files = _files(examples_uri, split)
    if not gating_files:
        raise ValueError("no %s files under %s" % (split, examples_uri))
    representative = None
    if fmt == "int8":
        sample = tflite.sample_examples(
            tflite.iter_examples(_files(examples_uri, "train"), cfg.image_key, cfg.label_key),
            representative_count, seed=cfg.seed)
        representative = tflite.decode_uint8([b for b, _ in sample], size)
    model = tf.saved_model.load(model_dir)
    content = tflite.convert(model, backbone, size, fmt, representative)
    # One thread: measured on a busy 2-core machine, a 2-thread interpreter's median call was
    # 100x its best (thread-pool stalls, bench/results/tflite.json); one thread never stalls.
    runner = tflite.Runner(model_content=content, num_threads=1)
    scores = tflite.compare(model, runner, tflite.iter_examples(
        gating_files, cfg.image_key, cfg.label_key))
    content, metadata = tflite.add_metadata(content, cfg.label_names)
    tflite.write_model(out_dir, content, cfg.label_names)
    result = dict(scores, format=fmt, split=split, size_bytes=len(content),
                  savedmodel_size_bytes=tflite.directory_bytes(model_dir),
                  drop=scores["savedmodel_accuracy"] - scores["tflite_accuracy"],
                  metadata=metadata,
                  representative_examples=0 if representative is None else len(representative))
    return result


def export_and_push(model_dir: str, examples_uri: str, split_names: list, cfg: TrainingConfig,
                    fmt: str, out_dir: str, max_drop: float, savedmodel_push: dict,
                    serving_dir: str, model_name: str) -> dict:
    """export(), then apply_push()."""
    result = export(model_dir, examples_uri, split_names, cfg, fmt, out_dir)
    return apply_push(result, out_dir, cfg.label_names, max_drop, savedmodel_push, serving_dir,
                      model_name)


def apply_push(result: dict, out_dir: str, label_names, max_drop: float, savedmodel_push: dict,
               serving_dir: str, model_name: str) -> dict:
    """The push rule (tflite.push_decision) on export()'s result; pushes out_dir's model to
    SERVING_DIR/NAME-tflite/VERSION when it passes; writes out_dir/tflite_export.json.
    savedmodel_push: {'pushed', 'version', 'reason'} of the SavedModel in this run (pushed is
    False when it was not blessed)."""
    result = dict(result)
    push, why = tflite.push_decision(result["tflite_accuracy"], result["savedmodel_accuracy"],
                                     max_drop, bool(savedmodel_push["pushed"]),
                                     savedmodel_push.get("reason", ""))
    destination = ""
    if push:
        version = int(savedmodel_push["version"])
        with tf.io.gfile.GFile(os.path.join(out_dir, tflite.MODEL_FILE), "rb") as f:
            destination = tflite.push(f.read(), label_names,
                                      os.path.join(serving_dir, model_name + TFLITE_SUFFIX),
                                      version)
        why = "pushed as version %d: %s" % (version, why)
    result.update(max_drop=max_drop, pushed=push,
                  pushed_version=int(savedmodel_push["version"]) if push else 0,
                  pushed_destination=destination, push_reason=why)
    with tf.io.gfile.GFile(os.path.join(out_dir, RESULT_FILE), "w") as f:
        json.dump(result, f, indent=1)
    return result


@tfx.dsl.components.component
def TFLiteExport(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    model_blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    pushed_model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.PushedModel],
    tflite_model: tfx.dsl.components.OutputArtifact[TFLiteModel],
    training_config: tfx.dsl.components.Parameter[str],
    tflite_format: tfx.dsl.components.Parameter[str],
    max_drop: tfx.dsl.components.Parameter[float],
    serving_dir: tfx.dsl.components.Parameter[str],
    model_name: tfx.dsl.components.Parameter[str],
) -> None:
    cfg = TrainingConfig.from_custom_config(json.loads(training_config))
    if model_blessing.get_int_custom_property("blessed"):
        savedmodel_push = {"pushed": pushed_model.get_int_custom_property("pushed"),
                           "version": pushed_model.get_int_custom_property("pushed_version"),
                           "reason": pushed_model.get_string_custom_property("push_reason")}
    else:
        savedmodel_push = {"pushed": 0, "version": 0,
                           "reason": "model not blessed by the Evaluator"}
    result = export_and_push(
        path_utils.serving_model_path(model.uri), examples.uri,
        artifact_utils.decode_split_names(examples.split_names), cfg, tflite_format,
        tflite_model.uri, max_drop, savedmodel_push, serving_dir, model_name)
    for key, value in result.items():
        if isinstance(value, bool):
            tflite_model.set_int_custom_property(key, int(value))
        elif isinstance(value, int):
            tflite_model.set_int_custom_property(key, value)
        elif isinstance(value, float):
            tflite_model.set_float_custom_property(key, value)
        else:
            tflite_model.set_string_custom_property(key, str(value))
    print("graft tflite: %s %.2f MB, accuracy %.4f vs SavedModel %.4f on %d %s examples; %s"
          % (tflite_format, result["size_bytes"] / 1e6, result["tflite_accuracy"],
             result["savedmodel_accuracy"], result["count"], result["split"],
             result["push_reason"]))
