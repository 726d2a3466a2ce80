"""The report's costly sections, computed in a helper process while the pipeline still runs.

After its last component `graft run` spent ~8 s on two sections of the report: the error
analysis (the served model scores the test and training images, pipeline/reporting/
diagnostics.py) and the pixel baseline (pipeline/reporting/pixel_baseline.py). Their inputs
exist well before the end: the pixel baseline needs only the span ImportExampleGen read, the
error analysis the model VersionedPusher pushed. And one of the two cores idles meanwhile:
graft's own start-up imports, Beam's in-memory components and TFLiteExport run mostly on one.
So `graft run` starts a helper process (spawned; it imports TensorFlow while graft imports
TFX), and the Follower's `on_finish` hands it each section as soon as its input exists:
the pixel baseline when ImportExampleGen finishes, the error analysis when VersionedPusher
does. The helper computes them exactly as the report would (the same functions, so the same
report-cache key, pipeline/reporting/memo.py) and leaves them in the report cache; `finish()`
waits for it, then finds them there, marked `precomputed` (computed since the run started).

The helper runs at a lower priority (NICE): the components come first, it takes the idle
core. It can only save time: a section it did not finish (it failed, died, or took longer
than WAIT_SECONDS after the pipeline) is computed by `finish()` as before. It is a daemon
process: it ends with graft, and `wait()` stops it. Its memory adds to the run's: ~0.25 GB
(TensorFlow) while it waits, ~0.5 GB more while it scores (diagnostics.BATCH images at a
time). Measured on flowers-dev: README ("Pipeline benchmarks").
"""
from __future__ import annotations

import multiprocessing
import queue
import time

WAIT_SECONDS = 600.0   # after the pipeline, at most this long for the helper's sections
NICE = 10              # the helper's niceness increment
POLL_SECONDS = 1.0     # how often an idle helper checks that graft is still alive
_DONE = ("COMPLETE", "CACHED")  # the states whose outputs a section can read


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


def _serve(tasks, done) -> None:
    """The helper: TensorFlow imported first (the sections need it), then one section per
    task until None or until graft is gone; reports (name, None | "Error: message") for
    each."""
    import importlib
    import os

    try:
        os.nice(NICE)  # the pipeline's components come first; the helper takes what is idle
    except OSError:
        pass
    import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
    importlib.import_module("tensorflow")  # now, while graft's own start-up imports TFX
    parent = multiprocessing.parent_process()
    while True:
        try:
            task = tasks.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # graft was killed (SIGKILL): no orphan left behind
            continue
        if task is None:
            return
        name, args = task
        try:
            SECTIONS[name](*args)
            done.put((name, None))
        except Exception as e:  # noqa: BLE001 - finish() computes it instead
            done.put((name, "%s: %s" % (type(e).__name__, e)))


def _span(store, execution):
    from pipeline.reporting import mlmd
    for a in mlmd.output_artifacts(store, execution):
        if a.uri.rstrip("/").split("/")[-2] == "examples":
            return a.properties["span"].int_value if "span" in a.properties \
                else mlmd.custom(a, "span")
    return None


class Prefetch:
    """start() the helper; on_finish() is the Follower's callback; wait() before the report."""

    def __init__(self, config):
        self.config = config
        context = multiprocessing.get_context("spawn")
        self._tasks, self._done = context.Queue(), context.Queue()
        self._process = context.Process(target=_serve, args=(self._tasks, self._done),
                                        name="graft-report", daemon=True)
        self.submitted: list[str] = []
        self.finished: dict[str, str | None] = {}

    def start(self) -> "Prefetch":
        try:
            self._process.start()
        except OSError:  # e.g. no process left to spawn: finish() computes everything
            self._process = None
        return self

    def submit(self, name: str, *args) -> None:
        """Hands the helper SECTIONS[name](*args), once per name."""
        if self._process is None or name in self.submitted:
            return
        self.submitted.append(name)
        self._tasks.put((name, args))

    def on_finish(self, node: str, state: str, store, execution) -> None:
        """The Follower's callback (its thread): hands the helper what this node unblocks."""
        if state not in _DONE:
            return
        try:
            if node == "ImportExampleGen":
                span = _span(store, execution)
                if span is not None:
                    self.submit("pixel_baseline", self.config, span)
            elif node == "VersionedPusher":
                self.submit("error_analysis", self.config)
        except Exception:  # noqa: BLE001 - finish() computes what the helper did not
            pass

    def wait(self, timeout: float = WAIT_SECONDS) -> dict:
        """Waits for every submitted section (or the helper's end, or `timeout`), then stops
        the helper. Returns {section: None (done) | error message | "not finished"}."""
        deadline = time.time() + timeout
        process = self._process
        while process is not None and len(self.finished) < len(self.submitted) \
                and time.time() < deadline:
            try:
                name, error = self._done.get(timeout=0.2)
                self.finished[name] = error
            except queue.Empty:
                if not process.is_alive():
                    break
        self.stop()
        return {name: self.finished.get(name, "not finished") for name in self.submitted}

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.is_alive():
            try:
                self._tasks.put(None)
            except (OSError, ValueError):
                pass
            process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        for q in (self._tasks, self._done):
            q.close()
            q.cancel_join_thread()
