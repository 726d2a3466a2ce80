"""Faults, with real `graft run`s on the small digits set of the e2e test (tests/fault_data.py
writes 2 corrupt images among the good train records and 1 among the test records):

- SIGKILL of the run's process group while the Trainer executes, then a rerun: what finished
  before the kill is cached, the rerun blesses and pushes, the killed run pushed nothing.
  The same two runs check the corrupt images: the run completes, the summary and
  report.html name the bad records, the Evaluator saw every good test record and the model is
  as good as on clean data (held-back floor of the e2e test).
- A push whose copy fails halfway leaves no version directory a server would load.
- More than 10 % of a split corrupt: the run stops at ImageCheck naming the first bad records.
- --output under a regular file (unwritable) and on a full disk (a 256 KB tmpfs; skipped
  where mounting is not allowed): exit 1, `error: ...` as the last stderr line, no traceback.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.runners import follow

import fault_data
from pipeline_runs import REPO, TWO_PHASES, graft

pytestmark = pytest.mark.e2e

COMMON = TWO_PHASES + ["--min-accuracy", 0.4]
TRAINER_STARTED = follow.start_line("Trainer")  # the console's line: the Trainer is RUNNING
BEFORE_TRAINER = ("ImportExampleGen", "ImageCheck", "StatisticsGen", "SchemaGen",
                  "ExampleValidator", "DataGate", "Transform")


def _states(out: Path) -> dict:
    from pipeline.reporting import mlmd as mlmd_query
    return mlmd_query.node_states(mlmd_query.open_store(str(out / "metadata.sqlite")))


def _numeric(path: Path) -> list:
    return sorted(n for n in os.listdir(path) if n.isdigit()) if path.is_dir() else []


def _run_until_trainer_then_kill(args: list, log: Path, timeout: float = 900) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)],
                                cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + timeout
    try:
        while TRAINER_STARTED not in log.read_text(errors="replace"):
            assert proc.poll() is None, "run ended before the Trainer:\n" + log.read_text()[-3000:]
            assert time.time() < deadline, "the Trainer did not start in %d s" % timeout
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as a crash would
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return fault_data.build(tmp_path_factory.mktemp("fault-data"))


@pytest.fixture(scope="module")
def killed(data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("killed")
    out, serving = root / "out", root / "serving"
    args = ["run", "--data", data, "--output", out, "--serving-dir", serving] + COMMON
    start = time.time()
    _run_until_trainer_then_kill(args, root / "killed.log")
    r = {"out": out, "serving": serving, "killed_seconds": time.time() - start,
         "states_killed": _states(out), "versions_after_kill": _numeric(serving / "digits")}
    r["rerun"] = graft(*args)
    r["states_rerun"] = _states(out)
    r["versions_after_rerun"] = _numeric(serving / "digits")
    return r


def test_killed_run_pushed_nothing(killed):
    assert killed["states_killed"]["Trainer"] == "RUNNING", killed["states_killed"]
    assert "VersionedPusher" not in killed["states_killed"]
    assert killed["versions_after_kill"] == []


def test_rerun_reuses_what_finished_before_the_kill(killed):
    from pipeline.reporting import mlmd as mlmd_query

    for node in BEFORE_TRAINER:
        assert killed["states_killed"][node] == "COMPLETE", killed["states_killed"]
        assert killed["states_rerun"][node] == "CACHED", killed["states_rerun"]
    assert killed["states_rerun"]["Trainer"] == "COMPLETE"
    store = mlmd_query.open_store(str(killed["out"] / "metadata.sqlite"))
    assert mlmd_query.count_executions(store, "Transform") == 1
    assert mlmd_query.count_executions(store, "ImageCheck") == 1


def test_rerun_blesses_and_pushes_once(killed):
    out = killed["rerun"].stdout
    assert "blessed: yes" in out and "push: pushed as version" in out, out
    assert len(killed["versions_after_rerun"]) == 1
    version = killed["serving"] / "digits" / killed["versions_after_rerun"][0]
    record = json.loads((version / "graft_push.json").read_text())
    assert record["model_uri"].startswith(str(killed["out"]))


def test_corrupt_images_named_in_summary_and_report(killed):
    stdout = killed["rerun"].stdout
    html = (killed["out"] / "report.html").read_text()
    assert "bad images: 3 records dropped" in stdout, stdout
    for _split, _pos, filename, _bytes in fault_data.corrupt_records():
        assert filename in stdout
        assert filename in html
    assert "Bad images (3 records dropped)" in html
    assert "jpeg::Uncompress failed" in html and "Unknown image file format" in html


def test_corrupt_images_do_not_hurt_the_model(killed, data):
    import tensorflow as tf
    from test_pipeline_e2e import held_back_images

    from pipeline.reporting import mlmd as mlmd_query
    from pipeline.reporting.facts import eval_metrics

    store = mlmd_query.open_store(str(killed["out"] / "metadata.sqlite"))
    evaluator = mlmd_query.node_executions(store)["Evaluator"]
    uri = next(a.uri for a in mlmd_query.output_artifacts(store, evaluator)
               if "/evaluation/" in a.uri + "/")
    metrics = eval_metrics(uri)
    records = sum(1 for f in (data / "span-1" / "test").iterdir()
                  for _ in tf.data.TFRecordDataset(str(f)))
    corrupt = sum(1 for r in fault_data.corrupt_records() if r[0] == "test")
    assert metrics["example_count"] == records - corrupt  # every good test record, no crash
    assert metrics["sparse_categorical_accuracy"] >= 0.8, metrics

    loaded = tf.saved_model.load(str(killed["serving"] / "digits" /
                                     killed["versions_after_rerun"][0]))
    label_names = (data / "labels.txt").read_text().split()
    images = held_back_images(label_names)
    predicted = loaded.signatures["serving_default"](
        image_bytes=tf.constant([b for b, _ in images]))["class_index"].numpy()
    accuracy = float((predicted == np.array([label for _, label in images])).mean())
    assert accuracy >= 0.6, "held-back accuracy %.2f" % accuracy


def test_push_with_failing_copy_leaves_no_loadable_version(tmp_path, monkeypatch):
    from components.custom import pusher

    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.index").write_bytes(b"index")
    (model / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
    base = tmp_path / "serving" / "m"
    real_copy, copied = pusher.tf.io.gfile.copy, []

    def copy_then_fail(src, dst, overwrite=False):
        if copied:
            raise OSError(28, "No space left on device", dst)
        real_copy(src, dst, overwrite=overwrite)
        copied.append(dst)

    monkeypatch.setattr(pusher.tf.io.gfile, "copy", copy_then_fail)
    with pytest.raises(OSError):
        pusher.push(str(model), str(base))
    assert copied, "the copy never started"
    assert pusher.versions(str(base)) == []
    assert not [n for n in os.listdir(base) if n.isdigit()]
    monkeypatch.undo()  # the next push works and is the only version
    result = pusher.push(str(model), str(base))
    assert pusher.versions(str(base)) == [result["version"]]


def _assert_clean_failure(proc: subprocess.CompletedProcess, expected: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    tail = [line for line in proc.stderr.splitlines() if line.strip()][-5:]
    assert tail[-1].startswith("error: "), tail
    assert expected in tail[-1], tail
    assert not any("Traceback" in line or line.startswith("  File ") for line in tail), tail
    return tail[-1]


def test_output_under_a_regular_file_fails_cleanly(data, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    proc = graft("run", "--data", data, "--output", blocker / "out", *COMMON, check=False,
                 timeout=300)
    line = _assert_clean_failure(proc, "cannot write the output directory")
    assert "Not a directory" in line


@pytest.fixture()
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (%s)" % done.stderr.strip())
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_fails_cleanly(data, tiny_disk):
    proc = graft("run", "--data", data, "--output", tiny_disk / "out", *COMMON, check=False,
                 timeout=300)
    _assert_clean_failure(proc, "disk full under")


def test_too_many_corrupt_images_fail_at_image_check(tmp_path):
    data = fault_data.build(tmp_path / "data", corrupt=False)
    fault_data.inject(data, [("eval", i, "corrupt/%d.jpg" % i, b"\xff\xd8 not a jpeg")
                             for i in range(0, 12, 3)])  # 4 bad of ~15 eval records
    out = tmp_path / "out"
    proc = graft("run", "--data", data, "--output", out, *COMMON, check=False, timeout=300)
    line = _assert_clean_failure(proc, "CorruptImages: split 'eval': 4 of")
    assert "more than the allowed 10 %" in line
    assert "corrupt/0.jpg" in proc.stdout  # the first bad records, in the summary
    assert _states(out)["ImageCheck"] == "FAILED"
    assert "Trainer" not in _states(out)
    html = (out / "report.html").read_text()
    assert "FAILED" in html and "corrupt/0.jpg" in html
