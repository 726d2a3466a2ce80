"""`graft retrain` on a growing TFRecords directory: real LocalDagRunner runs in subprocesses.

One module-scoped sequence (tiny digits images, 3 classes, Beam in_memory):
  1. span 1                         -> trained, blessed, model v1 pushed
  2. nothing new                    -> exit 0, "nothing new: latest span 1 already trained",
                                       no new Trainer execution in ML Metadata
  3. span 2 with shuffled labels    -> trained, NOT blessed (accuracy ~chance < floor),
                                       serving dir still only v1, the reason printed
  4. span 3 (good, more data), with a second `graft retrain` started while the first holds
     the lock                       -> the second exits 3 naming the holder; v2 pushed
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline_runs import CLASSES, FAST, PNG_SIZE, REPO, graft

pytestmark = pytest.mark.e2e

# The gate compares span 3's model with span 1's on span 3's test split: 25 photos, none of them
# in span 1's training split (a photo's split follows its name; test_span3_test_split_is_unseen
# checks it). One image is 4 points there, so --max-regression 0.1 (10 points) lets two images
# of run-to-run noise pass and "a model trained on more data is pushed" cannot hang on one image
# (it did with the old 80/20 split, gating on an eval split that overlapped span 1's training
# images: 29/30 refused against the baseline's 30/30). The default, 0.03, is for test splits
# of a hundred images and more (bench/gate_tolerance.py).
COMMON = FAST + ["--epochs", 5, "--fine-tune-epochs", 0, "--min-accuracy", 0.6,
                 "--max-regression", 0.1]


def write_shuffled_span(data: Path, source_span: int, span: int, seed: int = 7) -> None:
    """span-N = span-M's examples with the labels permuted (label_text kept consistent)."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    names = (data / "labels.txt").read_text().split()
    for split in ("train", "eval", "test"):
        records = [r.numpy() for r in tf.data.TFRecordDataset(
            sorted(str(p) for p in (data / ("span-%d" % source_span) / split).glob("*")))]
        examples = [tf.train.Example.FromString(r) for r in records]
        labels = np.array([e.features.feature["label"].int64_list.value[0] for e in examples])
        shuffled = rng.permutation(labels)
        out = data / ("span-%d" % span) / split
        out.mkdir(parents=True)
        with tf.io.TFRecordWriter(str(out / "shuffled.tfrecord")) as w:
            for example, label in zip(examples, shuffled):
                example.features.feature["label"].int64_list.value[:] = [int(label)]
                example.features.feature["label_text"].bytes_list.value[:] = [
                    names[label].encode()]
                w.write(example.SerializeToString())


def _trainer_executions(out: Path) -> int:
    from pipeline.reporting import mlmd as mlmd_query
    store = mlmd_query.open_store(str(out / "metadata.sqlite"))
    return mlmd_query.count_executions(store, "Trainer", ("COMPLETE", "CACHED"))


def _versions(serving: Path) -> list:
    base = serving / "digits"
    return sorted(n for n in os.listdir(base) if n.isdigit()) if base.is_dir() else []


