"""`graft retrain`: scheduled retraining on one machine (cron, systemd timer).

Runs the pipeline (`graft run`, same flags) only when the newest span of --data has not been
trained yet; otherwise prints "nothing new: latest span N already trained" and exits 0. A span
is done once ImportExampleGen ingested it in a pipeline run whose Trainer completed (or was
cached), read from OUTPUT/metadata.sqlite (ML Metadata): a run that failed before training is
retried by the next invocation.

Overlapping invocations are safe: the first takes an exclusive non-blocking flock on
OUTPUT/retrain.lock (its pid written inside); a second one prints
"another graft retrain holds OUTPUT/retrain.lock (pid P)" and exits with LOCKED (3).
Exit codes: 0 trained or nothing new, 1 the pipeline failed, 2 bad input, 3 locked.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import os
import re

from pipeline import configs, console

LOCK_NAME = "retrain.lock"
LOCKED = 3


class Locked(Exception):
    """Another process holds the retrain lock."""


class RetrainLock:
    """Exclusive non-blocking flock on OUTPUT/retrain.lock, holding the owner's pid."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.fd = None

    def __enter__(self) -> "RetrainLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise Locked(self.holder()) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        self.fd = fd
        return self

    def holder(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "?"
        except OSError:
            return "?"

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def available_spans(data_dir: str, train_pattern: str, eval_pattern: str) -> list[int]:
    """Spans N that have files for both splits under data_dir, ascending."""
    found = None
    for pattern in (train_pattern, eval_pattern):
        regex = re.compile(re.escape(pattern).replace(re.escape("{SPAN}"), r"(\d+)")
                           .replace(r"\*", r"[^/]*") + "$")
        spans = set()
        for path in glob.glob(os.path.join(data_dir, pattern.replace("{SPAN}", "*"))):
            m = regex.match(os.path.relpath(path, data_dir))
            if m and os.path.isfile(path):
                spans.add(int(m.group(1)))
        found = spans if found is None else found & spans
    return sorted(found or ())


def trained_spans(metadata_path: str) -> set[int]:
    """Spans ingested by ImportExampleGen in the pipeline runs where the Trainer completed or
    was cached (from ML Metadata). Read through the run, not the Trainer's inputs, so that a
    component between ExampleGen and the Trainer need not carry the span property."""
    if not os.path.exists(metadata_path):
        return set()
    from ml_metadata.proto import metadata_store_pb2

    from pipeline.reporting import mlmd as mlmd_query

    store = mlmd_query.open_store(metadata_path)
    nodes = {c.name.split(".", 1)[-1]: c for c in store.get_contexts_by_type("node")}
    if "Trainer" not in nodes or "ImportExampleGen" not in nodes:
        return set()
    done = {metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED}
    runs = {c.id for c in store.get_contexts_by_type("pipeline_run")}
    example_gens = {e.id for e in store.get_executions_by_context(nodes["ImportExampleGen"].id)}
    spans = set()
    for trainer in store.get_executions_by_context(nodes["Trainer"].id):
        if trainer.last_known_state not in done:
            continue
        for run in store.get_contexts_by_execution(trainer.id):
            if run.id not in runs:
                continue
            for execution in store.get_executions_by_context(run.id):
                if execution.id not in example_gens:
                    continue
                for artifact in mlmd_query.output_artifacts(store, execution):
                    span = mlmd_query.span(artifact)
                    if span is not None:
                        spans.add(int(span))
    return spans


def main(args) -> int:
    if not args.data or not os.path.isdir(args.data):
        console.error("--data must be a directory of span-N TFRecords (got %r)" % args.data)
        return 2
    output = os.path.abspath(args.output)
    defaults = configs.PipelineConfig()
    train_pattern = args.train_pattern or defaults.train_pattern
    eval_pattern = args.eval_pattern or defaults.eval_pattern
    lock_path = os.path.join(output, LOCK_NAME)
    try:
        with RetrainLock(output):
            spans = available_spans(args.data, train_pattern, eval_pattern)
            if not spans:
                console.error("no span in %s matches %s and %s"
                              % (args.data, train_pattern, eval_pattern))
                return 2
            latest = spans[-1]
            if latest in trained_spans(os.path.join(output, "metadata.sqlite")):
                console.say("graft retrain: nothing new: latest span %d already trained"
                            % latest)
                return 0
            # Only a run gets a log (OUTPUT/logs/retrain-*.log): cron's "nothing new" does not.
            with console.session(output, "retrain", getattr(args, "verbose", False)):
                console.say("graft retrain: span %d is new, running the pipeline" % latest)
                from pipeline.runners import local
                return local.main(args)
    except Locked as e:
        console.say("graft retrain: another graft retrain holds %s (pid %s); not starting"
                    % (lock_path, e.args[0]), err=True)
        return LOCKED
