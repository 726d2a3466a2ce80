"""AutoGraph leaves tf-keras' code alone once graft's model module is imported (the rule
TensorFlow has for `keras`, which Keras 2 left by becoming `tf_keras`), and still converts
graft's own functions."""
from __future__ import annotations

import tensorflow as tf
import tf_keras
from tensorflow.python.autograph.core import config
from tensorflow.python.autograph.impl import conversion

from components import autograph_rules, model as model_lib


def test_keras_code_is_not_converted_and_ours_is():
    assert conversion.is_allowlisted(tf_keras.Model.train_step)
    assert conversion.is_allowlisted(tf_keras.layers.Dense.call)
    assert not conversion.is_allowlisted(model_lib.MicroBatchModel.train_step)
    assert not conversion.is_allowlisted(model_lib.smoothed_loss)


def test_the_rule_is_added_once():
    autograph_rules.keep_autograph_out_of_tf_keras()
    autograph_rules.keep_autograph_out_of_tf_keras()
    assert sum(rule is autograph_rules.RULE for rule in config.CONVERSION_RULES) == 1
    assert config.CONVERSION_RULES[0] is autograph_rules.RULE


def test_our_tf_functions_still_get_autograph():
    @tf.function
    def count_up(n):
        total = tf.constant(0)
        for i in tf.range(n):  # Python loop over a tensor: needs AutoGraph
            total += i
        return total

    assert int(count_up(tf.constant(5))) == 10
