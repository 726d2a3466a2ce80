"""The Trainer's recipe pieces: the typed config and its flags, phase 1 on cached features,
phase 2's unfreezing depth, loss and learning-rate schedule."""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from components import feature_cache, model as model_lib
from components.backbones import get_backbone
from components.training_config import RECIPES, TrainingConfig
from pipeline import configs

NAMES = ("a", "b", "c")


def _images(n=6, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, size, size, 3)).astype("float32")


def test_cached_features_equal_the_models_own_forward_pass():
    cfg = TrainingConfig(label_names=NAMES, image_size=64)  # real offline Lite0 weights
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    x = _images()
    y = np.array([0, 1, 2, 0, 1, 2])
    # One batch: oneDNN's float rounding depends on the batch size, not on the path.
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    feats, labels, _ = feature_cache.extract(model_lib.feature_extractor(classifier), ds)
    assert feats.shape == (6, 1280) and labels.tolist() == y.tolist()
    # The uncached path: the whole model on the images, compiled into a graph as fit() and
    # predict() do (eager op-by-op execution rounds differently). Same features and
    # probabilities.
    pool = tf_keras.Model(classifier.model.input,
                          classifier.model.get_layer(model_lib.POOL_LAYER).output)
    assert np.abs(pool.predict(x, batch_size=6, verbose=0) - feats).max() <= 1e-5
    probs = classifier.model.predict(x, batch_size=6, verbose=0)
    assert np.abs(classifier.head(feats, training=False).numpy() - probs).max() <= 1e-5


def test_flip_view_appends_the_flipped_images_features_with_the_same_labels():
    cfg = TrainingConfig(label_names=NAMES, image_size=32)
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    extractor = model_lib.feature_extractor(classifier)
    x = _images(4, 32)
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(4) % 3)).batch(3)
    feats, labels, _ = feature_cache.extract(extractor, ds, flip=True)
    assert feats.shape[0] == 8 and labels.tolist() == [0, 1, 2, 0, 0, 1, 2, 0]
    flipped = extractor(tf.image.flip_left_right(x), training=False).numpy()
    assert np.abs(feats[4:] - flipped).max() <= 1e-5
    assert np.abs(feats[4:] - feats[:4]).max() > 1e-3  # a different view, not a copy


def test_cache_traces_the_backbone_once_for_both_splits_views_and_partial_batches():
    cfg = TrainingConfig(label_names=NAMES, image_size=32)
    extractor = model_lib.feature_extractor(model_lib.build(get_backbone(cfg.backbone), cfg))
    train = tf.data.Dataset.from_tensor_slices((_images(4, 32), np.arange(4) % 3)).batch(3)
    evals = tf.data.Dataset.from_tensor_slices((_images(5, 32, 1), np.arange(5) % 3)).batch(2)
    cache = feature_cache.Cache(extractor, train, evals, flip=True)
    assert cache.train_x.shape == (8, 1280) and cache.eval_x.shape == (5, 1280)
    # Batches of 3, 1, 2 and 1 images, plain and flipped: one trace of the backbone.
    assert cache.traces == 1 and cache.describe()["traces"] == 1


def test_builtin_layers_save_without_traces_and_keras_rebuilds_the_same_model(tmp_path):
    cfg = TrainingConfig(label_names=NAMES, image_size=32)
    model = model_lib.build(get_backbone(cfg.backbone), cfg).model
    assert not model_lib.needs_layer_traces(model)
    assert not model_lib.save_for_serving(model, str(tmp_path / "m"))  # the Trainer's save
    # What TFMA's Evaluator does with model_type tf_keras: Keras loads it from the configs.
    loaded = tf_keras.models.load_model(str(tmp_path / "m"))
    assert isinstance(loaded, tf_keras.Model)
    x = _images(4, 32)
    assert np.abs(loaded.predict(x, verbose=0) - model.predict(x, verbose=0)).max() <= 1e-5


def test_head_training_moves_the_full_models_head():
    cfg = TrainingConfig(label_names=NAMES, image_size=32, weights="none")
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    before = classifier.model.get_layer("probabilities").get_weights()[0].copy()
    model_lib.compile_for(classifier.head, tf_keras.optimizers.Adam(1e-2), cfg)
    classifier.head.fit(np.random.rand(8, 1280).astype("float32"), np.arange(8) % 3,
                        epochs=1, verbose=0)
    after = classifier.model.get_layer("probabilities").get_weights()[0]
    assert np.abs(after - before).max() > 0


@pytest.mark.parametrize("name,layers,fifth,all_but", [
    ("vgg16", 19, 4, None), ("resnet50", 175, 35, None), ("efficientnet_b7", 813, 163, None),
    ("efficientnet_lite0", 150, 30, None)])
