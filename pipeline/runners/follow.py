"""One line per pipeline component as it starts and as it finishes, while LocalDagRunner runs.

A thread polls ML Metadata (the run's SQLite store, opened read-only) once a second: TFX
registers a node's execution as RUNNING before it checks the cache and runs the executor, and
marks it COMPLETE, CACHED or FAILED afterwards. A component still RUNNING a second after its
execution was registered gets a start line (so a cache hit gets only its finish line); every
finished one gets a finish line with its state, seconds and the one fact that matters, read
from its output artifacts:

    ImageCheck        complete    3 s  300 images checked (train 240, eval 60), 0 dropped

Only public ML Metadata queries (pipeline/reporting/mlmd.py), no TFX internals. Resolver nodes
(span window, latest blessed model) are queries, not components: not shown. `on_finish` hears
of every finished component after its line (pipeline/runners/report_prefetch.py starts the
report's work with it).
"""
from __future__ import annotations

import json
import os
import threading
import time

from pipeline.reporting import facts as run_facts, mlmd

_DONE = ("COMPLETE", "CACHED", "FAILED", "CANCELED")
START_AFTER = 1.0   # seconds an execution must stay RUNNING to get a start line


def _image_check(store, e) -> str:
    report = mlmd.output_artifact(store, e, "report")
    with open(os.path.join(report.uri, "image_check.json")) as f:
        splits = json.load(f)["splits"]
    checked = sum(s["records"] for s in splits.values())
    bad = sum(s["bad"] for s in splits.values())
    return "%d images checked (%s), %d dropped" % (
        checked, ", ".join("%s %d" % (name, s["records"]) for name, s in splits.items()), bad)


def _example_validator(store, e) -> str:
    found = run_facts.read_anomalies(mlmd.output_artifact(store, e, "anomalies").uri)
    n = sum(len(v) for v in found.values())
    if not n:
        return "no anomalies"
    first = next((split, v[0]) for split, v in found.items() if v)
    return "%d anomal%s (%s: %s)" % (n, "y" if n == 1 else "ies", first[0], first[1])


def _trainer(store, e) -> str:
    run = mlmd.output_artifact(store, e, "model_run")
    with open(os.path.join(run.uri, "training_summary.json")) as f:
        summary = json.load(f)
    text = "val accuracy %.4f" % summary["final_val_accuracy"]
    p2 = summary.get("phase2") or {}
    if p2:
        text += " (phase 1 %.4f, phase 2 %.4f %s)" % (
            summary["phase1"]["val_accuracy"], p2["val_accuracy"],
            "kept" if p2.get("kept", True) else "not kept")
    return text


def _evaluator(store, e) -> str:
    outcome = run_facts.outcome_facts(store, {"Evaluator": e})
    acc = run_facts.eval_metrics(outcome["evaluation_uri"]).get("sparse_categorical_accuracy")
    # The split it scored: its `example_splits` exec property (["test"], or null = eval).
    splits = json.loads(mlmd.custom(e, "example_splits", "null") or "null") or ["eval"]
    shown = " (%s accuracy %.4f)" % (splits[0], acc) if acc is not None else ""
    return ("blessed" if outcome["blessed"] else "not blessed") + shown


def _pusher(store, e) -> str:
    push = run_facts.outcome_facts(store, {"VersionedPusher": e})["push"]
    return push.get("push_reason") or ""


def _example_gen(store, e) -> str:
    span = mlmd.span(mlmd.output_artifact(store, e, "examples"))
    return "span %s" % span if span is not None else ""


def _tflite(store, e) -> str:
    rows = run_facts.export_facts(store, {"TFLiteExport": e})
    if not rows:
        return ""
    t = rows[-1]
    return "%s %.2f MB, accuracy %.4f (%+.2f points), %s" % (
        t["format"], t["size_bytes"] / 1e6, t["accuracy"], -100 * t["drop"],
        "pushed" if t["pushed"] else "not pushed")


FACTS = {"ImportExampleGen": _example_gen, "ImageCheck": _image_check,
         "ExampleValidator": _example_validator, "DataGate": lambda s, e: "data passed",
         "Trainer": _trainer, "Evaluator": _evaluator, "VersionedPusher": _pusher,
         "TFLiteExport": _tflite}


def fact(store, node: str, execution) -> str:
    """The one fact of a finished component ('' when there is none or it cannot be read)."""
    fn = FACTS.get(node)
    if fn is None or mlmd.STATE_NAMES.get(execution.last_known_state) == "FAILED":
        return ""
    try:
        return fn(store, execution)
    except Exception:  # noqa: BLE001 - a line without its fact beats no line
        return ""


def start_line(node: str) -> str:
    return "  %-17s started" % node


def finish_line(node: str, state: str, seconds: float, text: str) -> str:
    return ("  %-17s %-9s %5.0f s  %s" % (node, state.lower(), seconds, text)).rstrip()


class Follower:
    """Polls ML Metadata in a thread; say(line) prints. stop() makes a last poll."""

    def __init__(self, metadata_path: str, since: float, say, interval: float = 1.0,
                 on_finish=None):
        self.metadata_path = metadata_path
        self.since = since
        self.say = say
        self.on_finish = on_finish  # on_finish(node, state, store, execution), after its line
        self.interval = interval
        self.started, self.finished = set(), set()
        self._store = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="graft-follow", daemon=True)

    def start(self) -> "Follower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def _executions(self) -> list:
        if self._store is None:
            if not os.path.exists(self.metadata_path):
                return []
            self._store = mlmd.open_store(self.metadata_path)
        runs = [c for c in self._store.get_contexts_by_type("pipeline_run")
                if c.create_time_since_epoch >= self.since * 1000 - 1000]
        if not runs:
            return []
        run = max(runs, key=lambda c: c.create_time_since_epoch)
        found = mlmd.node_executions(self._store, run.name)
        return sorted(((node, e) for node, e in found.items()
                       if "resolver" not in node and node != "span_window"),
                      key=lambda item: item[1].id)

    def poll(self) -> None:
        try:
            executions = self._executions()
        except Exception:  # noqa: BLE001 - e.g. the store is being written: next poll
            self._store = None
            return
        now = time.time()
        for node, e in executions:
            state = mlmd.STATE_NAMES.get(e.last_known_state, "UNKNOWN")
            if node in self.finished:
                continue
            if state in _DONE:
                self.finished.add(node)
                seconds = max(0.0, (e.last_update_time_since_epoch
                                    - e.create_time_since_epoch) / 1000.0)
                self.say(finish_line(node, state, seconds, fact(self._store, node, e)))
                if self.on_finish is not None:
                    self.on_finish(node, state, self._store, e)
            elif (state == "RUNNING" and node not in self.started
                  and now - e.create_time_since_epoch / 1000.0 >= START_AFTER):
                self.started.add(node)
                self.say(start_line(node))
