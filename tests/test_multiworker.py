"""Multi-worker training code path: two local CPU worker processes on loopback.

Each process gets a TF_CONFIG naming both 127.0.0.1 ports and its own index, builds the
strategy with components.distribution.choose_strategy() (MultiWorkerMirroredStrategy), trains
a tiny tf_keras model (with BatchNormalization, whose moving statistics are sync-on-read
variables like the backbones') for a few steps with the global batch = per-replica batch x
replicas, then one epoch more on batches that gather from an in-memory array as phase 2 does
on the feature cache's images (dataset.from_arrays: a numpy_function in the dataset, sharded
across the workers), then saves as distribution.save_path() says: every worker calls
model.save (saving is collective), only the chief's copy lands in the destination.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PER_REPLICA_BATCH = 8
STEPS = 3
EPOCHS = 2


def _free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker(out_dir: str) -> None:
    """One worker process (TF_CONFIG set by the test)."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from components import dataset, distribution
    from components.training_config import TrainingConfig

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = distribution.choose_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = PER_REPLICA_BATCH * replicas
    rng = np.random.RandomState(0)
    x = rng.rand(128, 6).astype("float32")
    y = (x.sum(axis=1) > 3).astype("int64")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch)
    with strategy.scope():
        model = tf_keras.Sequential([
            tf_keras.layers.Dense(8, input_shape=(6,)),
            tf_keras.layers.BatchNormalization(),
            tf_keras.layers.Activation("relu"),
            tf_keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer=tf_keras.optimizers.SGD(0.1),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(ds, epochs=EPOCHS, steps_per_epoch=STEPS, verbose=0)
    cached = dataset.from_arrays(x, y, global_batch, True,
                                 TrainingConfig(label_names=("a", "b"), augment=False))
    from_arrays = model.fit(cached, epochs=1, verbose=0)
    chief = distribution.is_chief()
    status = {"index": index, "replicas": replicas,
              "multi_worker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
              "global_batch": global_batch, "chief": chief,
              "loss": [float(v) for v in history.history["loss"]],
              "from_arrays_loss": [float(v) for v in from_arrays.history["loss"]]}
    destination = os.path.join(out_dir, "model")
    path = distribution.save_path(destination)
    model.save(path, save_format="tf")
    status["saved"] = path == destination
    if path != destination:
        shutil.rmtree(path)
    with open(os.path.join(out_dir, "status-%d.json" % index), "w") as f:
        json.dump(status, f)


def test_two_workers_on_loopback(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": ["127.0.0.1:%d" % p for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="",
                   TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, __file__, str(tmp_path)], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=120))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    statuses = [json.loads((tmp_path / ("status-%d.json" % i)).read_text()) for i in range(2)]
    for s in statuses:
        assert s["multi_worker"]
        assert s["replicas"] == 2
        assert s["global_batch"] == 2 * PER_REPLICA_BATCH
        assert len(s["loss"]) == EPOCHS
    # Synchronous training: both workers saw the same all-reduced losses.
    assert statuses[0]["loss"] == statuses[1]["loss"]
    assert len(statuses[0]["from_arrays_loss"]) == 1
    assert statuses[0]["from_arrays_loss"] == statuses[1]["from_arrays_loss"]
    assert [s["chief"] for s in statuses] == [True, False]
    assert statuses[0].get("saved") and not statuses[1].get("saved")
    assert (tmp_path / "model" / "saved_model.pb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "status-0.json",
                                                          "status-1.json"]


if __name__ == "__main__":
    worker(sys.argv[1])