def test_fine_tune_fraction_counts_layers_the_seeds_way(name, layers, fifth, all_but):
    base = get_backbone(name).build_base(weights=None, image_size=32)
    assert len(base.layers) == layers
    assert TrainingConfig(fine_tune_fraction=0.2).fine_tune_count(layers) == fifth
    assert TrainingConfig(fine_tune_fraction=1.0).fine_tune_count(layers) == layers
    # The explicit layer count overrides the fraction (and cannot exceed the base).
    assert TrainingConfig(fine_tune_fraction=1.0, fine_tune_layers=20).fine_tune_count(
        layers) == min(20, layers)
    trainable = model_lib.unfreeze_top(base, TrainingConfig(fine_tune_fraction=0.2)
                                       .fine_tune_count(layers))
    assert 0 < trainable <= fifth
    assert not any(layer.trainable for layer in base.layers[:layers - fifth])
    assert not any(isinstance(layer, tf_keras.layers.BatchNormalization) and layer.trainable
                   for layer in base.layers)


def test_freeze_depthwise_keeps_every_depthwise_kernel_frozen_and_counts_what_trains():
    base = get_backbone("efficientnet_lite0").build_base(weights=None, image_size=32)
    half = TrainingConfig(fine_tune_fraction=0.5).fine_tune_count(len(base.layers))
    top = base.layers[len(base.layers) - half:]
    depthwise = [layer for layer in top if isinstance(layer, tf_keras.layers.DepthwiseConv2D)]
    assert depthwise
    every = model_lib.unfreeze_top(base, half)
    assert all(layer.trainable for layer in depthwise)
    without = model_lib.unfreeze_top(base, half, freeze_depthwise=True)
    assert without == every - len(depthwise)
    assert not any(layer.trainable for layer in depthwise)
    assert any(layer.trainable for layer in top if type(layer) is tf_keras.layers.Conv2D)
    assert model_lib.unfreeze_top(base, half) == every  # and back: nothing sticks


