"""The facts of a run, gathered once: `collect()` reads the latest run back from ML Metadata
and its artifacts into one JSON-able dict, which both the summary `graft run` prints
(pipeline/reporting/summary.py) and OUTPUT/report.html (pipeline/reporting/report.py) consume.

The facts: component states and wall times, per-class counts and bad images (ImageCheck),
anomalies (ExampleValidator) and the DataGate verdict, training curves (the Trainer's
history.png and training_summary.json), evaluation (accuracy, per-class recall, confusion
matrix from TFMA's MultiClassConfusionMatrixPlot), the split that gated (test, or eval with a
note) and each accuracy with its 95 % Wilson interval, the blessing and why, the push, and
the diagnostics (pipeline/reporting/diagnostics.py: imbalance, over-fitting, error
analysis). Every
section is read on its own: a missing or unreadable artifact leaves that section empty with a
note, never fails the collection.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import time

from pipeline.data.splits import FALLBACK_NOTE
from pipeline.reporting import diagnostics, mlmd
from pipeline.reporting.errors import root_message

NODE_ORDER = ["ImportExampleGen", "ImageCheck", "SpanMerge", "StatisticsGen", "SchemaGen",
              "ExampleValidator", "DataGate", "Transform", "Trainer", "Evaluator",
              "VersionedPusher", "TFLiteExport"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read(path: str, mode: str = "r"):
    with open(path, mode) as f:
        return f.read()


def components(store, executions: dict) -> list:
    """[{node, state, seconds}] in pipeline order."""
    order = [n for n in NODE_ORDER if n in executions] + sorted(
        set(executions) - set(NODE_ORDER))
    out = []
    for node in order:
        e = executions[node]
        out.append({"node": node,
                    "state": mlmd.STATE_NAMES.get(e.last_known_state, "UNKNOWN"),
                    "seconds": max(0.0, (e.last_update_time_since_epoch
                                         - e.create_time_since_epoch) / 1000.0)})
    return out


def data_facts(store, executions: dict, label_names) -> dict:
    """Per-class counts per split and bad records (ImageCheck), anomalies per split."""
    out = {"label_names": list(label_names), "splits": {}, "bad_records": [], "anomalies": {}}
    if "ImageCheck" in executions:
        report = mlmd.output_artifact(store, executions["ImageCheck"], "report")
        cleaned = mlmd.output_artifact(store, executions["ImageCheck"], "cleaned_examples")
        if report is not None and os.path.exists(os.path.join(report.uri, "image_check.json")):
            checked = json.loads(_read(os.path.join(report.uri, "image_check.json")))
            out["splits"] = checked.get("splits", {})
            out["bad_records"] = checked.get("bad_records", [])
            out["max_bad_fraction"] = checked.get("max_bad_fraction")
        if cleaned is not None:
            out["span"] = mlmd.custom(cleaned, "span")
    if "ExampleValidator" in executions:
        anomalies = mlmd.output_artifact(store, executions["ExampleValidator"], "anomalies")
        if anomalies is not None:
            out["anomalies"] = read_anomalies(anomalies.uri)
    return out


def conversion_duplicates(data_dir: str, span) -> dict | None:
    """Duplicate images make-tfrecords found in the span (span-N/conversion.json): counts of
    groups/files with identical bytes, across classes and across train/eval; None without."""
    path = os.path.join(data_dir or "", "span-%s" % span, "conversion.json")
    if span is None or not data_dir or not os.path.exists(path):
        return None
    found = json.loads(_read(path)).get("duplicates") or {}
    return {k: int(found.get(k, 0)) for k in ("groups", "files", "across_classes",
                                              "across_splits")}


def read_anomalies(uri: str) -> dict:
    """{split: [description, ...]} from ExampleValidator's Split-*/SchemaDiff.pb."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    out = {}
    for name in sorted(os.listdir(uri)):
        path = os.path.join(uri, name, "SchemaDiff.pb")
        if not name.startswith("Split-") or not os.path.exists(path):
            continue
        anomalies = anomalies_pb2.Anomalies.FromString(_read(path, "rb"))
        found = ["feature '%s': %s" % (feature, info.description or info.short_description)
                 for feature, info in sorted(anomalies.anomaly_info.items())]
        if anomalies.HasField("dataset_anomaly_info"):
            found.append(anomalies.dataset_anomaly_info.description)
        out[name[len("Split-"):]] = found
    return out


