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


def test_partial_version_dir_is_not_counted(tmp_path):
    base = tmp_path / "serving" / "x"
    (base / "17").mkdir(parents=True)  # no saved_model.pb: never loadable
    assert pusher.versions(str(base)) == []
