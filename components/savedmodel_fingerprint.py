"""The content fingerprint of a SavedModel directory.

VersionedPusher records it beside each pushed version (`graft_push.json`, PUSH_RECORD) to
skip pushing an identical model again; the run report's cache keys the error analysis by it
(pipeline/reporting/diagnostics.py), so the analysis of the Trainer's model, computed while
the pipeline runs, is found again for the pushed copy. TensorFlow only (tf.io.gfile: any
filesystem TensorFlow reads), no TFX.
"""
from __future__ import annotations

import hashlib
import os

import tensorflow as tf

PUSH_RECORD = "graft_push.json"  # written into a pushed version: not part of the model


def fingerprint(model_dir: str) -> str:
    """sha256 over the relative names and bytes of every file of a SavedModel, except the
    push record and TensorFlow's own fingerprint.pb."""
    h = hashlib.sha256()
    files = []
    for root, _, names in tf.io.gfile.walk(model_dir):
        for name in names:
            full = os.path.join(root, name)
            files.append((os.path.relpath(full, model_dir), full))
    for rel, full in sorted(files):
        if rel in (PUSH_RECORD, "fingerprint.pb"):
            continue
        h.update(rel.encode() + b"\0")
        with tf.io.gfile.GFile(full, "rb") as f:
            h.update(f.read())
    return h.hexdigest()
