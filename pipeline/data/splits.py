"""Which split the blessing gate scores: test when every span the run reads has one, else eval.

make-tfrecords writes span-N/{train,eval,test} (test_fraction > 0) or span-N/{train,eval}
(test_fraction 0, and every span written before the test split existed). ImportExampleGen
fails on a split pattern that matches no file, and TFX's Evaluator fails when one artifact of
the span window lacks the split it reads, so the local runner checks the data before building
the pipeline: the test split is used when the last `num_spans` spans (by the train pattern)
all have test files; otherwise the config's test_pattern is cleared, the Evaluator gates on
eval, and FALLBACK_NOTE says why that accuracy is optimistic. Patterns without {SPAN}
(e.g. `--train-pattern cifar10_train.tfrecord`) only need a file matching the test pattern.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re


def _files(data_dir: str, pattern: str, span: int | None = None) -> list[str]:
    spec = pattern.replace("{SPAN}", "*" if span is None else str(span))
    return [p for p in glob.glob(os.path.join(data_dir, spec)) if os.path.isfile(p)]


def _spans(data_dir: str, pattern: str) -> list[int]:
    regex = re.compile(re.escape(pattern).replace(re.escape("{SPAN}"), r"(\d+)")
                       .replace(r"\*", r"[^/]*") + "$")
    found = set()
    for path in _files(data_dir, pattern):
        m = regex.match(os.path.relpath(path, data_dir))
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def has_test_split(data_dir: str, train_pattern: str, test_pattern: str,
                   num_spans: int = 1) -> bool:
    """Whether the spans a run reads (the last num_spans by train_pattern) all have test
    files under data_dir."""
    if not test_pattern or not data_dir:
        return False
    if "{SPAN}" not in train_pattern or "{SPAN}" not in test_pattern:
        return bool(_files(data_dir, test_pattern))
    window = _spans(data_dir, train_pattern)[-max(1, num_spans):]
    return bool(window) and all(_files(data_dir, test_pattern, span) for span in window)


# What the summary and the report say when the gate scored the eval split.
FALLBACK_NOTE = ("no test split: the gate scored the eval split, which also chose the model "
                 "(early stopping, phase 2), so its accuracy is optimistic; `graft "
                 "make-tfrecords --test-fraction F` writes a test split")


def resolve(config):
    """(config, note): config with test_pattern cleared when the data has no test split for
    the spans of this run, and the note saying so (None when the gate scores test)."""
    if config.test_pattern and has_test_split(config.data_dir, config.train_pattern,
                                              config.test_pattern, config.num_spans):
        return config, None
    note = ("no test split in the data (%s matches no file in the spans read): the gate "
            "scores the eval split" % config.test_pattern if config.test_pattern
            else "--test-pattern '': the gate scores the eval split")
    return dataclasses.replace(config, test_pattern=""), note
