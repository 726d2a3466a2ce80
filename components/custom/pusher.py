"""VersionedPusher: pushes a blessed model to SERVING_DIR/<model_name>/<version>/ atomically.

Unlike the stock Pusher it never pushes the same model twice: every pushed version carries
`graft_push.json` with a fingerprint of the SavedModel files, and a model whose fingerprint
is already served is recorded as not pushed ("identical to version N"). A version is copied
under a non-numeric temporary name and renamed into place, so TF Serving (which only loads
numeric directories) never sees a half-written version. Versions are integers increasing
with time (seconds since the epoch, bumped past the newest existing one).
"""

import hashlib
import json
import os
import time

import tensorflow as tf
from tfx import v1 as tfx
from tfx.utils import path_utils

PUSH_RECORD = "graft_push.json"


def fingerprint(model_dir: str) -> str:
    """sha256 over the relative names and bytes of every file of a SavedModel."""
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


def versions(base_dir: str) -> list[int]:
    """Complete numeric version directories under base_dir, ascending."""
    if not tf.io.gfile.isdir(base_dir):
        return []
    out = []
    for name in tf.io.gfile.listdir(base_dir):
        name = name.rstrip("/")
        if name.isdigit() and tf.io.gfile.exists(os.path.join(base_dir, name, "saved_model.pb")):
            out.append(int(name))
    return sorted(out)


def _copy_tree(src: str, dst: str) -> None:
    for root, _, names in tf.io.gfile.walk(src):
        rel = os.path.relpath(root, src)
        target = os.path.join(dst, rel) if rel != "." else dst
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name),
                             overwrite=True)


def push(model_dir: str, base_dir: str, provenance: dict | None = None) -> dict:
    """Push model_dir into base_dir as a new version unless an identical one is there.

    Returns {'pushed': bool, 'version': int, 'path': str, 'reason': str}.
    """
    digest = fingerprint(model_dir)
    existing = versions(base_dir)
    for v in reversed(existing):
        record_path = os.path.join(base_dir, str(v), PUSH_RECORD)
        if tf.io.gfile.exists(record_path):
            with tf.io.gfile.GFile(record_path) as f:
                if json.load(f).get("fingerprint") == digest:
                    return {"pushed": False, "version": v, "path": os.path.join(base_dir, str(v)),
                            "reason": "identical model already pushed as version %d" % v}
    version = max([int(time.time())] + [v + 1 for v in existing])
    final = os.path.join(base_dir, str(version))
    tmp = os.path.join(base_dir, ".tmp-%d-%d" % (version, os.getpid()))
    tf.io.gfile.makedirs(base_dir)
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    _copy_tree(model_dir, tmp)
    record = dict(provenance or {}, fingerprint=digest, version=version, pushed_at=time.time())
    with tf.io.gfile.GFile(os.path.join(tmp, PUSH_RECORD), "w") as f:
        json.dump(record, f, indent=1)
    tf.io.gfile.rename(tmp, final, overwrite=False)
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
