"""The report's costly sections, computed in a helper process while the pipeline still runs.

After its last component `graft run` spent ~8 s on two sections of the report: the error
analysis (the served model scores the test and training images, pipeline/reporting/
diagnostics.py) and the pixel baseline (pipeline/reporting/pixel_baseline.py). Their inputs
exist well before the end: the pixel baseline needs only the span ImportExampleGen read, the
error analysis the model the Trainer wrote (VersionedPusher pushes a copy of it, and the
report cache knows a model by its contents, components/savedmodel_fingerprint.py). And one
of the two cores idles meanwhile: graft's own start-up imports, Beam's in-memory
components and TFLiteExport run mostly on one.
So `graft run` starts a helper process (`python -m pipeline.runners.report_prefetch`, a
plain subprocess: it imports TensorFlow while graft imports TFX, and unlike a
multiprocessing child it never re-runs the caller's main script), and the Follower's
`on_finish` hands it each section as soon as its input exists:
the pixel baseline when ImportExampleGen finishes, the error analysis when the Trainer does
(thirteenth session; until then when VersionedPusher did, and on flowers-dev it ended ~5 s
after the pipeline: the helper, niced, got little of the machine while TFLiteExport ran).
The helper computes them exactly as the report would (the same functions, so the same
report-cache key, pipeline/reporting/memo.py) and leaves them in the report cache; `finish()`
waits for it, then finds them there, marked `precomputed` (computed since the run started).

The helper runs at a lower priority (NICE): the components come first, it takes the idle
core. It can only save time: a section it did not finish (it failed, died, or took longer
than WAIT_SECONDS after the pipeline) is computed by `finish()` as before. It ends when
graft closes its stdin: `wait()`, or graft's death (even by SIGKILL). Its memory adds to the
run's: ~0.25 GB (TensorFlow) while it waits, ~0.5 GB more while it scores (diagnostics.BATCH
images at a time). Measured on flowers-dev: README ("Pipeline benchmarks").
"""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time

WAIT_SECONDS = 600.0   # after the pipeline, at most this long for the helper's sections
NICE = 10              # the helper's niceness increment
_DONE = ("COMPLETE", "CACHED")  # the states whose outputs a section can read
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_to_json(config) -> dict:
    """A PipelineConfig as JSON (the helper's task messages)."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
           if f.name != "training"}
    out["training"] = config.training.to_custom_config()
    return out


def config_from_json(data: dict):
    from pipeline.configs import PipelineConfig, TrainingConfig
    values = dict(data)
    values["training"] = TrainingConfig.from_custom_config(values["training"])
    return PipelineConfig(**values)


def _pixel_baseline(config, span) -> None:
    from pipeline.reporting import pixel_baseline
    pixel_baseline.for_run(config, span)


def _error_analysis(config) -> None:
    """diagnostics.error_analysis() on the latest run, as facts.collect() calls it."""
    from pipeline.reporting import diagnostics, facts, mlmd
    store = mlmd.open_store(config.metadata_path)
    executions = mlmd.node_executions(store)
    push = facts.outcome_facts(store, executions).get("push") or {}
    diagnostics.error_analysis(store, executions, config, push)


SECTIONS = {"pixel_baseline": _pixel_baseline, "error_analysis": _error_analysis}


def serve(tasks, results) -> None:
    """The helper's loop: one JSON task per line of `tasks` ({"section", "config", "args"})
    until end of file; one JSON line {"section", "error": null | "Error: message"} on
    `results` for each."""
    for line in tasks:
        task = json.loads(line)
        name = task["section"]
        try:
            SECTIONS[name](config_from_json(task["config"]), *task["args"])
            error = None
        except Exception as e:  # noqa: BLE001 - finish() computes it instead
            error = "%s: %s" % (type(e).__name__, e)
        results.write(json.dumps({"section": name, "error": error}) + "\n")
        results.flush()


def main() -> int:
    """The helper process: results on its own stdout (the rest of what it prints goes to
    stderr: graft's log), tasks on stdin, TensorFlow imported first (the sections need it)."""
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        os.nice(NICE)  # the pipeline's components come first; the helper takes what is idle
    except OSError:
        pass
    import importlib

    import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
    importlib.import_module("tensorflow")  # now, while graft's own start-up imports TFX
    serve(sys.stdin, results)
    return 0


class Prefetch:
    """start() the helper; on_finish() is the Follower's callback; wait() before the report."""

    def __init__(self, config):
        self.config = config
        self._process = None
        self._results: queue.Queue = queue.Queue()
        self.submitted: list[str] = []
        self.finished: dict[str, str | None] = {}

    def start(self) -> "Prefetch":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.runners.report_prefetch"], cwd=_ROOT, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        except OSError:  # e.g. no process left to start: finish() computes everything
            return self
        threading.Thread(target=self._read, args=(self._process.stdout,),
                         name="graft-report-results", daemon=True).start()
        return self

    def _read(self, stream) -> None:
        for line in stream:
            try:
                self._results.put(json.loads(line))
            except ValueError:
                pass

    def submit(self, name: str, *args) -> None:
        """Hands the helper SECTIONS[name](config, *args), once per name."""
        if self._process is None or name in self.submitted:
            return
        self.submitted.append(name)
        try:
            self._process.stdin.write(json.dumps({"section": name, "args": list(args),
                                                  "config": config_to_json(self.config)})
                                      + "\n")
            self._process.stdin.flush()
        except (OSError, ValueError):  # the helper is gone: finish() computes it
            pass

    def on_finish(self, node: str, state: str, store, execution) -> None:
        """The Follower's callback (its thread): hands the helper what this node unblocks."""
        if state not in _DONE:
            return
        try:
            if node == "ImportExampleGen":
                from pipeline.reporting import mlmd
                examples = mlmd.output_artifact(store, execution, "examples")
                span = mlmd.span(examples) if examples is not None else None
                if span is not None:
                    self.submit("pixel_baseline", span)
            elif node == "Trainer":
                self.submit("error_analysis")
        except Exception:  # noqa: BLE001 - finish() computes what the helper did not
            pass

    def wait(self, timeout: float = WAIT_SECONDS) -> dict:
        """Waits for every submitted section (or the helper's end, or `timeout`), then stops
        the helper. Returns {section: None (done) | error message | "not finished"}."""
        deadline = time.time() + timeout
        while self._process is not None and len(self.finished) < len(self.submitted) \
                and time.time() < deadline:
            try:
                result = self._results.get(timeout=0.2)
                self.finished[result["section"]] = result["error"]
            except queue.Empty:
                if self._process.poll() is not None and self._results.empty():
                    break
        self.stop()
        return {name: self.finished.get(name, "not finished") for name in self.submitted}

    def stop(self) -> None:
        """Closes the helper's stdin (it ends after its current section); kills it if it
        has not ended 5 s later."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
