"""pipeline/runners/local.py: graft's own command line is hidden from what parses sys.argv
again while the pipeline runs (absl, with the Beam pipeline's arguments after it)."""
from __future__ import annotations

import sys

import pytest
from absl import flags

from pipeline.runners import local


def test_graft_run_v_never_reaches_absl(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["graft", "run", "-v"])
    beam = ["--direct_running_mode=in_memory"]
    absl = flags.FlagValues()  # absl's own -v: --verbosity, an integer
    flags.DEFINE_integer("verbosity", 0, "", short_name="v", flag_values=absl)
    # What ImportExampleGen failed on: -v took the Beam flag after it as its value.
    with pytest.raises(flags.IllegalFlagValueError, match="direct_running_mode"):
        absl(sys.argv + beam, known_only=True)
    with local.own_argv_only():
        assert sys.argv == ["graft"]
        assert absl(sys.argv + beam, known_only=True) == ["graft"] + beam
    assert sys.argv == ["graft", "run", "-v"]  # restored
