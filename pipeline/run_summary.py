"""The short summary `graft run` prints at the end, read back from ML Metadata and the
artifacts: what ran or was cached, accuracy after each phase, blessing, push, how to serve."""
from __future__ import annotations

import json
import os

from pipeline import mlmd_query

NODE_ORDER = ["ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "DataGate",
              "Transform", "Trainer", "Evaluator", "VersionedPusher"]


def collect(config) -> dict:
    """Facts of the latest run: node states, training summary, blessing, push."""
    facts = {"states": {}, "training": {}, "blessed": None, "push": {}}
    if not os.path.exists(config.metadata_path):
        return facts
    store = mlmd_query.open_store(config.metadata_path)
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
            elif node == "VersionedPusher":
                facts["push"] = {k: mlmd_query.custom(a, k) for k in
                                 ("pushed", "pushed_version", "pushed_destination",
                                  "push_reason")}
    return facts


def eval_metrics(evaluation_uri: str) -> dict:
    """Overall metrics of a TFMA evaluation, {name: value}, for the candidate model."""
    import tensorflow_model_analysis as tfma
    result = tfma.load_eval_result(evaluation_uri)
    out = {}
    for _slice, metrics in result.slicing_metrics:
        for output in metrics.values():
            for sub_key, values in output.items():
                for name, value in values.items():
                    if "doubleValue" in value:
                        out[(name + " " + sub_key).strip()] = value["doubleValue"]
    return out


def format_summary(config, seconds: float, failed: Exception | None = None) -> str:
    facts = collect(config)
    lines = ["", "graft run summary (%.0f s)" % seconds]
    states = facts["states"]
    order = [n for n in NODE_ORDER if n in states] + sorted(set(states) - set(NODE_ORDER))
    lines.append("  components: " + ", ".join("%s %s" % (n, states[n].lower()) for n in order))
    tr = facts["training"]
    for phase in ("phase1", "phase2"):
        p = tr.get(phase) or {}
        if p:
            lines.append("  %s: val_accuracy %.4f (best epoch %d of %d, %.0f s)"
                         % (phase.replace("phase", "phase "), p["val_accuracy"], p["epoch"],
                            p["epochs_run"], p["seconds"]))
    if facts["blessed"] is not None:
        why = ("accuracy >= %.3f and not worse than the last blessed model" % config.min_accuracy
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
        lines.append("  (finished components stay cached: rerun the same command to resume)")
    return "\n".join(lines)


def root_message(e: BaseException) -> str:
    """The innermost cause's message (TFX wraps component errors)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return "%s: %s" % (type(e).__name__, e)
