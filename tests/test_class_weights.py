"""--class-weight: balanced weights are inverse frequency, they change the loss the Trainer's
fit minimises (phase 1 on cached features), and train() hands them to both phases' fit()."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from components import class_weights, dataset, model as model_lib, trainer
from components.backbones import get_backbone
from components.training_config import TrainingConfig

NAMES = ("a", "b", "c")


def test_balanced_is_inverse_frequency_with_mean_weight_one():
    counts = [60, 30, 10]
    weights = class_weights.balanced(counts)
    assert weights == pytest.approx([100 / 180, 100 / 90, 100 / 30])
    assert np.dot(counts, weights) / sum(counts) == pytest.approx(1.0)
    assert class_weights.for_mode("none", counts) is None
    assert class_weights.for_mode("balanced", [5, 0, 5]) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert class_weights.label_counts([2, 0, 2, 2], 3) == [1, 0, 3]
    with pytest.raises(ValueError, match="class_weight must be one of"):
        class_weights.for_mode("inverse", counts)


def _head(cfg):
    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(inputs))
    # Biased towards class 0, the majority: the rare classes carry the large losses.
    model.set_weights([np.arange(12, dtype="float32").reshape(4, 3) / 10,
                       np.array([2.0, 0.0, 0.0], "float32")])
    # A learning rate of 0: fit() reports the loss of these very weights.
    model_lib.compile_for(model, tf_keras.optimizers.SGD(0.0), cfg)
    return model


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_balanced_weights_change_the_loss_fit_minimises(smoothing):
    cfg = TrainingConfig(label_names=NAMES, label_smoothing=smoothing)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 4)).astype("float32")
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    weights = class_weights.for_mode("balanced", class_weights.label_counts(y, 3))
    losses = {}
    for mode, cw in (("none", None), ("balanced", weights)):
        hist = trainer._fit(_head(cfg), (x, y), (x, y), 1, 3, [], "phase 1", batch_size=10,
                            class_weight=cw)
        losses[mode] = hist["loss"][0]
        assert hist["val_loss"][0] == pytest.approx(losses["none"], rel=1e-5)  # unweighted
    probs = _head(cfg).predict(x, verbose=0)
    target = (1 - smoothing) * np.eye(3)[y] + smoothing / 3
    per_example = -(target * np.log(probs)).sum(axis=1)
    assert losses["none"] == pytest.approx(per_example.mean(), rel=1e-4)
    expected = (per_example * np.array([weights[c] for c in y])).mean()
    assert losses["balanced"] == pytest.approx(expected, rel=1e-4)
    assert losses["balanced"] > losses["none"] + 0.3  # the rare classes' errors now count


def test_train_weighs_both_phases_and_records_the_weights(monkeypatch):
    cfg = TrainingConfig(label_names=NAMES, image_size=32, epochs=1, fine_tune_epochs=1,
                         fine_tune_layers=3, batch_size=4, class_weight="balanced",
                         fine_tune_input="activations")
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (10, 32, 32, 3)).astype("float32")
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])

    def batches():
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)

    seen = []
    real_fit = tf_keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.append((self.name, kwargs.get("class_weight")))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(tf_keras.Model, "fit", spy)
    phase1, phase2 = trainer.train(classifier, cfg, tf.distribute.get_strategy(), 4, batches(),
                                   batches(), batches, lambda: 10)
    expected = {0: 10 / 18, 1: 10 / 9, 2: 10 / 3}
    # Phase 2 of this partial fine-tune trains on the cached activations of the frozen bottom.
    assert [name for name, _ in seen] == ["graft_head", "graft_classifier_on_activations"]
    for _, cw in seen:
        assert cw == pytest.approx(expected)
    assert phase1["class_weight"] == {
        "mode": "balanced", "train_counts": {"a": 6, "b": 3, "c": 1},
        "weights": {"a": round(10 / 18, 6), "b": round(10 / 9, 6), "c": round(10 / 3, 6)}}
    assert phase2["loss"]
    seen.clear()
    trainer.train(model_lib.build(get_backbone(cfg.backbone), cfg),
                  dataclasses.replace(cfg, class_weight="none", fine_tune_epochs=0),
                  tf.distribute.get_strategy(), 4, batches(), batches(), batches, lambda: 10)
    assert seen == [("graft_head", None)]


def test_labels_counted_from_the_records_without_decoding(tmp_path):
    path = str(tmp_path / "train.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for label in [2, 0, 2, 2, 7]:  # 7 is outside the vocabulary: not counted
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"not decoded"])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
            w.write(ex.SerializeToString())
    assert dataset.count_labels([path], "label", 3) == [1, 0, 3]
