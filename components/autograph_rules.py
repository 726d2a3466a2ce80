"""AutoGraph leaves tf-keras' own code alone, as TensorFlow's rules meant it to.

AutoGraph rewrites the Python functions a `tf.function` calls, recursively, unless a rule
exempts their module. TensorFlow's rules (tensorflow/python/autograph/core/config.py) exempt
`keras`, the package Keras 2 lived in until TF 2.16, but not `tf_keras`, its name since: so
on TF 2.16 every model's first fit() converts some 800 of Keras' internal functions (the
training and test steps, losses, metrics, optimizers, every layer's call). Keras' code is
written for graphs and needs none of it. Measured on 2 cores: the phase-1 head's first epoch
took 9.8 s, of which 9.2 s was this conversion (0.6 s with the rule).

components/model.py adds the missing rule when it is imported, once per process.
Code of ours that Keras calls must then not rely on AutoGraph for tensor-dependent Python
control flow (model.MicroBatchModel uses tf.while_loop); our own tf.functions still get it.
"""
from __future__ import annotations

from tensorflow.python.autograph.core import config as _config

RULE = _config.DoNotConvert("tf_keras")


def keep_autograph_out_of_tf_keras() -> None:
    """Add the rule (first, so it wins; as TensorFlow's own converter tests add theirs)
    unless it is there already."""
    if RULE not in _config.CONVERSION_RULES:
        _config.CONVERSION_RULES = (RULE,) + tuple(_config.CONVERSION_RULES)
