"""The Evaluator's baseline: the latest blessed model other than the candidate itself.

TFX's LatestBlessedModelStrategy returns the latest blessed model, which after an unchanged
rerun is the candidate itself (the Trainer was cached and returned the model it blessed last
time): the Evaluator then sees new inputs, evaluates the model against itself and the Pusher
runs again, which made a rerun with nothing changed take minutes. This strategy takes the
candidate (the Trainer's output of this run) as a third input and skips it, so an unchanged
rerun gives the Evaluator the inputs it had before and every component is cached. A new
model is still compared with the latest blessed model, and a model trained earlier (the
Trainer cached after another model was blessed since) with the latest blessed other model.
It runs in the orchestrator (a resolver node), not inside a component.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from tfx import types
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.common import resolver

MODEL, BLESSING, CANDIDATE = "model", "model_blessing", "candidate"
# Custom properties the Evaluator writes on its ModelBlessing.
_CURRENT_MODEL_ID = evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY
_BLESSED = evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY


def latest_blessed_other(models: List[types.Artifact], blessings: List[types.Artifact],
                         candidates: List[types.Artifact]) -> Dict[str, List[types.Artifact]]:
    """{MODEL: [baseline], BLESSING: [its blessing], CANDIDATE: candidates}, the lists empty
    (no baseline) when no model other than the candidates was blessed."""
    skip = {c.id for c in candidates}
    blessed = {b.get_int_custom_property(_CURRENT_MODEL_ID): b for b in blessings
               if b.get_int_custom_property(_BLESSED) == 1}
    for model in sorted(models, key=lambda a: a.id, reverse=True):
        if model.id in blessed and model.id not in skip:
            return {MODEL: [model], BLESSING: [blessed[model.id]], CANDIDATE: candidates}
    return {MODEL: [], BLESSING: [], CANDIDATE: candidates}


class LatestBlessedOtherModelStrategy(resolver.ResolverStrategy):
    """Resolver strategy: inputs `model` (every Model), `model_blessing` (every
    ModelBlessing), `candidate` (the Trainer's model of this run); outputs the same keys."""

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        missing = {MODEL, BLESSING, CANDIDATE} - set(input_dict)
        if missing:
            raise ValueError("LatestBlessedOtherModelStrategy needs inputs %s; missing %s"
                             % (sorted((MODEL, BLESSING, CANDIDATE)), sorted(missing)))
        return latest_blessed_other(input_dict[MODEL], input_dict[BLESSING],
                                    input_dict[CANDIDATE])
