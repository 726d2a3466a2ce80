"""Helpers for the end-to-end tests: run `graft run` in a subprocess and read MLMD."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def graft(*args, timeout=1500, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("graft %s failed (%d):\nSTDOUT:\n%s\nSTDERR (tail):\n%s"
                             % (" ".join(map(str, args)), proc.returncode, proc.stdout[-5000:],
                                proc.stderr[-8000:]))
    return proc