def test_phase2_early_stopping_does_not_judge_the_warm_up():
    from components import trainer
    cfg = TrainingConfig(fine_tune_epochs=10, warmup_epochs=1)
    assert model_lib.warmup_epochs_unjudged(cfg) == 1
    assert model_lib.warmup_epochs_unjudged(dataclasses.replace(cfg, warmup_epochs=2.5)) == 3
    assert model_lib.warmup_epochs_unjudged(dataclasses.replace(cfg, fine_tune_epochs=2,
                                                                warmup_epochs=3)) == 1
    assert model_lib.warmup_epochs_unjudged(
        dataclasses.replace(cfg, fine_tune_schedule="constant")) == 0
    # A learning rate of 0: the validation loss never improves on the first judged epoch, so
    # the run stops `patience` epochs after it and restores it.
    x = np.random.RandomState(0).rand(16, 4).astype("float32")
    y = np.arange(16) % 2
    runs = {}
    for monitor_from in (0, 2):
        model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2, "softmax")])
        model.compile(tf_keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy",
                      metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        runs[monitor_from] = trainer._fit(model, (x, y), (x, y), 10, 1, [], "phase 2",
                                          batch_size=8, monitor_from=monitor_from)
    assert len(runs[0]["val_loss"]) == 2 and trainer.best(runs[0])["epoch"] == 1
    assert len(runs[2]["val_loss"]) == 4 and trainer.best(runs[2])["epoch"] == 3


def test_phase2_is_dropped_only_when_worse_on_both_and_on_loss_with_the_seed_rule():
    from components import trainer
    # mri-dev's pipeline benchmark: phase 2 more accurate at a slightly higher smoothed loss.
    phase1 = {"val_loss": 0.577, "val_accuracy": 0.873}
    phase2 = {"val_loss": 0.586, "val_accuracy": 0.889}
    assert TrainingConfig().keep_phase2 == "either"
    assert RECIPES["seed"]["keep_phase2"] == "val_loss"
    assert trainer.phase2_kept("either", phase1, phase2)
    assert trainer.phase2_kept("accuracy", phase1, phase2)
    assert not trainer.phase2_kept("val_loss", phase1, phase2)
    lower_loss_less_accurate = {"val_loss": 0.5, "val_accuracy": 0.857}
    assert trainer.phase2_kept("either", phase1, lower_loss_less_accurate)
    assert trainer.phase2_kept("val_loss", phase1, lower_loss_less_accurate)
    assert not trainer.phase2_kept("accuracy", phase1, lower_loss_less_accurate)
    worse_on_both = {"val_loss": 0.6, "val_accuracy": 0.857}
    assert not any(trainer.phase2_kept(rule, phase1, worse_on_both)
                   for rule in ("either", "accuracy", "val_loss"))
    assert trainer.phase2_kept("accuracy", phase1, dict(phase2, val_accuracy=0.873))  # tie
    assert trainer.phase2_kept("either", {}, phase2) and not trainer.phase2_kept(
        "either", phase1, {})


def test_final_metrics_are_the_kept_phases_restored_epoch():
    from components import trainer
    phase1 = {"val_loss": [0.5, 0.4, 0.45], "val_accuracy": [0.8, 0.85, 0.9], "seconds": 1.0,
              "phase": "phase 1"}
    phase2 = {"val_loss": [0.2, 0.35, 0.3], "val_accuracy": [0.95, 0.86, 0.88], "seconds": 1.0,
              "phase": "phase 2", "monitored_from_epoch": 2, "kept": True}
    # Phase 2's warm-up epoch is not judged: epoch 3 (the lowest judged loss) was restored.
    assert trainer.final_metrics(phase1, phase2) == {"loss": 0.3, "accuracy": 0.88,
                                                     "source": "phase 2, epoch 3"}
    assert trainer.final_metrics(phase1, dict(phase2, kept=False)) == {
        "loss": 0.4, "accuracy": 0.85, "source": "phase 1, epoch 2"}
    assert trainer.final_metrics(phase1, {}) == trainer.final_metrics(
        phase1, dict(phase2, kept=False))
    assert trainer.final_metrics({}, {}) == {}


def test_label_smoothing_loss():
    probs = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = tf.constant([0, 2])
    plain = model_lib.smoothed_loss(3, 0.0)(labels, probs).numpy().mean()
    expected = tf_keras.losses.sparse_categorical_crossentropy(labels, probs).numpy().mean()
    assert plain == pytest.approx(expected, rel=1e-6)
    target = np.array([[0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3], [0.1 / 3, 0.1 / 3, 0.9 + 0.1 / 3]])
    manual = -(target * np.log(probs.numpy())).sum(axis=1).mean()
    per_example = model_lib.smoothed_loss(3, 0.1)(labels, probs).numpy()
    assert per_example.shape == (2,)  # per example: Keras applies class weights to these
    assert per_example.mean() == pytest.approx(manual, rel=1e-5)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = TrainingConfig(fine_tune_epochs=4, warmup_epochs=1, fine_tune_learning_rate=1e-4)
    rate = model_lib.learning_rate(cfg, steps_per_epoch=10)
    assert float(rate(0)) == pytest.approx(0.0, abs=1e-12)
    assert float(rate(5)) == pytest.approx(0.5e-4, rel=1e-3)
    assert float(rate(10)) == pytest.approx(1e-4, rel=1e-3)
    assert float(rate(25)) == pytest.approx(0.5e-4, rel=1e-3)   # halfway through the decay
    assert float(rate(40)) == pytest.approx(0.0, abs=1e-9)
    constant = dataclasses.replace(cfg, fine_tune_schedule="constant")
    assert model_lib.learning_rate(constant, 10) == 1e-4


def _parse(*argv):
    p = argparse.ArgumentParser()
    configs.add_run_arguments(p)
    args = p.parse_args(list(argv))
    return configs.from_args(args, data_dir="/d", label_names=NAMES, output_dir="/o")


def test_seed_recipe_restores_the_original_settings_and_flags_still_win():
    default = _parse().training
    assert default == TrainingConfig(label_names=NAMES)
    seed = _parse("--recipe", "seed").training
    for key, value in RECIPES["seed"].items():
        assert getattr(seed, key) == value
    assert seed.fine_tune_count(150) == 20 and seed.recipe == "seed"
    # The seed trained every one of its 20 layers' kernels, and its activations saw flips only.
    assert seed.freeze_depthwise is False and seed.augmented_views == 0
    assert default.freeze_depthwise is True and default.fine_tune_count(150) == 75
    assert _parse("--no-freeze-depthwise").training.freeze_depthwise is False
    mixed = _parse("--recipe", "seed", "--fine-tune-epochs", "2", "--no-feature-cache").training
    assert mixed.fine_tune_epochs == 2 and mixed.fine_tune_learning_rate == 1e-5
    assert mixed.feature_cache is False


def test_every_flagged_field_has_a_flag_and_reaches_the_config():
    p = argparse.ArgumentParser()
    configs.add_run_arguments(p)
    flags = {a.dest: a for a in p._actions}
    for cls, field in configs.flag_fields():
        assert field.name in flags, field.name
    cfg = _parse("--fine-tune-fraction", "0.5", "--label-smoothing", "0", "--min-accuracy",
                 "0.7", "--fine-tune-schedule", "constant")
    assert cfg.training.fine_tune_fraction == 0.5 and cfg.training.label_smoothing == 0.0
    assert cfg.min_accuracy == 0.7 and cfg.training.fine_tune_schedule == "constant"
    assert _parse("--seed", "7").training.seed == 7 and _parse().training.seed == 42


def test_custom_config_round_trip_and_unknown_keys():
    cfg = TrainingConfig(label_names=NAMES, fine_tune_layers=7, image_size=96)
    assert TrainingConfig.from_custom_config(cfg.to_custom_config()) == cfg
    with pytest.raises(ValueError, match="unknown keys.*fine_tune_layer"):
        TrainingConfig.from_custom_config({"fine_tune_layer": 3})
