"""Phase 2's micro-batches: a batch's gradient summed over slices is the whole batch's update.

Two copies of one model (a frozen BatchNorm inside, as in phase 2) take the same fit() steps,
one on whole batches, one in uneven slices; class weights and label smoothing on, as by
default. Weights, loss and accuracy must agree; a slice size that does not split the batch
leaves the model as it is.
"""
from __future__ import annotations

import numpy as np
import pytest
import tf_keras

from components import model as model_lib
from components.training_config import TrainingConfig

CFG = TrainingConfig(label_names=("a", "b", "c"), label_smoothing=0.1)


def _model(seed: int = 0) -> tf_keras.Model:
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    bn = tf_keras.layers.BatchNormalization()
    bn.trainable = False  # phase 2: BatchNorm frozen, in inference mode
    x = bn(x, training=False)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(x))


def _fit(model, micro: int, optimizer: str):
    fitted = model_lib.micro_batched(model, micro, batch_size=8)
    model_lib.compile_for(fitted, model_lib.optimizer(optimizer, 1e-2, 1e-3)
                          if optimizer == "adamw" else tf_keras.optimizers.SGD(0.5), CFG)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (24, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 24)
    history = fitted.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                         class_weight={0: 2.0, 1: 0.5, 2: 1.0})
    return fitted, history.history


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_slices_give_the_whole_batchs_update_loss_and_metrics(optimizer):
    whole, sliced = _model(), _model()
    before = [w.copy() for w in whole.get_weights()]
    fitted_whole, hist_whole = _fit(whole, 0, optimizer)
    fitted_sliced, hist_sliced = _fit(sliced, 3, optimizer)  # slices of 3, 3 and 2
    assert fitted_whole is whole
    assert isinstance(fitted_sliced, model_lib.MicroBatchModel)
    assert not isinstance(sliced, model_lib.MicroBatchModel)  # the exported model stays plain
    moved = max(np.abs(a - b).max() for a, b in zip(whole.get_weights(), before))
    assert moved > 1e-3  # the steps did change the weights
    for a, b in zip(whole.get_weights(), sliced.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(hist_whole["loss"], hist_sliced["loss"], rtol=1e-5)
    assert hist_whole["accuracy"] == hist_sliced["accuracy"]


def test_a_slice_as_large_as_the_batch_changes_nothing():
    model = _model()
    assert model_lib.micro_batched(model, 0, 32) is model
    assert model_lib.micro_batched(model, 32, 32) is model
    assert model_lib.micro_batched(model, 64, 32) is model
    assert model_lib.micro_batched(model, 16, 32).micro_batch_size == 16


def test_micro_batch_size_is_a_flag_with_a_default_of_16():
    assert TrainingConfig().micro_batch_size == 16
