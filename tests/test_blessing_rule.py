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


def test_default_tolerance_is_the_measured_3_points_and_0_is_not_worse():
    config = _config()
    assert config.max_regression == 0.03  # bench/results/gate_tolerance.json
    assert _change_threshold(config) == pytest.approx(-0.03, abs=1e-9)
    assert baseline_rule(config.max_regression)[0] == (
        "at most 3 points below the last blessed model")
    zero = _config("--max-regression", "0")
    assert _change_threshold(zero) == pytest.approx(-1e-10, abs=1e-15)
    assert baseline_rule(0.0) == ("not worse than the last blessed model",
                                  "worse than the last blessed model")


def test_tolerance_lowers_the_change_threshold_and_is_named_in_points():
    config = _config("--max-regression", "0.02", "--min-accuracy", "0.7")
    assert _change_threshold(config) == pytest.approx(-0.02, abs=1e-9)
    assert baseline_rule(config.max_regression) == (
        "at most 2 points below the last blessed model",
        "more than 2 points below the last blessed model")


def _validation_ok(config, candidate: float, baseline: float) -> bool:
    """TFMA's own validator on the eval config of `config`, with a candidate and a baseline
    scored on the same 30 examples (what the Evaluator does with the last blessed model)."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.metrics import metric_types

    from pipeline.pipeline import eval_config

    # What TFX's Evaluator does with the config when there is a last blessed model.
    ec = tfma.utils.update_eval_config_with_defaults(eval_config(config), has_baseline=True,
                                                     rubber_stamp=True)
    name = "sparse_categorical_accuracy"
    metrics = {
        metric_types.MetricKey(name=name, model_name="candidate", example_weighted=False):
            candidate,
        metric_types.MetricKey(name=name, model_name="baseline", example_weighted=False):
            baseline,
        metric_types.MetricKey(name=name, model_name="candidate", is_diff=True,
                               example_weighted=False): candidate - baseline,
    }
    return metrics_validator.validate_metrics(((), metrics), ec).validation_ok


def test_max_regression_both_ways_on_tfmas_validator():
    """29/30 against a baseline's 30/30 (the CI flake): refused with no tolerance, blessed
    with a tolerance of 0.04 (more than one image of 30); a loss larger than the tolerance
    is refused; the floor still applies."""
    strict, tolerant = _config("--max-regression", "0"), _config("--max-regression", "0.04")
    assert _validation_ok(strict, 30 / 30, 30 / 30)
    assert not _validation_ok(strict, 29 / 30, 30 / 30)
    assert _validation_ok(tolerant, 29 / 30, 30 / 30)
    assert not _validation_ok(tolerant, 28 / 30, 30 / 30)  # 6.7 points > 4
    assert _validation_ok(tolerant, 30 / 30, 29 / 30)  # better is always fine
    assert not _validation_ok(_config("--max-regression", "0.5", "--min-accuracy", "0.9"),
                              26 / 30, 30 / 30)  # within the tolerance, below the floor