def training_facts(store, executions: dict) -> dict:
    if "Trainer" not in executions:
        return {}
    run = mlmd.output_artifact(store, executions["Trainer"], "model_run")
    if run is None:
        return {}
    out = {"model_run": run.uri}
    for name, key in (("training_summary.json", "summary"), ("history.json", "history")):
        path = os.path.join(run.uri, name)
        if os.path.exists(path):
            out[key] = json.loads(_read(path))
    png = os.path.join(run.uri, "history.png")
    if os.path.exists(png):
        out["history_png"] = _b64(_read(png, "rb"))
    return out


def failure_text(failure) -> str:
    """One TFMA ValidationFailure in words: the value and the threshold it missed."""
    if failure.message:
        return failure.message
    key = failure.metric_key
    which = failure.metric_value.WhichOneof("type")
    value = failure.metric_value.double_value.value if which == "double_value" else None
    t = failure.metric_threshold
    shown = "%.4f" % value if value is not None else "?"
    if key.is_diff or t.HasField("change_threshold"):
        return ("%s changed by %s against the last blessed model: worse than the baseline"
                % (key.name.replace("_diff", ""), shown))
    bounds = t.value_threshold
    parts = []
    if bounds.HasField("lower_bound"):
        parts.append("below the floor %g" % bounds.lower_bound.value)
    if bounds.HasField("upper_bound"):
        parts.append("above the ceiling %g" % bounds.upper_bound.value)
    return "%s %s %s" % (key.name, shown, " and ".join(parts) or "failed its threshold")


def confusion_matrix(plots, num_classes: int) -> list | None:
    """The first MultiClassConfusionMatrixAtThresholds of the overall slice as [actual][pred]
    counts (TFMA's JSON form leaves out zero ids and counts)."""
    for _slice, by_output in plots:
        for by_key in by_output.values():
            for plot in by_key.values():
                cm = plot.get("multiClassConfusionMatrixAtThresholds")
                if not cm or not cm.get("matrices"):
                    continue
                matrix = [[0.0] * num_classes for _ in range(num_classes)]
                for entry in cm["matrices"][0].get("entries", []):
                    a = int(entry.get("actualClassId", 0))
                    p = int(entry.get("predictedClassId", 0))
                    if 0 <= a < num_classes and 0 <= p < num_classes:
                        matrix[a][p] += float(entry.get("numWeightedExamples", 0.0))
                return matrix
    return None


def _overall(result, metric: str):
    """One overall (unsliced, no sub key) metric of a TFMA EvalResult, or None."""
    for slice_key, metrics in result.slicing_metrics:
        if slice_key == ():
            for by_key in metrics.values():
                value = by_key.get("", {}).get(metric)
                if isinstance(value, dict) and "doubleValue" in value:
                    return value["doubleValue"]
    return None


def evaluation_facts(evaluation_uri: str, num_classes: int) -> dict:
    """Accuracy, example count, per-class recall, confusion matrix and TFMA's validation."""
    import tensorflow_model_analysis as tfma
    model = candidate_name(evaluation_uri)
    result = tfma.load_eval_result(evaluation_uri, model_name=model)
    out = {"recall": {}, "model": model}
    for slice_key, metrics in result.slicing_metrics:
        if slice_key != ():
            continue
        for by_key in metrics.values():
            for sub_key, values in by_key.items():
                for name, value in values.items():
                    v = value.get("doubleValue") if isinstance(value, dict) else None
                    if v is None:
                        continue
                    if sub_key.startswith("classId:") and name == "recall":
                        out["recall"][int(sub_key.split(":")[1])] = v
                    elif sub_key == "" and name == "sparse_categorical_accuracy":
                        out["accuracy"] = v
                    elif sub_key == "" and name == "example_count":
                        out["example_count"] = v
    if model == "candidate":  # the last blessed model, scored on the same examples
        try:
            out["baseline_accuracy"] = _overall(
                tfma.load_eval_result(evaluation_uri, model_name="baseline"),
                "sparse_categorical_accuracy")
        except Exception:  # noqa: BLE001 - the candidate's facts stand without it
            out["baseline_accuracy"] = None
    out["confusion"] = confusion_matrix(result.plots or [], num_classes)
    validation = tfma.load_validation_result(evaluation_uri)
    out["validation_ok"] = bool(validation.validation_ok)
    out["failures"] = [failure_text(f) for per_slice in validation.metric_validations_per_slice
                       for f in per_slice.failures]
    return out


