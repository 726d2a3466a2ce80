"""VersionedPusher: pushes a blessed model to SERVING_DIR/<model_name>/<version>/ atomically.

Unlike the stock Pusher it never pushes the same model twice: every pushed version carries
`graft_push.json` with a fingerprint of the SavedModel files, and a model whose fingerprint
is already served is recorded as not pushed ("identical to version N"). A version whose
record is missing or unreadable (corrupt JSON, not a dict) is fingerprinted from its files
instead, so one damaged record never blocks later pushes. A version is copied under a
non-numeric temporary name (`.tmp-<pid>-<random>`, removed again if the push fails) and
renamed into place, so TF Serving (which only loads numeric directories) never sees a
half-written version. Versions are integers increasing with time (seconds since the epoch,
bumped past every numeric directory present, so two pushes in one second get two versions).

Concurrency: `graft run` takes no lock, so two runs may push to one serving directory at
once. On a local file system the choice of the version, the identical-model check and the
rename happen under an exclusive flock on `<base_dir>/.graft_push.lock` (the copy itself
does not hold it); temporaries of pushers that died are removed then. On other file systems
(gs://, ...) a rename that finds the version taken is retried with the next number.
"""

import json
import os
import time
import uuid
from contextlib import contextmanager

import tensorflow as tf
from tfx import v1 as tfx
from tfx.utils import path_utils

from components.savedmodel_fingerprint import PUSH_RECORD, fingerprint

LOCK_FILE = ".graft_push.lock"
_RENAME_ATTEMPTS = 20


def _numeric_dirs(base_dir: str) -> list[int]:
    if not tf.io.gfile.isdir(base_dir):
        return []
    return sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(base_dir)
                  if n.rstrip("/").isdigit())


def versions(base_dir: str) -> list[int]:
    """Complete numeric version directories under base_dir, ascending."""
    return [v for v in _numeric_dirs(base_dir)
            if tf.io.gfile.exists(os.path.join(base_dir, str(v), "saved_model.pb"))]


def _recorded_fingerprint(version_dir: str) -> str:
    """The fingerprint in a version's push record, or computed from its files when the
    record is missing or unreadable."""
    try:
        with tf.io.gfile.GFile(os.path.join(version_dir, PUSH_RECORD)) as f:
            record = json.load(f)
        if isinstance(record, dict) and isinstance(record.get("fingerprint"), str):
            return record["fingerprint"]
    except (ValueError, OSError, tf.errors.OpError):
        pass
    print("graft pusher: %s has no readable %s; fingerprinting its files"
          % (version_dir, PUSH_RECORD))
    return fingerprint(version_dir)


def _identical(base_dir: str, digest: str) -> int | None:
    for v in reversed(versions(base_dir)):
        if _recorded_fingerprint(os.path.join(base_dir, str(v))) == digest:
            return v
    return None


def _copy_tree(src: str, dst: str) -> None:
    for root, _, names in tf.io.gfile.walk(src):
        rel = os.path.relpath(root, src)
        target = os.path.join(dst, rel) if rel != "." else dst
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name),
                             overwrite=True)


def _local(path: str) -> bool:
    return "://" not in path


@contextmanager
def _push_lock(base_dir: str):
    """Exclusive flock on base_dir/.graft_push.lock (local file systems only)."""
    if not _local(base_dir):
        yield
        return
    import fcntl

    fd = os.open(os.path.join(base_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_dead_temporaries(base_dir: str) -> None:
    """Under the lock: drop .tmp-<pid>-* left by pushers that no longer run (local only)."""
    if not _local(base_dir):
        return
    for name in os.listdir(base_dir):
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != ".tmp" or not parts[1].isdigit():
            continue
        # .tmp-<pid>-<random>; before: .tmp-<version>-<pid> (a version is no pid: > 2**22)
        pid = int(parts[1]) if int(parts[1]) <= 1 << 22 else \
            int(parts[2]) if parts[2].isdigit() and int(parts[2]) <= 1 << 22 else None
        if pid is None:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tf.io.gfile.rmtree(os.path.join(base_dir, name))
        except OSError:
            pass


def push(model_dir: str, base_dir: str, provenance: dict | None = None) -> dict:
    """Push model_dir into base_dir as a new version unless an identical one is there.

    Returns {'pushed': bool, 'version': int, 'path': str, 'reason': str}. Safe to call from
    several processes at once for one base_dir (see the module doc).
    """
    digest = fingerprint(model_dir)

    def identical(v):
        return {"pushed": False, "version": v, "path": os.path.join(base_dir, str(v)),
                "reason": "identical model already pushed as version %d" % v}

    found = _identical(base_dir, digest)
    if found is not None:
        return identical(found)
    tf.io.gfile.makedirs(base_dir)
    tmp = os.path.join(base_dir, ".tmp-%d-%s" % (os.getpid(), uuid.uuid4().hex[:12]))
    try:
        _copy_tree(model_dir, tmp)  # outside the lock: the slow part
        with _push_lock(base_dir):
            _remove_dead_temporaries(base_dir)
            found = _identical(base_dir, digest)  # pushed by someone else meanwhile?
            if found is not None:
                return identical(found)
            version = max([int(time.time())] + [v + 1 for v in _numeric_dirs(base_dir)])
            for _ in range(_RENAME_ATTEMPTS):
                record = dict(provenance or {}, fingerprint=digest, version=version,
                              pushed_at=time.time())
                with tf.io.gfile.GFile(os.path.join(tmp, PUSH_RECORD), "w") as f:
                    json.dump(record, f, indent=1)
                final = os.path.join(base_dir, str(version))
                try:
                    tf.io.gfile.rename(tmp, final, overwrite=False)
                    break
                except tf.errors.AlreadyExistsError:  # another writer without our lock
                    version += 1
            else:
                raise RuntimeError("no free version number under %s after %d attempts"
                                   % (base_dir, _RENAME_ATTEMPTS))
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    return {"pushed": True, "version": version, "path": final,
            "reason": "pushed as version %d" % version}


@tfx.dsl.components.component
def VersionedPusher(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    model_blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    pushed_model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.PushedModel],
    serving_dir: tfx.dsl.components.Parameter[str],
    model_name: tfx.dsl.components.Parameter[str],
) -> None:
    base_dir = os.path.join(serving_dir, model_name)
    if not model_blessing.get_int_custom_property("blessed"):
        result = {"pushed": False, "version": 0, "path": "",
                  "reason": "model not blessed by the Evaluator"}
    else:
        result = push(path_utils.serving_model_path(model.uri), base_dir,
                      {"model_uri": model.uri, "blessing_uri": model_blessing.uri})
    pushed_model.set_int_custom_property("pushed", int(result["pushed"]))
    pushed_model.set_int_custom_property("pushed_version", int(result["version"]))
    pushed_model.set_string_custom_property("pushed_destination", result["path"])
    pushed_model.set_string_custom_property("push_reason", result["reason"])
    print("graft pusher: %s" % result["reason"])
