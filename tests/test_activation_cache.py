"""Phase 2 on what the feature cache kept: a partial fine-tune on the frozen bottom's
activations (where the base is cut, that the cut computes what the model computes, that
training on activations trains the exported model), every-layer and partial fine-tunes on the
cached transformed images, and the memory budget's fallback to the image files."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from components import dataset, feature_cache, model as model_lib, trainer
from components.backbones import get_backbone
from components.training_config import TrainingConfig

NAMES = ("a", "b", "c")


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


def _classifier(**kwargs):
    cfg = TrainingConfig(label_names=NAMES, image_size=64, **kwargs)
    return cfg, model_lib.build(get_backbone(cfg.backbone), cfg)


@pytest.mark.parametrize("backbone,layers,boundary", [
    # The seed's 20 layers of Lite0 start inside block 6d: the cut is the block before it.
    ("efficientnet_lite0", 20, "block6c_add"),
    # 140 layers start at block 2a's expand conv: cut below it, at block 1's 16 channels, not
    # after it (the same resolution, 6x the channels).
    ("efficientnet_lite0", 140, "block1a_project_bn"),
    # ResNet50's top 20 layers start inside conv5_block2: its residual input crosses the
    # block's layers, so the cut is the previous block's output.
    ("resnet50", 20, "conv5_block1_out"),
])
def test_the_cut_is_the_highest_block_boundary_below_the_trainable_layers(
        backbone, layers, boundary):
    cfg, classifier = _classifier(backbone=backbone, weights="none")
    base = classifier.base
    split = model_lib.frozen_split(classifier, layers)
    assert split.layer == boundary
    j = [layer.name for layer in base.layers].index(boundary) + 1
    assert j <= len(base.layers) - layers  # every unfrozen layer is above the cut
    # The bottom and the rest compute the model's own pooled features, in one graph as the
    # cache runs them (oneDNN rounds the same ops alike there).
    x = tf.constant(_images(4, 64))
    whole = feature_cache.forward_fn(model_lib.feature_extractor(classifier))(x).numpy()
    bottom, rest = (feature_cache.forward_fn(m) for m in (split.bottom, split.rest))
    assert np.abs(rest(bottom(x)).numpy() - whole).max() <= 1e-5


def test_no_cut_when_every_layer_or_nearly_every_layer_is_fine_tuned():
    _, classifier = _classifier(weights="none")
    n = len(classifier.base.layers)
    assert model_lib.frozen_split(classifier, n) is None
    assert model_lib.frozen_split(classifier, n - 1) is None  # only the input layer frozen


def test_random_view_picks_one_cached_view_per_example_in_training_and_the_original_else():
    views = tf.constant(np.stack([np.zeros((64, 2)), np.ones((64, 2))], axis=1), tf.float32)
    layer = model_lib.RandomView()
    assert np.all(layer(views, training=False).numpy() == 0)
    picked = layer(views, training=True).numpy()
    assert set(np.unique(picked)) == {0.0, 1.0}  # both views drawn over 64 examples
    assert np.all(picked[:, 0] == picked[:, 1])  # whole views, not mixed elements


def _train(cfg, cache=None):
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    x, y = _images(12, 64), np.arange(12) % 3

    def batches():
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)

    bottom_before = [w.copy() for w in model_lib.frozen_split(
        classifier, cfg.fine_tune_count(len(classifier.base.layers))).bottom.get_weights()]
    top_before = classifier.base.get_layer("top_conv").get_weights()[0].copy()
    phase1, phase2 = trainer.train(classifier, cfg, tf.distribute.get_strategy(), 4,
                                   batches(), batches(), batches, lambda: 12, cache=cache)
    return classifier, x, phase1, phase2, bottom_before, top_before


def test_phase2_on_activations_trains_the_exported_model_and_leaves_the_bottom_alone():
    # No phase-1 epochs: nothing to compare phase 2 with, so its weights are kept.
    cfg = TrainingConfig(label_names=NAMES, image_size=64, epochs=0, fine_tune_epochs=2,
                         fine_tune_layers=20, fine_tune_learning_rate=1e-2,
                         fine_tune_schedule="constant", batch_size=4, early_stopping_patience=5,
                         fine_tune_input="activations")
    classifier, x, phase1, phase2, bottom_before, top_before = _train(cfg)
    assert phase2["input"] == "activations of block6c_add"
    described = phase1["feature_cache"]["activations"]
    assert described["kept"] and described["shape"] == [2, 2, 192]  # 64 px: 2 x 2 at block 6
    assert len(phase2["val_loss"]) == 2
    # The model that is exported changed where phase 2 trains, and nowhere below the cut.
    split = model_lib.frozen_split(classifier, 20)
    assert all(np.array_equal(a, b) for a, b in zip(bottom_before, split.bottom.get_weights()))
    assert phase2["kept"]
    top_after = classifier.base.get_layer("top_conv").get_weights()[0]
    assert np.abs(top_after - top_before).max() > 1e-4
    # The exported weights' metrics, read from the epoch early stopping restored, are the
    # model's own on the eval images (the Trainer no longer evaluates them again).
    final = trainer.final_metrics(phase1, phase2)
    assert final["source"] == "phase 2, epoch %d" % trainer.best(phase2)["epoch"]
    again = classifier.model.evaluate(x, np.arange(12) % 3, batch_size=4, verbose=0,
                                      return_dict=True)
    assert final["accuracy"] == pytest.approx(again["accuracy"], abs=1e-6)
    assert final["loss"] == pytest.approx(again["loss"], rel=1e-4)
    # The images through the model give what the activations through the trained top give.
    acts = np.stack([split.bottom.predict(x, verbose=0)], axis=1)
    on_acts = model_lib.on_activations(classifier, split)
    assert np.abs(classifier.model.predict(x, verbose=0)
                  - on_acts.predict(acts, verbose=0)).max() <= 1e-5


def test_over_budget_or_switched_off_phase2_reads_the_images():
    cfg = TrainingConfig(label_names=NAMES, image_size=64, epochs=1, fine_tune_epochs=1,
                         fine_tune_layers=20, batch_size=4, fine_tune_input="activations")
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    x, y = _images(12, 64), np.arange(12) % 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    split = model_lib.frozen_split(classifier, 20)
    # 4 images x 2 views x 2 x 2 x 192 float16 = 12,288 bytes per training batch: two of
    # the three fit.
    tight = feature_cache.Cache(model_lib.feature_extractor(classifier), ds, ds, flip=True,
                                split=split, budget_bytes=2 * 12288)
    assert tight.train_in is None and tight.split is None
    assert tight.describe()["activations"] == {"layer": "block6c_add", "augmented_views": 0,
                                               "shape": None, "megabytes": None, "kept": False}
    roomy = feature_cache.Cache(model_lib.feature_extractor(classifier), ds, ds, flip=True,
                                split=split)
    assert roomy.train_in.shape == (12, 2, 2, 2, 192) and roomy.eval_in.shape == (12, 1, 2, 2, 192)
    # The training activations are float16 (half the bytes), the eval ones float32 (phase 2's
    # validation metrics are the exported model's own), both the bottom's output.
    assert roomy.train_in.dtype == np.float16 and roomy.eval_in.dtype == np.float32
    exact = split.bottom.predict(x, verbose=0)
    assert np.abs(roomy.eval_in[:, 0] - exact).max() <= 1e-5
    assert np.abs(roomy.train_in[:, 0].astype(np.float32) - exact).max() \
        <= 2 ** -10 * np.abs(exact).max()
    # Same features either way: the budget only decides what else is kept.
    assert np.array_equal(tight.train_x, roomy.train_x)
    _, _, _, phase2, *_ = _train(cfg, cache=tight)
    assert phase2["input"] == "images"
    _, _, _, phase2, *_ = _train(dataclasses.replace(cfg, activation_cache=False))
    assert phase2["input"] == "images"


def test_augmented_views_add_activations_of_augmented_copies_and_leave_the_features_alone():
    cfg = TrainingConfig(label_names=NAMES, image_size=64, epochs=0, fine_tune_epochs=1,
                         fine_tune_layers=20, batch_size=4, fine_tune_input="activations",
                         augmented_views=2)
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    x, y = _images(12, 64), np.arange(12) % 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    split = model_lib.frozen_split(classifier, 20)
    extractor = model_lib.feature_extractor(classifier)
    plain = feature_cache.Cache(extractor, ds, ds, flip=True, split=split)
    views = feature_cache.Cache(extractor, ds, ds, flip=True, split=split, augmented=2,
                                value_range=(-1.0, 1.0))
    assert views.train_in.shape == (12, 4, 2, 2, 192) and views.eval_in.shape[1] == 1
    assert views.describe()["activations"]["augmented_views"] == 2
    # The original's and the flip's activations and every feature are the plain cache's.
    assert np.array_equal(views.train_in[:, :2], plain.train_in)
    assert np.array_equal(views.train_x, plain.train_x) and views.views == 2
    # The augmented copies are new views, each unlike the original, the flip and the other.
    for k in (2, 3):
        for other in range(k):
            assert np.abs(views.train_in[:, k] - views.train_in[:, other]).max() > 1e-3
    # Phase 2 trains on the four views (the Trainer asks for them from the config).
    phase1, phase2 = trainer.train(classifier, cfg, tf.distribute.get_strategy(), 4, ds, ds,
                                   lambda: ds, lambda: 12)
    assert phase2["input"] == "activations of block6c_add"
    assert phase1["feature_cache"]["activations"]["augmented_views"] == 2
    assert phase1["feature_cache"]["train_views"] == 2  # the features' views: original, flip
    _, phase2 = trainer.train(classifier, cfg, tf.distribute.get_strategy(), 4, ds, ds,
                              lambda: ds, lambda: 12, cache=views)
    assert phase2["input"] == "activations of block6c_add" and len(phase2["val_loss"]) == 1


def test_every_layer_phase2_trains_on_the_cached_images():
    # Every layer fine-tuned: no frozen bottom, so the cache keeps the transformed images.
    cfg = TrainingConfig(label_names=NAMES, image_size=64, epochs=0, fine_tune_epochs=2,
                         fine_tune_learning_rate=1e-2, fine_tune_schedule="constant",
                         batch_size=4, early_stopping_patience=5, fine_tune_fraction=1.0,
                         freeze_depthwise=False)
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    x, y = _images(12, 64), np.arange(12) % 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    extractor = model_lib.feature_extractor(classifier)
    cache = feature_cache.Cache(extractor, ds, ds, flip=True, images=True)
    assert cache.phase2_input == "cached images" and cache.split is None
    assert cache.train_in.dtype == np.float16 and cache.train_in.shape == (12, 64, 64, 3)
    assert cache.eval_in.shape == (12, 64, 64, 3)
    # The originals (phase 2 augments them itself), within float16's rounding of [-1, 1].
    assert np.abs(cache.train_in.astype(np.float32) - x).max() <= 2 ** -11
    assert cache.describe()["images"] == {"dtype": "float16", "shape": [64, 64, 3],
                                          "megabytes": 0.6, "kept": True}
    assert cache.describe()["activations"] is None
    # Over budget: nothing kept, the same features.
    tight = feature_cache.Cache(extractor, ds, ds, flip=True, images=True,
                                budget_bytes=cache.train_in.nbytes)
    assert tight.train_in is None and tight.phase2_input is None
    assert np.array_equal(tight.train_x, cache.train_x)
    # Phase 2 on the cached images trains the model itself.
    before = classifier.base.get_layer("stem_conv").get_weights()[0].copy()
    _, phase2 = trainer.train(classifier, cfg, tf.distribute.get_strategy(), 4, ds, ds,
                              lambda: ds, lambda: 12, cache=cache)
    assert phase2["input"] == "cached images" and phase2["kept"]
    assert len(phase2["val_loss"]) == 2
    assert np.abs(classifier.base.get_layer("stem_conv").get_weights()[0] - before).max() > 0
    # The validation metrics on the cached eval images are the model's on the originals.
    final = trainer.final_metrics({}, phase2)
    again = classifier.model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert final["accuracy"] == pytest.approx(again["accuracy"], abs=1e-6)
    assert final["loss"] == pytest.approx(again["loss"], rel=1e-3)
    # Over budget, or switched off: the image files.
    _, phase2 = trainer.train(classifier, cfg, tf.distribute.get_strategy(), 4, ds, ds,
                              lambda: ds, lambda: 12, cache=tight)
    assert phase2["input"] == "images"
    _, phase2 = trainer.train(classifier, dataclasses.replace(cfg, activation_cache=False),
                              tf.distribute.get_strategy(), 4, ds, ds, lambda: ds, lambda: 12)
    assert phase2["input"] == "images"


def test_partial_phase2_on_the_cached_images_trains_the_top_and_leaves_the_bottom_alone():
    # A partial fine-tune with fine_tune_input='images': the cached images, augmented every
    # epoch; the frozen bottom runs forward only. With freeze_depthwise the top's depthwise
    # kernels stay as they were too, and its other convolutions train.
    cfg = TrainingConfig(label_names=NAMES, image_size=64, epochs=0, fine_tune_epochs=2,
                         fine_tune_layers=40, fine_tune_learning_rate=1e-2,
                         fine_tune_schedule="constant", batch_size=4, early_stopping_patience=5,
                         freeze_depthwise=True, fine_tune_input="images")
    classifier = model_lib.build(get_backbone(cfg.backbone), cfg)
    base = classifier.base
    before = [[w.copy() for w in layer.get_weights()] for layer in base.layers]
    x, y = _images(12, 64), np.arange(12) % 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    phase1, phase2 = trainer.train(classifier, cfg, tf.distribute.get_strategy(), 4, ds, ds,
                                   lambda: ds, lambda: 12)
    assert phase2["input"] == "cached images" and phase2["kept"]
    assert phase1["feature_cache"]["images"]["kept"]
    assert phase1["feature_cache"]["activations"] is None
    changed = {i for i, layer in enumerate(base.layers)
               if any(not np.array_equal(a, b) for a, b in zip(before[i], layer.get_weights()))}
    assert changed and min(changed) >= len(base.layers) - 40  # nothing below the top moved
    assert base.layers.index(base.get_layer("top_conv")) in changed
    kinds = {type(base.layers[i]).__name__ for i in changed}
    assert "Conv2D" in kinds
    assert not kinds & {"DepthwiseConv2D", "BatchNormalization"}
    assert any(type(layer).__name__ == "DepthwiseConv2D" for layer in base.layers[-40:])


def test_cached_images_batches_shuffle_augment_and_keep_eval_order():
    cfg = TrainingConfig(label_names=NAMES, seed=3)
    images = _images(10, 8).astype(np.float16)
    labels = np.arange(10)
    evals = dataset.from_arrays(images, labels, 4, False, cfg, (-1.0, 1.0))
    batches = list(evals)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert batches[0][0].dtype == tf.float32
    assert np.array_equal(np.concatenate([b[0].numpy() for b in batches]),
                          images.astype(np.float32))
    assert np.array_equal(np.concatenate([b[1].numpy() for b in batches]), labels)
    train = dataset.from_arrays(images, labels, 4, True, cfg, (-1.0, 1.0))
    epochs = [np.concatenate([b[1].numpy() for b in train]) for _ in range(2)]
    assert all(sorted(e) == list(labels) for e in epochs)  # each image once per epoch
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
    x, y = next(iter(train))
    assert not np.allclose(x.numpy(), images[y.numpy()].astype(np.float32))  # augmented
    assert x.numpy().min() >= -1.0 and x.numpy().max() <= 1.0  # within the value range
