"""The model's two training modes: transfer (frozen base, BatchNorm in inference mode, phase 2
unfreezes only non-BatchNorm top layers) and from scratch (weights 'none': every layer
trainable, BatchNorm learning its statistics); plus the per-epoch clock and the benchmark's
time-to-accuracy and nested stratified subsets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from bench import transfer_vs_scratch
from components import model as model_lib
from components.backbones import get_backbone
from components.training_config import TrainingConfig

CFG = TrainingConfig(label_names=("a", "b", "c"), head_units=8, dropout=0.0, image_size=32)


def _bn_moving_means(base):
    return [w.numpy().copy() for layer in base.layers
            if isinstance(layer, tf_keras.layers.BatchNormalization)
            for w in layer.weights if "moving_mean" in w.name]


def _fit_one_epoch(model):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    model_lib.compile_for(model, 1e-3)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)


def test_from_scratch_trains_every_layer_and_batchnorm_statistics():
    assert TrainingConfig(weights="none").from_scratch and TrainingConfig(weights="").from_scratch
    assert not TrainingConfig(weights="imagenet").from_scratch
    model, base, _ = model_lib.build(get_backbone("efficientnet_lite0"),
                                  dataclasses.replace(CFG, weights="none"))
    assert base.trainable
    bns = [layer for layer in base.layers if isinstance(layer, tf_keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == model_lib.SCRATCH_BN_MOMENTUM for layer in bns)
    assert len(model.trainable_weights) > len(base.trainable_weights) > 100
    before = _bn_moving_means(base)
    _fit_one_epoch(model)
    after = _bn_moving_means(base)
    assert any(not np.allclose(b, a) for b, a in zip(before, after)), \
        "BatchNorm statistics must learn when training from scratch"


def test_transfer_phase1_freezes_base_and_batchnorm_stays_in_inference_mode(monkeypatch):
    backbone = get_backbone("efficientnet_lite0")
    real_build = backbone.build_base
    # Random init stands in for the ImageNet weights: only the freezing is under test here.
    monkeypatch.setattr(type(backbone), "build_base",
                        lambda self, weights, image_size: real_build(None, image_size))
    model, base, _ = model_lib.build(backbone, dataclasses.replace(CFG, weights="imagenet"))
    assert not base.trainable and not base.trainable_weights
    head = [w.name for w in model.trainable_weights]
    assert head and all(n.startswith(("head_dense", "probabilities")) for n in head)
    model_lib.unfreeze_top(base, 30)
    before = _bn_moving_means(base)
    _fit_one_epoch(model)
    assert all(np.allclose(b, a) for b, a in zip(before, _bn_moving_means(base)))
    assert not any(isinstance(layer, tf_keras.layers.BatchNormalization) and layer.trainable
                   for layer in base.layers)


def test_epoch_clock_records_one_increasing_time_per_epoch():
    clock = model_lib.EpochClock()
    model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(1)])
    model.compile(loss="mse")
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), epochs=3, verbose=0, callbacks=[clock])
    assert len(clock.seconds) == 3 and clock.seconds == sorted(clock.seconds)


def test_time_to_accuracy_counts_epochs_and_seconds_across_phases():
    phases = [{"val_accuracy": [0.4, 0.65, 0.82], "epoch_end_seconds": [10, 20, 30],
               "seconds": 31.0},
              {"val_accuracy": [0.91], "epoch_end_seconds": [5], "seconds": 6.0}]
    got = transfer_vs_scratch.time_to(phases, (0.5, 0.8, 0.9, 0.95))
    assert got["0.5"] == {"epoch": 2, "seconds": 20}
    assert got["0.8"] == {"epoch": 3, "seconds": 30}
    assert got["0.9"] == {"epoch": 4, "seconds": 36.0}
    assert got["0.95"] is None


def test_subsets_are_stratified_and_nested(tmp_path):
    full = tmp_path / "full"
    (full / "span-1" / "train").mkdir(parents=True)
    (full / "span-1" / "eval").mkdir(parents=True)
    (full / "labels.txt").write_text("a\nb\n")
    with tf.io.TFRecordWriter(str(full / "span-1" / "train" / "x.tfrecord")) as w:
        for i in range(40):
            label = 0 if i < 30 else 1  # 30 of class a, 10 of class b
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"%d" % i])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
            w.write(ex.SerializeToString())
    (full / "span-1" / "eval" / "e.tfrecord").write_bytes(b"")

    def read(out):
        recs = [tf.train.Example.FromString(r.numpy()) for r in
                tf.data.TFRecordDataset(str(out / "span-1" / "train" / "part-00000.tfrecord"))]
        return {(e.features.feature["image"].bytes_list.value[0],
                 e.features.feature["label"].int64_list.value[0]) for e in recs}

    small = transfer_vs_scratch.subset_data(full, tmp_path / "s", 0.2)
    big = transfer_vs_scratch.subset_data(full, tmp_path / "b", 0.5)
    assert small == {"train_images": 8, "total_train_images": 40}
    assert big == {"train_images": 20, "total_train_images": 40}
    s, b = read(tmp_path / "s"), read(tmp_path / "b")
    assert sorted(lbl for _, lbl in s) == [0] * 6 + [1] * 2
    assert len(b) == 20 and s <= b
    assert (tmp_path / "s" / "labels.txt").read_text() == "a\nb\n"
    assert (tmp_path / "s" / "span-1" / "eval" / "e.tfrecord").exists()


@pytest.mark.parametrize("fraction", [0.1, 1.0])
def test_subset_keeps_at_least_one_per_class(tmp_path, fraction):
    full = tmp_path / "full"
    (full / "span-1" / "train").mkdir(parents=True)
    (full / "span-1" / "eval").mkdir(parents=True)
    (full / "labels.txt").write_text("a\nb\n")
    with tf.io.TFRecordWriter(str(full / "span-1" / "train" / "x.tfrecord")) as w:
        for label in (0, 1, 1):
            ex = tf.train.Example(features=tf.train.Features(feature={
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
            w.write(ex.SerializeToString())
    got = transfer_vs_scratch.subset_data(full, tmp_path / "o", fraction)
    assert got["train_images"] == (2 if fraction == 0.1 else 3)


def _point(arm, fraction, acc, per_epoch, clock, phase_seconds):
    return {"arm": arm, "fraction": fraction, "evaluator_accuracy": acc,
            "best_epoch_val_accuracy": max(a for p in per_epoch for a in p),
            "val_accuracy_per_epoch": per_epoch, "epoch_end_seconds": clock,
            "phase_seconds": phase_seconds, "training_seconds": sum(phase_seconds)}


def test_claims_gain_speedup_and_data_needed():
    points = [
        _point("scratch", 1.0, 0.60, [[0.3, 0.5, 0.62, 0.6]], [[10, 20, 30, 40]], [41]),
        _point("transfer", 1.0, 0.90, [[0.7, 0.85], [0.9]], [[2, 4], [3]], [5, 4]),
        _point("scratch", 0.1, 0.30, [[0.2, 0.35]], [[1, 2]], [2]),
        _point("transfer", 0.1, 0.70, [[0.3, 0.36, 0.7]], [[1, 2, 3]], [3]),
    ]
    points[2]["best_epoch_val_accuracy"] = 0.350004  # unrounded: must not break the match
    got = transfer_vs_scratch.claims(points)
    full = next(c for c in got["per_fraction"] if c["fraction"] == 1.0)
    assert full["accuracy_gain_points"] == 30.0
    assert full["scratch_seconds_to_its_best"] == 30 and full["scratch_epochs_to_its_best"] == 3
    assert full["transfer_seconds_to_same"] == 2 and full["speedup"] == 15.0
    tenth = next(c for c in got["per_fraction"] if c["fraction"] == 0.1)
    assert tenth["transfer_epochs_to_same"] == 2 and tenth["speedup"] == 1.0
    assert got["smallest_transfer_fraction_beating_scratch_at_100"] == 0.1
