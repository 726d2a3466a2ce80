"""The run report's costly results, kept on disk by what they were computed from.

The error analysis (the served model on the test and training images) and the pixel baseline
(a logistic regression fitted on the raw pixels) were recomputed by every `graft run`,
although for a rerun with every component cached nothing they read had changed: a no-op
rerun of flowers-dev took 17.4 s, 9.0-9.3 s with this cache (quiet 2-core machine).
`cached()` keeps each result as OUTPUT/.report-cache/NAME-DIGEST.json, the digest over a key
of the inputs' identities (path, size and modification time of every file read: a rewritten
file is a new key without reading it; a model by its contents, so that its pushed copy is
the same model) and the source of the module that computes it (a new
graft computes afresh). One file per NAME is kept. The cache can only cost the
recomputation: an unreadable entry is recomputed, a failed write is ignored.
Each entry records when it was computed: `graft run` computes both results in a helper
process while the pipeline still runs (pipeline/runners/report_prefetch.py), and an entry
computed since the run started is this run's own result (`precomputed: True`), not one
reused from an earlier run (`reused: True`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import time

CACHE_DIR = ".report-cache"


def files_identity(paths) -> list:
    """[path, size, mtime_ns] of each file (sorted by path); a missing file is [path]."""
    out = []
    for path in sorted(os.path.abspath(p) for p in paths):
        try:
            st = os.stat(path)
            out.append([path, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([path])
    return out


def source_digest(path: str) -> str:
    """Digest of a source file (a module's __file__): part of a key, so new code recomputes."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def cached(output_dir: str, name: str, key, compute, fresh_since: float | None = None) -> dict:
    """compute()'s dict, or the stored one computed from the same key: then with
    `precomputed: True` when it was computed at or after `fresh_since` (a time.time() value:
    the run's start), else with `reused: True`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    directory = os.path.join(output_dir, CACHE_DIR)
    path = os.path.join(directory, "%s-%s.json" % (name, digest[:20]))
    try:
        with open(path) as f:
            entry = json.load(f)
        fresh = fresh_since is not None and float(entry["computed_at"]) >= fresh_since
        return dict(entry["result"], **({"precomputed": True} if fresh else {"reused": True}))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = compute()
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s-" % name)
        with os.fdopen(fd, "w") as f:
            json.dump({"computed_at": time.time(), "result": result}, f)
        os.replace(tmp, path)
        for old in glob.glob(os.path.join(directory, "%s-*.json" % name)):
            if old != path:
                os.remove(old)
    except OSError:
        pass
    return result
