"""VersionedPusher's push(): atomic numeric versions, no duplicate of an identical model."""
from __future__ import annotations

import os

import pytest

from components.custom import pusher


def _fake_saved_model(path, payload=b"model-a"):
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(payload)
    with open(os.path.join(path, "variables", "variables.index"), "wb") as f:
        f.write(b"idx")


def test_push_creates_numeric_version_with_record(tmp_path):
    _fake_saved_model(tmp_path / "m")
    result = pusher.push(str(tmp_path / "m"), str(tmp_path / "serving" / "x"))
    assert result["pushed"]
    assert pusher.versions(str(tmp_path / "serving" / "x")) == [result["version"]]
    assert (tmp_path / "serving" / "x" / str(result["version"]) / "graft_push.json").exists()
    assert not [n for n in os.listdir(tmp_path / "serving" / "x") if n.startswith(".tmp")]


def test_identical_model_is_not_pushed_twice(tmp_path):
    _fake_saved_model(tmp_path / "m")
    base = str(tmp_path / "serving" / "x")
    first = pusher.push(str(tmp_path / "m"), base)
    again = pusher.push(str(tmp_path / "m"), base)
    assert not again["pushed"] and again["version"] == first["version"]
    assert "identical" in again["reason"]
    _fake_saved_model(tmp_path / "m2", b"model-b")
    second = pusher.push(str(tmp_path / "m2"), base)
    assert second["pushed"] and second["version"] > first["version"]
    assert pusher.versions(base) == [first["version"], second["version"]]


def test_interrupted_push_leaves_no_loadable_version(tmp_path, monkeypatch):
    _fake_saved_model(tmp_path / "m")
    base = tmp_path / "serving" / "x"

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(pusher.tf.io.gfile, "rename", boom)
    with pytest.raises(OSError):
        pusher.push(str(tmp_path / "m"), str(base))
    assert pusher.versions(str(base)) == []
    assert all(not n.isdigit() for n in os.listdir(base))
    # ... and removes its own temporary.
    assert not [n for n in os.listdir(base) if n.startswith(".tmp")]


def test_partial_version_dir_is_not_counted(tmp_path):
    base = tmp_path / "serving" / "x"
    (base / "17").mkdir(parents=True)  # no saved_model.pb: never loadable
    assert pusher.versions(str(base)) == []


# --- damaged records and concurrent pushes ------------------------------------------------
@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b"", b"\xff\xfe"])
def test_corrupt_push_record_does_not_block_later_pushes(tmp_path, damage):
    _fake_saved_model(tmp_path / "m")
    base = str(tmp_path / "serving" / "x")
    first = pusher.push(str(tmp_path / "m"), base)
    (tmp_path / "serving" / "x" / str(first["version"]) / "graft_push.json").write_bytes(damage)
    _fake_saved_model(tmp_path / "m2", b"model-b")
    second = pusher.push(str(tmp_path / "m2"), base)
    assert second["pushed"] and second["version"] > first["version"]
    again = pusher.push(str(tmp_path / "m"), base)  # fingerprinted from its files instead
    assert not again["pushed"] and again["version"] == first["version"]


def test_two_pushes_in_one_second_get_two_versions(tmp_path, monkeypatch):
    # Both pushers pick their version in the same second while the other is still copying:
    # before, both chose the same number and the second rename failed (AlreadyExistsError),
    # leaving its .tmp-* behind.
    import threading

    monkeypatch.setattr(pusher.time, "time", lambda: 1_700_000_000.0)
    real_copy = pusher._copy_tree
    both_copying = threading.Barrier(2, timeout=30)

    def copy(src, dst):
        both_copying.wait()
        real_copy(src, dst)

    monkeypatch.setattr(pusher, "_copy_tree", copy)
    base = str(tmp_path / "serving" / "x")
    results, errors = [], []

    def run(i):
        _fake_saved_model(tmp_path / f"m{i}", b"model-%d" % i)
        try:
            results.append(pusher.push(str(tmp_path / f"m{i}"), base))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(r["version"] for r in results) == [1_700_000_000, 1_700_000_001]
    assert pusher.versions(base) == [1_700_000_000, 1_700_000_001]
    assert not [n for n in os.listdir(base) if n.startswith(".tmp")]


_PUSHER_PROCESS = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from components.custom import pusher
base, models, go = sys.argv[2], sys.argv[3].split(","), sys.argv[4]
pusher.time.time = lambda: 1_700_000_000.0  # every push in the same second
while not os.path.exists(go):
    time.sleep(0.01)
for m in models:
    print(pusher.push(m, base)["version"], flush=True)
"""


def test_concurrent_processes_push_distinct_versions(tmp_path):
    import subprocess
    import sys

    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    base = str(tmp_path / "serving" / "x")
    go = tmp_path / "go"
    procs = []
    for p in range(2):
        models = []
        for i in range(4):
            _fake_saved_model(tmp_path / f"p{p}m{i}", b"model-%d-%d" % (p, i) * 1000)
            models.append(str(tmp_path / f"p{p}m{i}"))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _PUSHER_PROCESS, root, base, ",".join(models), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    go.write_text("")
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    pushed = [int(v) for out, _ in outs for v in out.split()]
    assert len(pushed) == 8 and len(set(pushed)) == 8
    assert pusher.versions(base) == sorted(pushed)
    assert not [n for n in os.listdir(base) if n.startswith(".tmp")]
    for v in pushed:  # every record describes the files of its own version
        d = os.path.join(base, str(v))
        record = __import__("json").load(open(os.path.join(d, "graft_push.json")))
        assert record["version"] == v and record["fingerprint"] == pusher.fingerprint(d)


def test_temporaries_of_dead_pushers_are_removed(tmp_path):
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    base = tmp_path / "serving" / "x"
    for name in (f".tmp-{dead}-abc", f".tmp-1700000000-{dead}", f".tmp-{os.getpid()}-abc"):
        (base / name).mkdir(parents=True)
    _fake_saved_model(tmp_path / "m")
    pusher.push(str(tmp_path / "m"), str(base))
    assert sorted(n for n in os.listdir(base) if n.startswith(".tmp")) == [
        f".tmp-{os.getpid()}-abc"]  # a live pusher's temporary stays
