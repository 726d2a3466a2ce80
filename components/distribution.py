"""Choosing the tf.distribute strategy and precision for the Trainer.

- `TF_CONFIG` naming more than one task: MultiWorkerMirroredStrategy (several pods/hosts).
- one or more local GPUs: MirroredStrategy, with mixed float16.
- otherwise (CPU): the default strategy, float32.
The global batch is the per-replica batch times the number of replicas.
"""
from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf
import tf_keras


def cluster_size(tf_config: dict | None = None) -> int:
    """Number of tasks that TF_CONFIG's cluster names (workers, chief)."""
    if tf_config is None:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = tf_config.get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def choose_strategy() -> tf.distribute.Strategy:
    if cluster_size() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def configure_precision() -> str:
    """mixed_float16 on GPU only; returns the policy name in force."""
    policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    tf_keras.mixed_precision.set_global_policy(policy)
    return policy


def is_chief() -> bool:
    """True where this process should write the exported model and logs."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    cluster = tf_config.get("cluster", {})
    if not task:
        return True
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def save_path(path: str) -> str:
    """Where this process saves a model meant for `path`.

    Under MultiWorkerMirroredStrategy saving is collective (sync-on-read variables such as
    BatchNormalization statistics are all-reduced), so EVERY worker must call model.save: a
    chief saving alone fails once the other workers have returned. The chief saves to `path`;
    the others to a throwaway local directory (remove it with shutil.rmtree afterwards).
    """
    if is_chief():
        return path
    return tempfile.mkdtemp(prefix="graft-worker-save-")
