"""Helpers and constants for the end-to-end tests: the small digits data set they train on,
the fast `graft run` flags they share, and running the CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The small digits data set (pipeline/data/demo_dataset.py) of every end-to-end test.
CLASSES = 3
PER_CLASS = 24
PNG_SIZE = 32
IMAGE_SIZE = 48
# Flags that keep a whole pipeline run to about a minute on 2 cores.
FAST = ["--beam-mode", "in_memory", "--image-size", IMAGE_SIZE, "--batch-size", 16,
        "--model-name", "digits"]
# FAST plus a short two-phase training, phase 2 in micro-batches (2 slices of each batch), on
# the frozen bottom's cached activations (the seed recipe's path; a pipeline run on the cached
# images: test_hub_backbone's, whose module is fine-tuned whole).
TWO_PHASES = FAST + ["--epochs", 6, "--fine-tune-epochs", 2, "--fine-tune-layers", 10,
                     "--micro-batch-size", 8, "--fine-tune-input", "activations"]


def graft(*args, timeout=1500, check=True) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError("graft %s failed (%d):\nSTDOUT:\n%s\nSTDERR (tail):\n%s"
                             % (" ".join(map(str, args)), proc.returncode, proc.stdout[-5000:],
                                proc.stderr[-8000:]))
    return proc