def _wait_for_lock_holder(lock: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lock.exists() and lock.read_text().strip() == str(pid):
            return
        time.sleep(0.2)
    raise AssertionError("retrain pid %d never took %s" % (pid, lock))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pipeline.data import demo_dataset

    root = tmp_path_factory.mktemp("retrain")
    quiet = dict(classes=CLASSES, image_size=PNG_SIZE, log=lambda *_: None)
    data = Path(demo_dataset.build(root / "demo24", per_class=24, **quiet))
    more = Path(demo_dataset.build(root / "demo40", per_class=40, **quiet))
    out, serving = root / "out", root / "serving"
    args = ["retrain", "--data", data, "--output", out, "--serving-dir", serving] + COMMON
    r = {"out": out, "serving": serving, "data": data}

    r["span1"] = graft(*args)
    r["versions1"] = _versions(serving)
    r["trainers1"] = _trainer_executions(out)

    r["nothing"] = graft(*args)
    r["trainers_nothing"] = _trainer_executions(out)

    write_shuffled_span(data, 1, 2)
    r["span2"] = graft(*args)
    r["versions2"] = _versions(serving)

    shutil.copytree(more / "span-1", data / "span-3")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock_holder(out / "retrain.lock", first.pid)
        r["second"] = graft(*args, check=False)
        r["first_pid"] = first.pid
        stdout, stderr = first.communicate(timeout=1500)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, "span 3 retrain failed:\n%s\n%s" % (stdout[-4000:],
                                                                       stderr[-6000:])
    r["span3"] = stdout
    r["versions3"] = _versions(serving)
    return r


def test_span1_trains_and_pushes_v1(runs):
    out = runs["span1"].stdout
    assert "span 1 is new" in out, out
    assert "blessed: yes" in out, out
    assert len(runs["versions1"]) == 1


def test_nothing_new_does_nothing(runs):
    proc = runs["nothing"]
    assert proc.returncode == 0
    assert "nothing new: latest span 1 already trained" in proc.stdout, proc.stdout
    assert runs["trainers_nothing"] == runs["trainers1"]


def test_shuffled_span2_is_not_blessed_and_not_pushed(runs):
    out = runs["span2"].stdout
    assert "span 2 is new" in out, out
    assert "blessed: no" in out, out
    assert "model not blessed" in out, out
    assert runs["versions2"] == runs["versions1"]


def test_second_concurrent_retrain_refuses(runs):
    proc = runs["second"]
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "another graft retrain holds %s (pid %d)" % (runs["out"] / "retrain.lock",
                                                       runs["first_pid"]) in proc.stderr


def _filenames(split_dir: Path) -> set:
    import tensorflow as tf
    return {tf.train.Example.FromString(r.numpy()).features.feature["filename"].bytes_list
            .value[0] for r in tf.data.TFRecordDataset(sorted(map(str, split_dir.glob("*"))))}


def test_span3_test_split_is_unseen(runs):
    """No photo of span 3's test split (the gate's) was a span-1 training photo, and the
    split is big enough for the tolerance to cover two images."""
    test3 = _filenames(runs["data"] / "span-3" / "test")
    assert len(test3) == 25
    assert not test3 & _filenames(runs["data"] / "span-1" / "train")
    assert test3 >= _filenames(runs["data"] / "span-1" / "test")  # span 1's test photos too


def test_good_span3_pushes_v2(runs):
    out = runs["span3"]
    assert "span 3 is new" in out, out
    assert "blessed: yes (test accuracy" in out, out
    # Compared with span 1's model (the latest blessed other than itself) on the same images.
    assert ": the last blessed model, same examples" in out, out
    assert len(runs["versions3"]) == 2 and runs["versions3"][0] == runs["versions1"][0]


def test_held_lock_refuses_without_running(tmp_path):
    """A lock held by another process: exit 3 and its pid, before looking at any data."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "data" / "span-1").mkdir(parents=True)
    with open(out / "retrain.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("4242\n")
        f.flush()
        proc = graft("retrain", "--data", tmp_path / "data", "--output", out, check=False)
    assert proc.returncode == 3
    assert "another graft retrain holds %s (pid 4242)" % (out / "retrain.lock") in proc.stderr
    assert not (out / "metadata.sqlite").exists()


def test_available_and_trained_spans(tmp_path):
    from pipeline.runners import retrain

    for span, splits in ((1, ("train", "eval")), (2, ("train", "eval")), (5, ("train",))):
        for split in splits:
            d = tmp_path / ("span-%d" % span) / split
            d.mkdir(parents=True)
            (d / "a.tfrecord").write_bytes(b"")
    (tmp_path / "span-x" / "train").mkdir(parents=True)
    assert retrain.available_spans(str(tmp_path), "span-{SPAN}/train/*",
                                   "span-{SPAN}/eval/*") == [1, 2]
    assert retrain.trained_spans(str(tmp_path / "missing.sqlite")) == set()
