"""The Evaluator's baseline resolver (pipeline/baseline.py): the latest blessed model other
than this run's candidate."""
from __future__ import annotations

import pytest
from tfx.types import standard_artifacts

from pipeline.baseline import (
    BLESSING,
    CANDIDATE,
    MODEL,
    LatestBlessedOtherModelStrategy,
    latest_blessed_other,
)


def _model(i):
    m = standard_artifacts.Model()
    m.id = i
    return m


def _blessing(model_id, blessed, i):
    b = standard_artifacts.ModelBlessing()
    b.id = i
    b.set_int_custom_property("current_model_id", model_id)
    b.set_int_custom_property("blessed", 1 if blessed else 0)
    return b


def _resolve(models, blessings, candidate):
    out = LatestBlessedOtherModelStrategy().resolve_artifacts(
        None, {MODEL: models, BLESSING: blessings, CANDIDATE: candidate})
    return [a.id for a in out[MODEL]], [a.id for a in out[BLESSING]], out[CANDIDATE]


def test_new_model_is_compared_with_the_latest_blessed_one():
    models = [_model(1), _model(2), _model(3), _model(4)]
    blessings = [_blessing(1, True, 11), _blessing(2, True, 12), _blessing(3, False, 13)]
    candidate = [models[3]]
    assert _resolve(models, blessings, candidate) == ([2], [12], candidate)


def test_unchanged_rerun_skips_the_candidate_itself():
    # Run 1 blessed model 1 with no baseline; the rerun's cached Trainer returns model 1
    # again: no other blessed model, so no baseline (the Evaluator's inputs are unchanged).
    models = [_model(1)]
    assert _resolve(models, [_blessing(1, True, 11)], [models[0]]) == ([], [], [models[0]])


def test_cached_older_model_is_compared_with_the_latest_other_blessed_model():
    models = [_model(1), _model(2)]
    blessings = [_blessing(1, True, 11), _blessing(2, True, 12)]
    assert _resolve(models, blessings, [models[0]])[:2] == ([2], [12])
    assert _resolve(models, blessings, [models[1]])[:2] == ([1], [11])


def test_nothing_blessed_means_no_baseline():
    models = [_model(1), _model(2)]
    assert latest_blessed_other(models, [], [models[1]])[MODEL] == []
    assert latest_blessed_other(models, [_blessing(1, False, 11)], [models[1]])[MODEL] == []


def test_missing_input_is_a_clear_error():
    with pytest.raises(ValueError, match="missing \\['candidate'\\]"):
        LatestBlessedOtherModelStrategy().resolve_artifacts(None, {MODEL: [], BLESSING: []})
