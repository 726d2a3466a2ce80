"""The runner's code_version: hashes component sub-packages (backbones/), not custom/ or the
top-level modules that TFX's user-code wheel already hashes."""
from __future__ import annotations

from pipeline.runners import local as local_runner


def _tree(root):
    (root / "backbones").mkdir(parents=True)
    (root / "custom").mkdir()
    (root / "trainer.py").write_text("a = 1\n")
    (root / "backbones" / "lite.py").write_text("b = 1\n")
    (root / "custom" / "pusher.py").write_text("c = 1\n")


def test_code_version_follows_backbones_only(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.setattr(local_runner, "COMPONENTS_DIR", str(tmp_path))
    first = local_runner.code_version()
    (tmp_path / "custom" / "pusher.py").write_text("c = 2\n")
    (tmp_path / "trainer.py").write_text("a = 2\n")
    assert local_runner.code_version() == first
    (tmp_path / "backbones" / "lite.py").write_text("b = 2\n")
    assert local_runner.code_version() != first
