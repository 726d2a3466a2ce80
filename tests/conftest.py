"""Shared fixtures: the repo paths, ../shared data (skipped when absent), and one pipeline
run directory shared by every end-to-end test (TFX runs are minutes, not seconds)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (only present on the developers' machines)")
    return SHARED_DATA