def confusion_png(matrix: list, names: list) -> bytes:
    """The confusion matrix as a heatmap (rows: actual, columns: predicted), row-normalised
    colours, counts printed in the cells."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(names)
    side = min(12.0, 2.2 + 0.55 * n)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=names, rotation=45 if n > 4 else 0, ha="right" if n > 4
                  else "center")
    ax.set_yticks(range(n), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, "%g" % m[i, j], ha="center", va="center", fontsize=9,
                        color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the actual class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return buf.getvalue()


def wilson(accuracy: float | None, n: float | None, z: float = 1.96) -> list | None:
    """The 95 % Wilson score interval [low, high] of an accuracy measured on n examples
    (deterministic, from the count alone; sound at 0 and 1 unlike the normal approximation)."""
    if accuracy is None or not n:
        return None
    denom = 1 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denom
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def accuracy_facts(gate_split: str, evaluation: dict, training: dict) -> list:
    """[{split, accuracy, examples, ci95, role}]: the gating split's accuracy (the Evaluator,
    TFMA) first, then the eval split's (the Trainer's final evaluation of the kept weights)
    when the gate scored test."""
    rows = []
    if evaluation.get("accuracy") is not None:
        n = evaluation.get("example_count")
        role = ("gates the push" if gate_split == "test"
                else "chose the model and gates the push")
        rows.append({"split": gate_split, "accuracy": evaluation["accuracy"], "examples": n,
                     "ci95": wilson(evaluation["accuracy"], n), "role": role})
        if evaluation.get("baseline_accuracy") is not None:
            rows.append({"split": gate_split, "accuracy": evaluation["baseline_accuracy"],
                         "examples": n, "ci95": wilson(evaluation["baseline_accuracy"], n),
                         "role": "the last blessed model, same examples"})
    summary = (training or {}).get("summary") or {}
    if gate_split == "test" and summary.get("final_val_accuracy") is not None:
        n = summary.get("eval_examples")
        rows.append({"split": "eval", "accuracy": summary["final_val_accuracy"], "examples": n,
                     "ci95": wilson(summary["final_val_accuracy"], n),
                     "role": "chose the model (early stopping, phase 2): optimistic"})
    return rows


def baseline_rule(max_regression: float) -> tuple[str, str]:
    """The "compared with the last blessed model" half of the blessing rule in words: (what a
    blessed model met, what a refused one may have missed)."""
    if not max_regression:
        return "not worse than the last blessed model", "worse than the last blessed model"
    points = "%.3g points" % (100 * max_regression)
    return ("at most %s below the last blessed model" % points,
            "more than %s below the last blessed model" % points)


def blessing_facts(blessed, config, evaluation: dict) -> dict:
    if blessed is None:
        return {}
    acc = evaluation.get("accuracy")
    split = config.gate_split
    if blessed:
        reason = "%s accuracy %s >= the floor %.3f and %s" % (
            split, "%.4f" % acc if acc is not None else "?", config.min_accuracy,
            baseline_rule(config.max_regression)[0] if evaluation.get("model") == "candidate"
            else "no earlier blessed model to compare with")
    elif evaluation.get("failures"):
        reason = "; ".join(evaluation["failures"])
    else:
        reason = ("%s accuracy below %.3f or %s"
                  % (split, config.min_accuracy, baseline_rule(config.max_regression)[1]))
    return {"blessed": bool(blessed), "reason": reason}


def outcome_facts(store, executions: dict) -> dict:
    """The Evaluator's blessing (None: no blessing artifact) and evaluation URI, the push."""
    out = {"blessed": None, "push": {}}
    if "Evaluator" in executions:
        for a in mlmd.output_artifacts(store, executions["Evaluator"]):
            if "/blessing/" in a.uri + "/":
                out["blessed"] = bool(mlmd.custom(a, "blessed", 0))
            elif "/evaluation/" in a.uri + "/":
                out["evaluation_uri"] = a.uri
    if "VersionedPusher" in executions:
        for a in mlmd.output_artifacts(store, executions["VersionedPusher"]):
            out["push"] = {k: mlmd.custom(a, k) for k in
                           ("pushed", "pushed_version", "pushed_destination", "push_reason")}
    return out


def export_facts(store, executions: dict) -> list:
    """One row per exported format, from TFLiteExport's artifact (absent with --tflite none):
    [{format, size_bytes, accuracy, drop, pushed, destination, reason}], the SavedModel first
    (its accuracy measured by TFLiteExport on the same gating-split images)."""
    if "TFLiteExport" not in executions:
        return []
    for a in mlmd.output_artifacts(store, executions["TFLiteExport"]):
        c = lambda k, d=None: mlmd.custom(a, k, d)  # noqa: E731
        if c("format") is None:
            continue
        split = "%s split, %s images" % (c("split"), c("count"))
        return [{"format": "SavedModel", "size_bytes": c("savedmodel_size_bytes"),
                 "accuracy": c("savedmodel_accuracy"), "drop": 0.0, "split": split},
                {"format": "TFLite " + c("format"), "size_bytes": c("size_bytes"),
                 "accuracy": c("tflite_accuracy"), "drop": c("drop"), "split": split,
                 "pushed": bool(c("pushed", 0)), "destination": c("pushed_destination"),
                 "reason": c("push_reason")}]
    return []


