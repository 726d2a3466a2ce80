"""The short summary `graft run` prints at the end, read back from ML Metadata and the
artifacts: what ran or was cached, accuracy after each phase, blessing, push, how to serve."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil

from pipeline.reporting import mlmd as mlmd_query

NODE_ORDER = ["ImportExampleGen", "ImageCheck", "StatisticsGen", "SchemaGen", "ExampleValidator",
              "DataGate", "Transform", "Trainer", "Evaluator", "VersionedPusher"]


def collect(config, since: float | None = None) -> dict:
    """Facts of the latest run: node states, training summary, blessing, push, bad images.
    since: a time.time() value; a latest run that started before it is not this run (this
    one failed before ML Metadata heard of it) and yields no facts."""
    facts = {"states": {}, "training": {}, "blessed": None, "push": {}}
    if not os.path.exists(config.metadata_path):
        return facts
    try:
        store = mlmd_query.open_store(config.metadata_path)
        if since is not None and not latest_run_since(store, since):
            return facts
    except Exception:  # noqa: BLE001 - an unusable store (full disk): nothing is known
        return facts
    executions = mlmd_query.node_executions(store)
    facts["states"] = {k: mlmd_query.STATE_NAMES.get(e.last_known_state)
                       for k, e in executions.items()}
    for node, execution in executions.items():
        for a in mlmd_query.output_artifacts(store, execution):
            if node == "Trainer" and a.uri.rstrip("/").split("/")[-2] == "model_run":
                path = os.path.join(a.uri, "training_summary.json")
                if os.path.exists(path):
                    with open(path) as f:
                        facts["training"] = json.load(f)
                facts["model_run_uri"] = a.uri
            elif node == "Evaluator" and "/blessing/" in a.uri + "/":
                facts["blessed"] = bool(mlmd_query.custom(a, "blessed", 0))
            elif node == "Evaluator" and "/evaluation/" in a.uri + "/":
                facts["evaluation_uri"] = a.uri
            elif node == "ImageCheck" and a.uri.rstrip("/").split("/")[-2] == "report":
                path = os.path.join(a.uri, "image_check.json")
                if os.path.exists(path):
                    with open(path) as f:
                        facts["image_check"] = json.load(f)
            elif node == "VersionedPusher":
                facts["push"] = {k: mlmd_query.custom(a, k) for k in
                                 ("pushed", "pushed_version", "pushed_destination",
                                  "push_reason")}
    return facts


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


def format_summary(config, seconds: float, failed: Exception | None = None,
                   since: float | None = None) -> str:
    facts = collect(config, since)
    lines = ["", "graft run summary (%.0f s)" % seconds]
    states = facts["states"]
    # Resolver nodes are MLMD queries that resolve on every run: not worth a mention.
    states = {k: v for k, v in states.items() if "resolver" not in k and k != "span_window"}
    order = [n for n in NODE_ORDER if n in states] + sorted(set(states) - set(NODE_ORDER))
    lines.append("  components: " + (", ".join("%s %s" % (n, str(states[n]).lower())
                                               for n in order) or "none started"))
    bad = (facts.get("image_check") or {}).get("bad_records") or []
    if bad:
        lines.append("  bad images: %d records dropped (image does not decode):" % len(bad))
        for b in bad[:5]:
            lines.append("    %s %s record %d%s: %s" % (
                b["split"], b["file"].split("/")[-1], b["index"],
                " (%s)" % b["filename"] if b.get("filename") else "", b["error"]))
        if len(bad) > 5:
            lines.append("    ... %d more in the report" % (len(bad) - 5))
    tr = facts["training"]
    for phase in ("phase1", "phase2"):
        p = tr.get(phase) or {}
        if p:
            lines.append("  %s: val_accuracy %.4f (best epoch %d of %d, %.0f s)%s"
                         % (p.get("label") or phase.replace("phase", "phase "),
                            p["val_accuracy"], p["epoch"],
                            p["epochs_run"], p["seconds"],
                            "" if p.get("kept", True) else
                            "; not kept: no better than phase 1, its weights are used"))
    if facts["blessed"] is not None:
        why = ("accuracy >= %.3f and not worse than the last blessed model, if any"
               % config.min_accuracy
               if facts["blessed"] else
               "accuracy below %.3f or worse than the last blessed model" % config.min_accuracy)
        if facts.get("evaluation_uri"):
            try:
                acc = eval_metrics(facts["evaluation_uri"]).get("sparse_categorical_accuracy")
                if acc is not None:
                    why = "eval accuracy %.4f: %s" % (acc, why)
            except Exception:  # the summary must not fail on a report detail
                pass
        lines.append("  blessed: %s (%s)" % ("yes" if facts["blessed"] else "no", why))
    push = facts["push"]
    if push:
        lines.append("  push: %s" % push.get("push_reason"))
        dest = push.get("pushed_destination")
        if dest:
            base = os.path.dirname(dest)
            lines.append("  model: %s" % dest)
            lines.append("  serve: graft serve --model-base-path %s --model-name %s"
                         % (base, config.model_name))
            lines.append("  query: graft predict --server 127.0.0.1:8500 --model %s IMAGE..."
                         % config.model_name)
    if failed is not None:
        lines.append("  FAILED: %s" % root_message(failed))
        if states:
            lines.append("  (finished components stay cached: rerun the same command to resume)")
    return "\n".join(lines)


def root_message(e: BaseException) -> str:
    """The innermost cause's message (TFX wraps component errors)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return "%s: %s" % (type(e).__name__, e)


_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]")
_NO_SPACE = ("No space left on device", "database or disk is full")
_CANNOT_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)


def innermost(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return e


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system of path (or of its nearest existing ancestor)."""
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def error_line(e: BaseException, output_dir: str) -> str:
    """The one line after `error: ` for a failed run: the innermost message without
    TensorFlow's op noise, named as a full disk or an unwritable output dir when it is one
    (SQLite reports a full disk as a failed COMMIT, so a nearly full disk is mentioned too)."""
    inner = innermost(e)
    text = str(inner).strip()
    if type(inner).__module__ != "builtins" or not text:  # library errors: keep the type
        text = root_message(e)
    lines = _TF_NOISE.sub("", text).strip().splitlines()
    line = lines[0] + (" (details in the summary above)" if len(lines) > 1 else "")
    free = free_bytes(output_dir)
    if (isinstance(inner, OSError) and inner.errno == errno.ENOSPC
            or any(s in line for s in _NO_SPACE)):
        return "disk full under %s: %s" % (output_dir, line)
    if isinstance(inner, OSError) and inner.errno in _CANNOT_WRITE:
        return "cannot write the output directory %s: %s" % (output_dir, line)
    if free is not None and free < (1 << 20):
        return "%s (the disk of %s is full: %d KB free)" % (line, output_dir, free // 1024)
    return line
