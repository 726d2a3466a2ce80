"""The runner's code_version: hashes the code the components import from components/ (top-level
modules, which TFX no longer hashes into a user-code wheel on the local runner, and
sub-packages such as backbones/), not custom/."""
from __future__ import annotations

from pipeline.runners import local as local_runner


def _tree(root):
    (root / "backbones").mkdir(parents=True)
    (root / "custom").mkdir()
    (root / "trainer.py").write_text("a = 1\n")
    (root / "backbones" / "lite.py").write_text("b = 1\n")
    (root / "custom" / "pusher.py").write_text("c = 1\n")


def test_code_version_follows_component_code_but_not_custom(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.setattr(local_runner, "COMPONENTS_DIR", str(tmp_path))
    first = local_runner.code_version()
    (tmp_path / "custom" / "pusher.py").write_text("c = 2\n")
    assert local_runner.code_version() == first
    (tmp_path / "trainer.py").write_text("a = 2\n")
    second = local_runner.code_version()
    assert second != first
    (tmp_path / "backbones" / "lite.py").write_text("b = 2\n")
    assert local_runner.code_version() not in (first, second)
    (tmp_path / "progress.py").write_text("d = 1\n")  # a new module counts too
    assert local_runner.code_version() not in (first, second)