def latest_run_since(store, since: float) -> bool:
    """Whether the latest pipeline run in the store started at or after `since` (seconds)."""
    runs = store.get_contexts_by_type("pipeline_run")
    return bool(runs) and max(c.create_time_since_epoch for c in runs) >= since * 1000 - 1000


def candidate_name(evaluation_uri: str) -> str | None:
    """TFMA's name of the evaluated model: 'candidate' when a baseline was compared, else
    the only one."""
    from tensorflow_model_analysis.writers import eval_config_writer
    _, _, _, locations = eval_config_writer.load_eval_run(evaluation_uri)
    names = list(locations or {})
    return "candidate" if "candidate" in names else (names[0] if len(names) == 1 else None)


def eval_metrics(evaluation_uri: str) -> dict:
    """Overall metrics of a TFMA evaluation, {name: value}, for the candidate model."""
    import tensorflow_model_analysis as tfma
    result = tfma.load_eval_result(evaluation_uri, model_name=candidate_name(evaluation_uri))
    out = {}
    for _slice, metrics in result.slicing_metrics:
        for output in metrics.values():
            for sub_key, values in output.items():
                for name, value in values.items():
                    if "doubleValue" in value:
                        out[(name + " " + sub_key).strip()] = value["doubleValue"]
    return out


def collect(config, seconds: float, failed: BaseException | None = None,
            since: float | None = None) -> dict:
    """Every fact of the latest run, JSON-able. Never raises: problems become notes.
    since: a time.time() value; a latest run that started before it is not this run (this one
    failed before ML Metadata heard of it) and yields no facts from ML Metadata."""
    label_names = list(config.training.label_names)
    facts = {"title": "graft run report", "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
             "seconds": seconds, "output_dir": config.output_dir, "data_dir": config.data_dir,
             "backbone": config.training.backbone, "model_name": config.model_name,
             "min_accuracy": config.min_accuracy, "max_regression": config.max_regression,
             "gate_split": config.gate_split,
             "gate_note": None if config.gate_split == "test" else FALLBACK_NOTE,
             "label_names": label_names,
             "failed": root_message(failed) if failed is not None else None,
             "components": [], "data": {"label_names": label_names, "splits": {}},
             "training": {}, "evaluation": {}, "accuracies": [], "blessing": {}, "push": {},
             "exports": [],
             "notes": []}

    def section(name, fn):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a section must not sink the others
            facts["notes"].append("%s: not available (%s: %s)" % (name, type(e).__name__, e))
            return None

    if not os.path.exists(config.metadata_path):
        facts["notes"].append("no ML Metadata at %s: the run stopped before any component "
                              "started" % config.metadata_path)
        return facts
    store = section("ML Metadata", lambda: mlmd.open_store(config.metadata_path))
    if store is None:
        return facts
    if since is not None and not latest_run_since(store, since):
        facts["notes"].append("this run stopped before any component started; nothing in ML "
                              "Metadata belongs to it")
        return facts
    executions = section("components", lambda: mlmd.node_executions(store)) or {}
    facts["components"] = section("components", lambda: components(store, executions)) or []
    facts["data"] = section("data", lambda: data_facts(store, executions, label_names)) \
        or facts["data"]
    facts["data"]["duplicates"] = section("duplicates", lambda: conversion_duplicates(
        config.data_dir, facts["data"].get("span")))
    facts["data_gate"] = next((c["state"] for c in facts["components"]
                               if c["node"] == "DataGate"), None)
    facts["training"] = section("training", lambda: training_facts(store, executions)) or {}
    outcome = section("blessing and push", lambda: outcome_facts(store, executions)) or {}
    if outcome.get("evaluation_uri"):
        facts["evaluation"] = section("evaluation", lambda: evaluation_facts(
            outcome["evaluation_uri"], len(label_names))) or {}
        if facts["evaluation"].get("confusion"):
            png = section("confusion matrix", lambda: confusion_png(
                facts["evaluation"]["confusion"], label_names))
            if png:
                facts["evaluation"]["confusion_png"] = _b64(png)
    facts["blessing"] = blessing_facts(outcome.get("blessed"), config, facts["evaluation"])
    facts["accuracies"] = accuracy_facts(config.gate_split, facts["evaluation"],
                                         facts["training"])
    facts["push"] = outcome.get("push") or {}
    facts["diagnostics"] = section("diagnostics", lambda: diagnostics.collect(
        store, executions, config, facts, since))
    facts["exports"] = section("exports", lambda: export_facts(store, executions)) or []
    return facts
