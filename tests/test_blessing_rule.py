"""The blessing rule's tolerance against the last blessed model (--max-regression): the TFMA
threshold it sets and the words the summary and report use for it."""
from __future__ import annotations

import argparse

import pytest

from pipeline import configs
from pipeline.reporting.facts import baseline_rule


def _config(*argv):
    p = argparse.ArgumentParser()
    configs.add_run_arguments(p)
    return configs.from_args(p.parse_args(list(argv)), data_dir="/d", label_names=("a", "b"),
                             output_dir="/o")


def _change_threshold(config) -> float:
    from pipeline.pipeline import eval_config
    accuracy = [m for spec in eval_config(config).metrics_specs for m in spec.metrics
                if m.class_name == "SparseCategoricalAccuracy"][0]
    assert accuracy.threshold.value_threshold.lower_bound.value == config.min_accuracy
    return accuracy.threshold.change_threshold.absolute.value


def test_default_is_not_worse_than_the_baseline():
    config = _config()
    assert config.max_regression == 0.0
    assert _change_threshold(config) == pytest.approx(-1e-10, abs=1e-15)
    assert baseline_rule(0.0) == ("not worse than the last blessed model",
                                  "worse than the last blessed model")


def test_tolerance_lowers_the_change_threshold_and_is_named_in_points():
    config = _config("--max-regression", "0.02", "--min-accuracy", "0.7")
    assert _change_threshold(config) == pytest.approx(-0.02, abs=1e-9)
    assert baseline_rule(config.max_regression) == (
        "at most 2 points below the last blessed model",
        "more than 2 points below the last blessed model")
