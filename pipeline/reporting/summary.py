"""The short summary `graft run` prints at the end: what ran or was cached, bad images,
accuracy after each phase, blessing (and which split gated it), the accuracies with their 95 %
intervals, push, how to serve. format_summary() turns the facts of
the run (pipeline/reporting/facts.py) into text; it reads nothing itself."""
from __future__ import annotations

import os

from pipeline.reporting import diagnostics, pixel_baseline
from pipeline.reporting.facts import baseline_rule


def accuracy_text(row: dict) -> str:
    """'test accuracy 0.9333, 95 % CI 0.8830-0.9633 (150 examples): gates the push'."""
    ci = row.get("ci95")
    return "%s accuracy %.4f%s%s: %s" % (
        row["split"], row["accuracy"], ", 95 %% CI %.4f-%.4f" % tuple(ci) if ci else "",
        " (%d examples)" % row["examples"] if row.get("examples") else "", row["role"])


def format_summary(facts: dict) -> str:
    """The summary of one run's facts (facts.collect())."""
    lines = ["", "graft run summary (%.0f s)" % facts["seconds"]]
    # Resolver nodes are MLMD queries that resolve on every run: not worth a mention.
    states = [(c["node"], c["state"]) for c in facts["components"]
              if "resolver" not in c["node"] and c["node"] != "span_window"]
    lines.append("  components: " + (", ".join("%s %s" % (node, state.lower())
                                               for node, state in states) or "none started"))
    bad = facts["data"].get("bad_records") or []
    if bad:
        lines.append("  bad images: %d records dropped (image does not decode):" % len(bad))
        for b in bad[:5]:
            lines.append("    %s %s record %d%s: %s" % (
                b["split"], b["file"].split("/")[-1], b["index"],
                " (%s)" % b["filename"] if b.get("filename") else "", b["error"]))
        if len(bad) > 5:
            lines.append("    ... %d more in the report" % (len(bad) - 5))
    tr = facts["training"].get("summary") or {}
    for phase in ("phase1", "phase2"):
        p = tr.get(phase) or {}
        if p:
            lines.append("  %s: val_accuracy %.4f (best epoch %d of %d, %.0f s)%s"
                         % (p.get("label") or phase.replace("phase", "phase "),
                            p["val_accuracy"], p["epoch"],
                            p["epochs_run"], p["seconds"],
                            "" if p.get("kept", True) else
                            "; not kept: no better than phase 1, its weights are used"))
    for warning in diagnostics.warnings(facts.get("diagnostics")):
        lines.append("  warning: %s" % warning)
    blessed = facts["blessing"].get("blessed")
    if blessed is not None:
        met, missed = baseline_rule(facts.get("max_regression", 0.0))
        why = ("accuracy >= %.3f and %s, if any" % (facts["min_accuracy"], met)
               if blessed else
               "accuracy below %.3f or %s" % (facts["min_accuracy"], missed))
        acc = facts["evaluation"].get("accuracy")
        if acc is not None:
            why = "%s accuracy %.4f: %s" % (facts.get("gate_split", "eval"), acc, why)
        lines.append("  blessed: %s (%s)" % ("yes" if blessed else "no", why))
        if facts.get("gate_note"):
            lines.append("  gate: %s" % facts["gate_note"])
    for row in facts.get("accuracies") or []:
        lines.append("  %s" % accuracy_text(row))
    if facts.get("pixel_baseline"):
        lines.append(pixel_baseline.summary_line(facts["pixel_baseline"],
                                                 facts["evaluation"].get("accuracy")))
    push = facts["push"]
    if push:
        reason = push.get("push_reason")
        if dict(states).get("VersionedPusher") == "CACHED":
            # Nothing changed since an earlier run: its push decision stands, nothing new.
            reason = "nothing new (inputs unchanged; an earlier run: %s)" % reason
        lines.append("  push: %s" % reason)
        dest = push.get("pushed_destination")
        if dest:
            base = os.path.dirname(dest)
            lines.append("  model: %s" % dest)
            lines.append("  serve: graft serve --model-base-path %s --model-name %s"
                         % (base, facts["model_name"]))
            lines.append("  query: graft predict --server 127.0.0.1:8500 --model %s IMAGE..."
                         % facts["model_name"])
    for row in facts.get("exports") or []:
        if row.get("format", "").startswith("TFLite"):
            lines.append("  %s: %.2f MB, accuracy %.4f (%+.2f points vs SavedModel); %s%s"
                         % (row["format"], (row.get("size_bytes") or 0) / 1e6,
                            row.get("accuracy") or 0.0, -100 * (row.get("drop") or 0.0),
                            "" if row.get("pushed") else "not pushed: ", row.get("reason")))
    if facts["failed"] is not None:
        lines.append("  FAILED: %s" % facts["failed"])
        if states:
            lines.append("  (finished components stay cached: rerun the same command to resume)")
    return "\n".join(lines)
