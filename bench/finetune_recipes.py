"""Which fine-tuning recipe should be the Trainer's default? Accuracy vs CPU minutes.

For each seed in (1, 2, 3) and each dataset (../shared/data/mri-dev: 400 brain-MRI JPEGs in
4 class folders, then ../shared/data/flowers-dev: 1,000 photos in 5 class folders):

1. a stratified 80/20 train/eval split with that seed (sklearn train_test_split);
2. every image decoded and resized once to 224x224 exactly like the pipeline
   (components.image_ops.decode_resize), kept in memory as uint8;
3. pooled frozen EfficientNet-Lite0 features (GAP of the base, training=False) of every image
   and of its horizontal flip, computed once per dataset (the features do not depend on the
   split; train / train-flipped / eval / eval-flipped are index subsets);
4. baselines on the features: `logreg` (StandardScaler + LogisticRegression(max_iter=3000)),
   `logreg_flip` (same on train + train-flipped), `head` (the Trainer's head
   Dense128-relu-Dropout0.5-Dense on train features; Adam 1e-3, batch 32, <= 30 epochs,
   early stopping on val_loss patience 3, best weights restored) and `head_flip` (same on
   train + train-flipped features);
5. phase-2 recipes on the images, each from the `head_flip` head on a fresh ImageNet base,
   training images augmented by components.dataset.augment (flip, 85-100 % crop, brightness),
   batch 32, BatchNorm layers frozen and the base called with training=False:
     - `seed`: top 20 base layers trainable (components.model.unfreeze_top), Adam 1e-5,
       sparse CE, <= 5 epochs, early stopping val_loss patience 3 restore best (today's
       phase 2); `accuracy_trainer_rule` applies the Trainer's rule (phase 2 kept only if
       its best val_loss beats phase 1's);
     - `full`: every base layer trainable, AdamW(weight_decay=1e-4) lr 1e-4, 1-epoch linear
       warm-up then cosine decay to 0, categorical CE with label smoothing 0.1, 6 epochs,
       no early stopping;
     - `half`: like `full` with the top 50 % of base.layers trainable;
     - `full_3e-5`: `full` with a peak learning rate of 3e-5; `full_10`: `full` for 10 epochs;
       `half_10`: `half` for 10 epochs (the default schedule on half the layers);
       `half_10_nodw`: `half_10` with the depthwise kernels frozen too (a training step
       0.46x of every layer's on this CPU, against 0.52x for `half_10`: the depthwise filter
       gradients are ~20 % of a step);
     - `half_10_nodw_v4`: `half_10_nodw` on the cached activations of its frozen bottom (cut at
       block4c_add, 14x14x80) for four fixed views of each training image: the original, its
       flip and two augmented copies (components.dataset.augment: flip, crop, brightness;
       each copy's images batched in a random order, fold seed + 1, + 2, since a crop is
       drawn per batch); each epoch trains on one of the four at random (the bottom runs 4
       times per image instead of once per epoch);
     - `half_10_nodw_v4pi`: `half_10_nodw_v4` with each augmented copy's crop drawn per image
       (dataset.augment(per_image=True): size and offset per image) instead of per batch;
       `half_10_nodw_v6pi`: the same with four augmented copies (six views);
     - `full_10_160`: `full_10` with the training images (after augmentation) resized to
       160x160, half the pixels of 224 (evaluated at 224: the serving size);
       `full_10_prog`: its first 7 epochs at 160, the last 3 at 224 (the schedule goes on);
     - `full_15`: `full` for 15 epochs (the reference recipe's length);
     - `seed_act`: `seed` trained as the Trainer does with its activation cache: the frozen
       bottom (components.model.frozen_split: Lite0 up to block6c_add) runs once per
       training image and its flip, and each epoch trains the top on one of the two at
       random (no crop or brightness augmentation); validated on the eval images'
       activations, scored on the images through the model;
     - `act_10_b2`, `act_10_b3`: `full_10` with the stem and blocks 1-2 (`--fine-tune-fraction
       0.82`: the cut at block2b_add, 56x56x24) or 1-3 (0.70: block3b_add, 28x28x40) frozen,
       trained on their cached activations the same way (flips, no crop or brightness).
6. `trainer_10` (cross-validation only): the Trainer's own decisions, nested. Each fold's
   training images are split 80/20 again (stratified, the fold seed) into training and
   validation images; the head trains on the first (+ flips) with label smoothing 0.1 and
   early stopping on the validation images, then `full_10` with early stopping on them too
   (patience 3, the warm-up epoch not judged, best weights restored). The test fold is used
   only to score: the head, phase 2, and the phase a rule keeps (`accuracy`: phase 2 unless
   its validation accuracy is lower; `val_loss`: phase 2 unless its validation loss is higher;
   `either`: phase 2 unless both say so; the Trainer's `--keep-phase2`).
   Each records the final eval accuracy, flip-TTA accuracy (mean of the probabilities of the
   image and its horizontal flip), the per-epoch val accuracy curve, seconds, s/epoch.
Results (plus machine and command) are rewritten to bench/results/finetune_recipes.json
after every finished (dataset, seed, recipe); the end prints a summary table (mean and
min-max over seeds) and the paired full-vs-seed and full-vs-logreg differences per seed.

Validation = the eval split, as in the pipeline (early stopping watches it too).

Run from the repository root (~60-90 min on 2 CPU cores):

    cd /work/main && .venv/bin/python -m bench.finetune_recipes
    .venv/bin/python -m bench.finetune_recipes --quick          # smoke run, ~4 min, /tmp
    .venv/bin/python -m bench.finetune_recipes --report-only    # table from the JSON
    .venv/bin/python -m bench.finetune_recipes --resume         # skip finished results
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from bench import common

_REPO = str(common.REPO)

DATASETS = (("mri-dev", os.path.join(os.path.dirname(_REPO), "shared", "data", "mri-dev")),
            ("flowers-dev", os.path.join(os.path.dirname(_REPO), "shared", "data",
                                         "flowers-dev")))
SEEDS = (1, 2, 3)
BASELINES = ("logreg", "logreg_flip", "head", "head_flip")
PHASE2 = ("seed", "full", "half", "full_3e-5", "full_10", "half_10", "half_10_nodw",
          "half_10_nodw_v4", "half_10_nodw_v4pi", "half_10_nodw_v6pi",
          "full_10_160", "full_10_prog", "full_15", "seed_act", "act_10_b2", "act_10_b3")
SEED_LIKE = ("seed", "seed_act")
# Phase 2 on the frozen bottom's cached activations, as the Trainer's activation cache:
# recipe -> the fraction of the base's layers fine-tuned (None: the seed's 20 layers).
ON_ACTIVATIONS = {"seed_act": None, "act_10_b2": 0.82, "act_10_b3": 0.70,
                  "half_10_nodw_v4": 0.5, "half_10_nodw_v4pi": 0.5, "half_10_nodw_v6pi": 0.5}
# Augmented views cached beside the original and the flip (recipe -> how many).
AUGMENTED_VIEWS = {"half_10_nodw_v4": 2, "half_10_nodw_v4pi": 2, "half_10_nodw_v6pi": 4}
# Augmented views cropped per image (dataset.augment(per_image=True)), not per batch.
PER_IMAGE_CROP = ("half_10_nodw_v4pi", "half_10_nodw_v6pi")
NESTED = ("trainer_10",)
# Variants of `full`: a lower peak learning rate, or 10 epochs instead of --full-epochs.
PEAK_LR = {"full_3e-5": 3e-5}
EPOCHS = {"full_10": 10, "half_10": 10, "half_10_nodw": 10, "half_10_nodw_v4": 10,
          "half_10_nodw_v4pi": 10, "half_10_nodw_v6pi": 10,
          "full_10_160": 10,
          "full_10_prog": 10, "full_15": 15, "act_10_b2": 10, "act_10_b3": 10}
# Training at a lower resolution (the eval images stay at SIZE): (pixels, epochs at it;
# None = every epoch).
LOW_RES = {"full_10_160": (160, None), "full_10_prog": (160, 7)}
RECIPES = BASELINES + PHASE2 + NESTED
BACKBONE = "efficientnet_lite0"
SIZE = 224
BATCH = 32
RESULTS = os.path.join(str(common.RESULTS), "finetune_recipes.json")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


# ----------------------------------------------------------------------------- data
def list_images(root: str, limit_per_class: int = 0):
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, c))
                       if f.lower().endswith(IMAGE_EXT))
        if limit_per_class:
            files = files[:limit_per_class]
        paths += [os.path.join(root, c, f) for f in files]
        labels += [i] * len(files)
    return paths, labels, classes


def load_images(paths, chunk: int = 64):
    """uint8 [N, 224, 224, 3] via the pipeline's decode_resize (bilinear, antialias)."""
    import numpy as np
    import tensorflow as tf

    from components import image_ops

    out = np.empty((len(paths), SIZE, SIZE, 3), np.uint8)
    for s in range(0, len(paths), chunk):
        raw = tf.constant([open(p, "rb").read() for p in paths[s:s + chunk]])
        img = image_ops.decode_resize(raw, SIZE).numpy()
        out[s:s + chunk] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out


def preprocessed(backbone, images_u8):
    import tensorflow as tf
    return backbone.preprocess(tf.cast(images_u8, tf.float32))


def pooled_features(backbone, images, flip: bool):
    """GAP of the frozen base (training=False), batch 32; numpy [N, 1280]."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    base = backbone.build_base(weights="imagenet", image_size=SIZE)
    pooled = tf_keras.layers.GlobalAveragePooling2D()

    @tf.function(reduce_retracing=True)
    def forward(x):
        x = preprocessed(backbone, x)
        if flip:
            x = tf.image.flip_left_right(x)
        return pooled(base(x, training=False))

    feats = [forward(images[s:s + BATCH]).numpy() for s in range(0, len(images), BATCH)]
    return np.concatenate(feats).astype(np.float32)


# ----------------------------------------------------------------------------- models
def add_head(x, n_classes):
    import tf_keras
    x = tf_keras.layers.Dense(128, activation="relu", name="head_dense")(x)
    x = tf_keras.layers.Dropout(0.5, name="head_dropout")(x)
    return tf_keras.layers.Dense(n_classes, activation="softmax", dtype="float32",
                                 name="probabilities")(x)


HEAD_LAYERS = ("head_dense", "probabilities")


def head_weights(head) -> dict:
    """The head's weights as numpy (they survive tf_keras.backend.clear_session)."""
    return {k: [w.copy() for w in head.get_layer(k).get_weights()] for k in HEAD_LAYERS}


def copy_head(weights: dict, dst):
    for name in HEAD_LAYERS:
        dst.get_layer(name).set_weights(weights[name])


def train_logreg(xtr, ytr, xev, xev_flip, yev):
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=3000).fit(scaler.transform(xtr), ytr)
    p = clf.predict_proba(scaler.transform(xev))
    pf = clf.predict_proba(scaler.transform(xev_flip))
    return {"accuracy": float(np.mean(p.argmax(1) == yev)),
            "tta_accuracy": float(np.mean((p + pf).argmax(1) == yev)),
            "pred": p.argmax(1).tolist(),
            "iterations": int(np.max(clf.n_iter_)), "seconds": round(time.time() - t0, 2)}


def train_head(xtr, ytr, xev, xev_flip, yev, n_classes, seed, max_epochs, smoothing=0.0):
    import numpy as np
    import tf_keras

    from components import model as model_lib
    from components.training_config import TrainingConfig

    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input((xtr.shape[1],), name="features")
    head = tf_keras.Model(inputs, add_head(inputs, n_classes), name="head")
    model_lib.compile_for(head, 1e-3, TrainingConfig(
        label_names=tuple(str(i) for i in range(n_classes)), label_smoothing=smoothing))
    t0 = time.time()
    hist = head.fit(xtr, ytr, batch_size=BATCH, epochs=max_epochs, validation_data=(xev, yev),
                    callbacks=[model_lib.early_stopping(3)], verbose=0, shuffle=True)
    seconds = time.time() - t0
    h = hist.history
    best = int(np.argmin(h["val_loss"]))
    p = head.predict(xev, batch_size=256, verbose=0)
    pf = head.predict(xev_flip, batch_size=256, verbose=0)
    return head, {
        "accuracy": float(np.mean(p.argmax(1) == yev)),
        "pred": p.argmax(1).tolist(),
        "tta_accuracy": float(np.mean((p + pf).argmax(1) == yev)),
        "val_loss": float(h["val_loss"][best]), "best_epoch": best + 1,
        "val_accuracy": float(h["val_accuracy"][best]),
        "epochs_run": len(h["val_loss"]),
        "val_accuracy_curve": [round(float(v), 4) for v in h["val_accuracy"]],
        "seconds": round(seconds, 2)}


def phase2(recipe, backbone, head, x_tr, y_tr, x_ev, y_ev, n_classes, seed, epochs,
           phase1_val_loss, phase1_accuracy, validation=None):
    """One phase-2 recipe from the phase-1 head on a fresh ImageNet base. validation:
    (images, labels) to validate and stop early on (patience 3, the warm-up epoch not
    judged, as the Trainer) instead of validating on the scored split."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from components import dataset, feature_cache, model as model_lib, trainer
    from components.training_config import TrainingConfig

    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(seed)
    base = backbone.build_base(weights="imagenet", image_size=SIZE)
    base.trainable = False
    inputs = tf_keras.Input((SIZE, SIZE, 3), name="image_xf")
    x = base(inputs, training=False)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = tf_keras.Model(inputs, add_head(x, n_classes), name="graft_classifier")
    copy_head(head, model)  # head: head_weights() of the phase-1 head

    n_layers = 20 if recipe in SEED_LIKE else \
        len(base.layers) // 2 if recipe.startswith("half") else \
        TrainingConfig(fine_tune_fraction=ON_ACTIVATIONS[recipe]).fine_tune_count(
            len(base.layers)) if recipe in ON_ACTIVATIONS else len(base.layers)
    # BatchNorm stays frozen (and the depthwise kernels for a _nodw recipe).
    with_weights = model_lib.unfreeze_top(base, n_layers, "_nodw" in recipe)
    steps = int(np.ceil(len(x_tr) / BATCH))
    smooth = recipe not in SEED_LIKE
    if recipe in SEED_LIKE:
        model_lib.compile_for(model, 1e-5)
    else:
        warmup = steps  # one epoch of linear warm-up, then cosine to 0 at the last step
        schedule = tf_keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, steps * epochs - warmup), alpha=0.0,
            warmup_target=PEAK_LR.get(recipe, 1e-4), warmup_steps=warmup)
        model.compile(optimizer=tf_keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                      loss=tf_keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                      metrics=["accuracy"])
    trainable_base = sum(int(np.prod(w.shape)) for w in base.trainable_weights)

    def labels(y):
        return tf.one_hot(y, n_classes) if smooth else tf.constant(y, tf.int64)

    def prep(x, y):
        return preprocessed(backbone, x), y

    low_size, low_epochs = LOW_RES.get(recipe, (SIZE, 0))
    if low_size != SIZE:
        # The base's input shape is fixed at SIZE; its layers are not: accept any H x W.
        base.input_spec = tf_keras.layers.InputSpec(ndim=4, axes={-1: 3})
        inputs = tf_keras.Input((None, None, 3), name="image_xf")
        pooled = model.get_layer("pool")(base(inputs, training=False))
        head_out = model.get_layer("probabilities")(
            model.get_layer("head_dropout")(model.get_layer("head_dense")(pooled)))
        fitted = tf_keras.Model(inputs, head_out, name="graft_classifier_any_size")
        fitted.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
    else:
        fitted = model
    act_seconds = 0.0
    if recipe in ON_ACTIVATIONS:  # the Trainer's activation cache (feature_cache.extract)
        t0 = time.time()
        classifier = model_lib.Classifier(model, base, None)
        split = model_lib.frozen_split(classifier, n_layers)
        fitted = model_lib.on_activations(classifier, split)
        fitted.compile(optimizer=model.optimizer, loss=model.loss, metrics=["accuracy"])
        bottom = feature_cache.forward_fn(split.bottom)

        def activations(x, flip, augmented=0):
            # An augmented view: batches of a random order (augment's crop is per batch),
            # returned in x's order.
            order = np.random.default_rng(seed + augmented).permutation(len(x)) \
                if augmented else np.arange(len(x))
            out = []
            for s in range(0, len(x), BATCH):
                images = preprocessed(backbone, x[order[s:s + BATCH]])
                if augmented:
                    images = dataset.augment(images, backbone.value_range,
                                             per_image=recipe in PER_IMAGE_CROP)
                out.append(bottom(tf.image.flip_left_right(images) if flip else images).numpy())
            acts = np.empty_like(np.concatenate(out))
            acts[order] = np.concatenate(out)
            return acts

        acts_tr = np.stack([activations(x_tr, False), activations(x_tr, True)]
                           + [activations(x_tr, False, k + 1)
                              for k in range(AUGMENTED_VIEWS.get(recipe, 0))], axis=1)
        acts_ev = activations(x_ev, False)[:, None]
        act_seconds = time.time() - t0

    def train_data(size):
        ds = (tf.data.Dataset.from_tensor_slices((x_tr, labels(y_tr)))
              .shuffle(len(x_tr), seed=seed, reshuffle_each_iteration=True)
              .batch(BATCH).map(prep, num_parallel_calls=tf.data.AUTOTUNE)
              .map(lambda x, y: (dataset.augment(x, backbone.value_range), y),
                   num_parallel_calls=tf.data.AUTOTUNE))
        if size != SIZE:
            ds = ds.map(lambda x, y: (tf.image.resize(x, (size, size), antialias=True), y),
                        num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.finish(ds)

    # dataset.finish: prefetch with tf.data's autotuner off, as in the Trainer.
    eval_ds = dataset.finish(tf.data.Dataset.from_tensor_slices((x_ev, labels(y_ev)))
                             .batch(BATCH).map(prep).cache())
    val_ds = eval_ds if validation is None else dataset.finish(
        tf.data.Dataset.from_tensor_slices((validation[0], labels(validation[1])))
        .batch(BATCH).map(prep).cache())
    eval_flip = dataset.finish(tf.data.Dataset.from_tensor_slices(x_ev).batch(BATCH)
                               .map(lambda x: tf.image.flip_left_right(
                                   preprocessed(backbone, x))))

    t0 = time.time()
    start_acc = float(model.evaluate(eval_ds, verbose=0, return_dict=True)["accuracy"])
    start_seconds = time.time() - t0
    clock = model_lib.EpochClock()
    # The Trainer's unjudged warm-up for this schedule (1 epoch of warm-up).
    unjudged = model_lib.warmup_epochs_unjudged(TrainingConfig(fine_tune_epochs=epochs))
    callbacks = [clock] + ([model_lib.early_stopping(3)] if recipe in SEED_LIKE else []) + \
        ([model_lib.early_stopping(3, unjudged)] if validation is not None else [])
    t0 = time.time()
    # (epochs, training size) stages; the optimizer (and its schedule's step) carries over.
    stages = [(epochs, SIZE)] if low_size == SIZE else \
        [(epochs, low_size)] if low_epochs is None else \
        [(low_epochs, low_size), (epochs, SIZE)]
    h, done = {}, 0
    for until, size in stages:
        data = dict(x=acts_tr, y=labels(y_tr).numpy(), batch_size=BATCH, shuffle=True,
                    validation_data=(acts_ev, labels(y_ev).numpy())) \
            if recipe in ON_ACTIVATIONS else \
            dict(x=train_data(size), validation_data=val_ds)
        part = fitted.fit(epochs=until, initial_epoch=done, callbacks=callbacks, verbose=2,
                          **data).history
        for k, v in part.items():
            h.setdefault(k, []).extend(v)
        # EpochClock restarts with every fit(): shift its clock by the earlier stages.
        offset = h["epoch_end"][-1] if h.get("epoch_end") else 0.0
        h.setdefault("epoch_end", []).extend(round(t + offset, 2) for t in clock.seconds)
        done = until
    fit_seconds = time.time() - t0
    t0 = time.time()
    p = model.predict(eval_ds, verbose=0)
    pf = model.predict(eval_flip, verbose=0)
    predict_seconds = time.time() - t0
    epochs_run = len(h["val_loss"])
    acc = float(np.mean(p.argmax(1) == y_ev))
    out = {
        "accuracy": acc,
        "tta_accuracy": float(np.mean((p + pf).argmax(1) == y_ev)),
        "pred": p.argmax(1).tolist(),
        "start_accuracy": start_acc,  # == head_flip accuracy unless something is wrong
        "val_accuracy_curve": [round(float(v), 4) for v in h["val_accuracy"]],
        "val_loss_curve": [round(float(v), 4) for v in h["val_loss"]],
        "train_accuracy_curve": [round(float(v), 4) for v in h["accuracy"]],
        "epochs_run": epochs_run, "max_epochs": epochs,
        "epoch_end_seconds": h["epoch_end"],
        "fit_seconds": round(fit_seconds, 2),
        "seconds_per_epoch": round(fit_seconds / max(1, epochs_run), 2),
        "predict_tta_seconds": round(predict_seconds, 2),
        "start_eval_seconds": round(start_seconds, 2),
        "seconds": round(fit_seconds + predict_seconds + act_seconds, 2),
        "activation_seconds": round(act_seconds, 2),
        "activations_of": split.layer if recipe in ON_ACTIVATIONS else None,
        "unfrozen_layers": n_layers, "base_layers": len(base.layers),
        "trainable_layers_with_weights": with_weights,
        "trainable_base_params": trainable_base,
        "steps_per_epoch": steps,
        "train_size": low_size, "epochs_at_train_size": low_epochs or epochs,
    }
    if validation is not None:  # the epoch early stopping restored, as the Trainer reads it
        best = trainer.best({"val_loss": h["val_loss"], "val_accuracy": h["val_accuracy"],
                             "seconds": fit_seconds, "monitored_from_epoch": unjudged + 1})
        out.update({"best_epoch": best["epoch"], "best_val_loss": float(best["val_loss"]),
                    "best_val_accuracy": float(best["val_accuracy"]),
                    "validation_images": int(len(validation[1]))})
    if recipe in SEED_LIKE:
        best = int(np.argmin(h["val_loss"]))
        kept = h["val_loss"][best] < phase1_val_loss
        out.update({"best_epoch": best + 1, "best_val_loss": float(h["val_loss"][best]),
                    "phase1_val_loss": phase1_val_loss, "kept_by_trainer_rule": bool(kept),
                    "accuracy_trainer_rule": acc if kept else phase1_accuracy})
    return out


def nested(backbone, images, labels, feats, feats_flip, idx_tr, idx_ev, n_classes, seed,
           head_epochs) -> dict:
    """`trainer_10`: the Trainer's phase 1, phase 2 and keep rule inside one fold, validated
    on a split of the fold's training images; the test fold only scores (module docstring)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from components import trainer

    in_tr, in_val = train_test_split(idx_tr, test_size=0.2, random_state=seed,
                                     stratify=labels[idx_tr])
    y_tr, y_val, y_ev = labels[in_tr], labels[in_val], labels[idx_ev]
    head, phase1 = train_head(np.concatenate([feats[in_tr], feats_flip[in_tr]]),
                              np.concatenate([y_tr, y_tr]), feats[in_val], feats_flip[in_val],
                              y_val, n_classes, seed, head_epochs, smoothing=0.1)
    p1 = head.predict(feats[idx_ev], batch_size=256, verbose=0).argmax(1)
    res = phase2("full_10", backbone, head_weights(head), images[in_tr], y_tr, images[idx_ev],
                 y_ev, n_classes, seed, EPOCHS["full_10"], phase1["val_loss"],
                 float(np.mean(p1 == y_ev)), validation=(images[in_val], y_val))
    p2 = np.array(res["pred"])
    # The Trainer's own keep rules on each phase's validation metrics.
    keep_acc = trainer.phase2_kept("accuracy", phase1, _phase2_metrics(res))
    keep_loss = trainer.phase2_kept("val_loss", phase1, _phase2_metrics(res))
    chosen, by_loss = (p2 if keep_acc else p1), (p2 if keep_loss else p1)
    res.update({"pred": chosen.tolist(), "pred_phase1": p1.tolist(),
                "pred_phase2": p2.tolist(), "pred_val_loss_rule": by_loss.tolist(),
                "accuracy": float(np.mean(chosen == y_ev)),
                "accuracy_phase1": float(np.mean(p1 == y_ev)),
                "accuracy_phase2": float(np.mean(p2 == y_ev)),
                "accuracy_val_loss_rule": float(np.mean(by_loss == y_ev)),
                "phase1_val_loss": phase1["val_loss"],
                "phase1_val_accuracy": phase1["val_accuracy"],
                "phase1_epochs_run": phase1["epochs_run"],
                "kept_accuracy_rule": bool(keep_acc), "kept_val_loss_rule": bool(keep_loss),
                "train_images": int(len(in_tr))})
    return res


def _phase2_metrics(res: dict) -> dict:
    """A phase-2 result's validation metrics at its restored epoch, as trainer.best() names
    them (what trainer.phase2_kept compares)."""
    return {"val_loss": res["best_val_loss"], "val_accuracy": res["best_val_accuracy"]}


def nested_report(rows, ds, seed) -> list:
    """Pooled test accuracy of trainer_10's phases and keep rules for one fold seed."""
    from components import trainer

    runs = [r for r in rows if (r["dataset"], r["seed"], r["recipe"]) == (ds, seed, "trainer_10")]
    if not runs:
        return []
    n = sum(r["n_eval"] for r in runs)

    def rule(name):  # trainer.phase2_kept on the recorded validation metrics
        return lambda r: trainer.phase2_kept(
            name, {"val_loss": r["phase1_val_loss"], "val_accuracy": r["phase1_val_accuracy"]},
            _phase2_metrics(r))

    rules = {"phase 1": lambda r: False, "phase 2": lambda r: True,
             **{name: rule(name) for name in ("accuracy", "val_loss", "either")}}

    def pooled(keep):
        return 100 * sum(sum(int(p == y) for p, y in zip(
            r["pred_phase2"] if keep(r) else r["pred_phase1"], r["labels"])) for r in runs) / n

    return ["  trainer_10 (nested, %d folds): %s; phase 2 kept in %s folds; it ran %s epochs" % (
        len(runs), ", ".join("%s %.2f %%" % (k, pooled(f)) for k, f in rules.items()),
        "/".join("%d by %s" % (sum(bool(rules[k](r)) for r in runs), k)
                 for k in ("accuracy", "val_loss", "either")),
        ",".join(str(r["epochs_run"]) for r in runs))]


# ----------------------------------------------------------------------------- output
def machine() -> dict:
    return common.machine()


def save(doc, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def _stats(vals):
    import statistics
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return vals, statistics.mean(vals), min(vals), max(vals)


def _steady(r):
    """Seconds per epoch after the first (tracing) epoch, from the epoch-end clock."""
    t = r.get("epoch_end_seconds") or []
    return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of wins vs losses (ties dropped): McNemar's exact test."""
    from scipy.stats import binomtest
    return binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0


def replay_early_stopping(val_loss, patience: int = 3, monitor_from: int = 0) -> tuple[int, int]:
    """What the Trainer's early stopping (val_loss, `patience`, best weights restored, epochs
    before index `monitor_from` not judged) would have done on a run that trained every
    epoch: (restored epoch, epochs run), 1-based."""
    best, wait = monitor_from, 0
    for i in range(monitor_from + 1, len(val_loss)):
        if val_loss[i] < val_loss[best]:
            best, wait = i, 0
        else:
            wait += 1
            if wait >= patience:
                return best + 1, i + 1
    return best + 1, len(val_loss)


def early_stopping_report(rows, ds) -> list:
    """For the recipes that ran every epoch: pooled accuracy at the last epoch against the
    epoch early stopping would have restored (replayed from the recorded curves), judging
    every epoch and, as the Trainer does, every epoch after the 1-epoch warm-up. The eval
    fold both picks that epoch and scores it, so the replay is optimistic."""
    lines = []
    for rec in [r for r in PHASE2 if r in EPOCHS]:
        for seed in sorted({r["seed"] for r in rows if r["dataset"] == ds}):
            runs = [r for r in rows if (r["dataset"], r["seed"], r["recipe"]) == (ds, seed, rec)
                    and r.get("val_loss_curve")]
            if not runs:
                continue
            n = sum(r["n_eval"] for r in runs)
            final = sum(round(r["val_accuracy_curve"][-1] * r["n_eval"]) for r in runs)
            for rule, monitor_from in (("every epoch judged", 0), ("after warm-up", 1)):
                replays = [replay_early_stopping(r["val_loss_curve"], 3, monitor_from)
                           for r in runs]
                stopped = sum(round(r["val_accuracy_curve"][b - 1] * r["n_eval"])
                              for r, (b, _) in zip(runs, replays))
                lines.append("  %-12s seed %d: last epoch %.2f %%, early stopping (%s) %.2f %% "
                             "(restored epochs %s of %s run)" % (
                                 rec, seed, 100 * final / n, rule, 100 * stopped / n,
                                 ",".join(str(b) for b, _ in replays),
                                 ",".join(str(e) for _, e in replays)))
    if lines:
        lines.insert(0, "")
        lines.insert(1, "== %s: early stopping (val_loss, patience 3) replayed on the curves; "
                        "optimistic: the eval fold picks the epoch it scores ==" % ds)
    return lines


def cv_report(rows) -> list:
    """Cross-validation: per dataset and seed, each recipe's accuracy pooled over the folds
    (every image evaluated once), and paired per-image comparisons of the phase-2 recipes
    against each other and the baselines (images only A gets right / only B / p of the exact
    sign test)."""
    lines = []
    for ds in [d for d, _ in DATASETS if any(r["dataset"] == d for r in rows)]:
        per_seed = {}  # recipe -> [pooled accuracy of each seed]
        seeds = sorted({r["seed"] for r in rows if r["dataset"] == ds})
        for seed in seeds:
            correct = {}
            for r in rows:
                if r["dataset"] != ds or r["seed"] != seed or "pred" not in r:
                    continue
                labels = r.get("labels")
                hits = correct.setdefault(r["recipe"], {})
                for i, idx in enumerate(r["eval_index"]):
                    hits[idx] = r["pred"][i] == labels[i]
            if not correct:
                continue
            total = max(len(h) for h in correct.values())
            lines.append("")
            lines.append("== %s, seed %d: %d-image cross-validation ==" % (ds, seed, total))
            for rec in RECIPES:
                h = correct.get(rec)
                if h:
                    per_seed.setdefault(rec, []).append(100 * sum(h.values()) / len(h))
                    lines.append("  %-12s accuracy %.2f %% (%d/%d images evaluated)"
                                 % (rec, 100 * sum(h.values()) / len(h), sum(h.values()),
                                    len(h)))
            lines += nested_report(rows, ds, seed)
            for a, b in (("full", "seed"), ("full", "head_flip"), ("full", "logreg"),
                         ("seed", "head_flip"), ("full_10", "full"), ("full_10", "seed"),
                         ("half_10", "full_10"), ("half_10", "seed"),
                         ("half_10_nodw", "full_10"), ("half_10_nodw", "half_10"),
                         ("half_10_nodw_v4", "half_10_nodw"), ("half_10_nodw_v4", "full_10"),
                         ("half_10_nodw_v4pi", "half_10_nodw_v4"),
                         ("half_10_nodw_v4pi", "full_10"),
                         ("half_10_nodw_v6pi", "half_10_nodw_v4"),
                         ("half_10_nodw_v6pi", "half_10_nodw_v4pi"),
                         ("half_10_nodw_v6pi", "full_10"),
                         ("full_10_160", "full_10"), ("full_10_prog", "full_10"),
                         ("full_10_160", "seed"), ("full_15", "full_10"),
                         ("full_15", "seed"), ("seed_act", "seed"),
                         ("act_10_b2", "full_10"), ("act_10_b3", "full_10"),
                         ("act_10_b2", "seed"), ("act_10_b3", "seed")):
                ha, hb = correct.get(a), correct.get(b)
                if not ha or not hb:
                    continue
                common_idx = set(ha) & set(hb)
                wins = sum(ha[i] and not hb[i] for i in common_idx)
                losses = sum(hb[i] and not ha[i] for i in common_idx)
                lines.append("  %-7s vs %-9s %+.2f points on %d images: %d right only by %s, "
                             "%d only by %s (sign test p = %.3f)" % (
                                 a, b, 100 * (wins - losses) / len(common_idx), len(common_idx),
                                 wins, a, losses, b, _sign_test(wins, losses)))
        if len(seeds) > 1:
            lines.append("")
            lines.append("== %s: mean over seeds %s (each a full cross-validation) =="
                         % (ds, seeds))
            for rec in RECIPES:
                if len(per_seed.get(rec, [])) == len(seeds):
                    vals = per_seed[rec]
                    lines.append("  %-12s %.2f %% (%s)" % (rec, sum(vals) / len(vals),
                                                          ", ".join("%.2f" % v for v in vals)))
        lines += early_stopping_report(rows, ds)
    return lines


def report(doc) -> str:
    rows = doc.get("results", [])
    if any(r.get("fold") is not None for r in rows):
        return "\n".join(cv_report(rows))
    lines = []
    seeds = sorted({r["seed"] for r in rows})
    for ds in [d for d, _ in DATASETS if any(r["dataset"] == d for r in rows)]:
        feats = doc.get("features", {}).get(ds, {})
        lines.append("")
        lines.append("== %s (%s eval images per seed; seeds %s; frozen features of %s images "
                     "+ flips: %.0f s) ==" % (
                         ds, next((r["n_eval"] for r in rows if r["dataset"] == ds), "?"),
                         seeds, feats.get("images", "?"), feats.get("seconds", float("nan"))))
        lines.append("%-12s %4s  %-22s %-22s %-18s %-11s %s" % (
            "recipe", "n", "accuracy mean [min-max]", "TTA acc mean [min-max]",
            "seconds mean [min-max]", "s/ep all/2+", "epochs"))
        for rec in RECIPES:
            rs = [r for r in rows if r["dataset"] == ds and r["recipe"] == rec]
            if not rs:
                continue

            def fmt(key, scale=100.0, digits=1):
                st = _stats([r.get(key) for r in rs])
                if st == "-":
                    return "-"
                _, m, lo, hi = st
                return "%.*f [%.*f-%.*f]" % (digits, m * scale, digits, lo * scale,
                                             digits, hi * scale)

            spe = _stats([r.get("seconds_per_epoch") for r in rs])
            steady = _stats([_steady(r) for r in rs])
            spe = "-" if spe == "-" else "%.1f/%s" % (
                spe[1], "-" if steady == "-" else "%.1f" % steady[1])
            ep = ",".join(str(r.get("epochs_run", "")) for r in rs)
            lines.append("%-12s %4d  %-22s %-22s %-18s %-11s %s" % (
                rec, len(rs), fmt("accuracy"), fmt("tta_accuracy"),
                fmt("seconds", 1.0, 0), spe, ep))
            if rec == "seed":
                lines.append("%-12s %4s  %-22s (phase 2 kept in %d/%d runs)" % (
                    "seed+rule", "", fmt("accuracy_trainer_rule"),
                    sum(bool(r.get("kept_by_trainer_rule")) for r in rs), len(rs)))
        for rec in PHASE2:
            curves = [r["val_accuracy_curve"] for r in rows
                      if r["dataset"] == ds and r["recipe"] == rec]
            if curves:
                n = max(len(c) for c in curves)
                mean = []
                for i in range(n):
                    v = [c[i] for c in curves if len(c) > i]
                    mean.append("%.1f" % (100 * sum(v) / len(v)))
                lines.append("  %s per-epoch val accuracy (mean over seeds): %s"
                             % (rec, " ".join(mean)))
        lines.append("  paired differences (points, per seed):")
        for a, b, key in (("full", "seed", "accuracy"), ("full", "logreg", "accuracy"),
                          ("full", "head_flip", "accuracy"), ("half", "seed", "accuracy"),
                          ("full", "seed", "tta_accuracy"), ("full", "logreg", "tta_accuracy"),
                          ("full", "half", "accuracy")):
            diffs = []
            for s in seeds:
                ra = [r for r in rows if (r["dataset"], r["seed"], r["recipe"]) == (ds, s, a)]
                rb = [r for r in rows if (r["dataset"], r["seed"], r["recipe"]) == (ds, s, b)]
                if ra and rb:
                    diffs.append((s, 100 * (ra[0][key] - rb[0][key])))
            if diffs:
                m = sum(d for _, d in diffs) / len(diffs)
                lines.append("    %-5s - %-9s %-13s %s   mean %+.1f" % (
                    a, b, "(%s)" % ("TTA" if key == "tta_accuracy" else "acc"),
                    "  ".join("seed %d: %+.1f" % sd for sd in diffs), m))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 8 images per class, 1-2 epochs, output in /tmp")
    p.add_argument("--limit-per-class", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--datasets", nargs="+", default=[d for d, _ in DATASETS])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--full-epochs", type=int, default=6, help="epochs of full and half")
    p.add_argument("--seed-epochs", type=int, default=5)
    p.add_argument("--head-epochs", type=int, default=30)
    p.add_argument("--folds", type=int, default=0,
                   help="K > 1: stratified K-fold cross-validation (each image is evaluated "
                   "once per seed, by the models trained on the other folds) instead of one "
                   "80/20 split per seed")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true", help="keep and skip finished results")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.limit_per_class = args.limit_per_class or 8
        args.full_epochs, args.seed_epochs, args.head_epochs = 2, 2, 5
    out = args.out or ("/tmp/finetune_recipes_quick.json" if args.quick else RESULTS)

    if args.report_only:
        with open(out) as f:
            print(report(json.load(f)))
        return 0

    import numpy as np
    import tensorflow as tf  # noqa: F401
    from sklearn.model_selection import train_test_split

    from components.backbones import registry

    backbone = registry.get_backbone(BACKBONE)
    python = os.path.relpath(sys.executable, _REPO) if sys.executable.startswith(_REPO) \
        else sys.executable
    command = "cd %s && %s -m bench.finetune_recipes %s" % (
        _REPO, python, " ".join(shlex.quote(a) for a in sys.argv[1:]))
    doc = {"command": command.rstrip(),
           "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "config": {"backbone": BACKBONE, "image_size": SIZE, "batch_size": BATCH,
                      "seeds": args.seeds, "datasets": args.datasets,
                      "limit_per_class": args.limit_per_class,
                      "head_max_epochs": args.head_epochs, "seed_max_epochs": args.seed_epochs,
                      "full_half_epochs": args.full_epochs,
                      "split": "stratified %d-fold cross-validation" % args.folds
                      if args.folds > 1 else "stratified 80/20",
                      "validation": "the eval split (as the pipeline)",
                      "notes": "features (and their flips) computed once per dataset for all "
                               "images; splits are index subsets"},
           "features": {}, "results": []}
    if args.resume and os.path.exists(out):
        with open(out) as f:
            old = json.load(f)
        doc["results"] = old.get("results", [])
        doc["features"] = old.get("features", {})
        # The file's results came from every resumed run: keep their commands and seeds.
        doc["earlier_commands"] = old.get("earlier_commands", []) + [old["command"]]
        doc["config"]["seeds"] = sorted(set(old["config"]["seeds"]) | set(args.seeds))
    done = {(r["dataset"], r["seed"], r.get("fold"), r["recipe"]) for r in doc["results"]}
    paths = dict(DATASETS)
    cache = {}  # dataset -> (images, labels, classes, feats, feats_flip)

    def data(ds):
        if ds not in cache:
            t0 = time.time()
            files, labels, classes = list_images(paths[ds], args.limit_per_class)
            images = load_images(files)
            decode_s = time.time() - t0
            t0 = time.time()
            feats = pooled_features(backbone, images, flip=False)
            feats_flip = pooled_features(backbone, images, flip=True)
            feat_s = time.time() - t0
            doc["features"][ds] = {"images": len(files), "classes": classes,
                                   "decode_seconds": round(decode_s, 2),
                                   "seconds": round(feat_s, 2),
                                   "note": "all images + their flips, once per dataset"}
            print("[%s] %s: %d images decoded in %.1f s, features (+flips) in %.1f s"
                  % (time.strftime("%H:%M:%S"), ds, len(files), decode_s, feat_s), flush=True)
            cache[ds] = (images, np.array(labels), classes, feats, feats_flip)
        return cache[ds]

    def splits(labels, seed):
        """(fold, train indices, eval indices): one 80/20 split, or the K folds."""
        if args.folds > 1:
            from sklearn.model_selection import StratifiedKFold
            folds = StratifiedKFold(args.folds, shuffle=True, random_state=seed)
            return [(k, tr, ev) for k, (tr, ev) in
                    enumerate(folds.split(np.zeros(len(labels)), labels))]
        idx_tr, idx_ev = train_test_split(np.arange(len(labels)), test_size=0.2,
                                          random_state=seed, stratify=labels)
        return [(None, idx_tr, idx_ev)]

    folds = list(range(args.folds)) if args.folds > 1 else [None]
    for seed, ds in [(seed, ds) for seed in args.seeds for ds in args.datasets]:
        if all((ds, seed, fold, r) in done for fold in folds for r in args.recipes):
            continue  # nothing left: do not decode the images or compute their features
        images, labels, classes, feats, feats_flip = data(ds)
        for fold, idx_tr, idx_ev in splits(labels, seed):
            todo = [r for r in args.recipes if (ds, seed, fold, r) not in done]
            if not todo:
                continue
            n = len(classes)
            ytr, yev = labels[idx_tr], labels[idx_ev]
            ftr, ftrf, fev, fevf = feats[idx_tr], feats_flip[idx_tr], feats[idx_ev], \
                feats_flip[idx_ev]
            head_flip = None
            head_flip_res = None

            def record(recipe, res):
                res = {"dataset": ds, "seed": seed, "fold": fold, "recipe": recipe,
                       "n_train": int(len(idx_tr)), "n_eval": int(len(idx_ev)),
                       "eval_index": idx_ev.tolist(), "labels": yev.tolist(), **res,
                       "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                doc["results"] = [r for r in doc["results"]
                                  if (r["dataset"], r["seed"], r.get("fold"), r["recipe"])
                                  != (ds, seed, fold, recipe)]
                doc["results"].append(res)
                doc["updated"] = res["finished"]
                save(doc, out)
                print("[%s] seed %d fold %s %-11s %-11s acc %.3f  tta %.3f  %7.1f s%s" % (
                    time.strftime("%H:%M:%S"), seed, fold, ds, recipe, res["accuracy"],
                    res["tta_accuracy"], res["seconds"],
                    "  (%.1f s/epoch, %d epochs)" % (res["seconds_per_epoch"], res["epochs_run"])
                    if "seconds_per_epoch" in res else ""), flush=True)

            for recipe in todo:
                if recipe in NESTED:  # its own head, on its own validation split
                    record(recipe, nested(backbone, images, labels, feats, feats_flip, idx_tr,
                                          idx_ev, n, seed, args.head_epochs))
                elif recipe == "logreg":
                    record(recipe, train_logreg(ftr, ytr, fev, fevf, yev))
                elif recipe == "logreg_flip":
                    record(recipe, train_logreg(np.concatenate([ftr, ftrf]),
                                                np.concatenate([ytr, ytr]), fev, fevf, yev))
                elif recipe == "head":
                    record(recipe, train_head(ftr, ytr, fev, fevf, yev, n, seed,
                                              args.head_epochs)[1])
                elif recipe == "head_flip" or head_flip is None:
                    # phase-2 recipes start from this head (retrained, same seed, if skipped)
                    model, head_flip_res = train_head(
                        np.concatenate([ftr, ftrf]), np.concatenate([ytr, ytr]), fev, fevf,
                        yev, n, seed, args.head_epochs)
                    head_flip = head_weights(model)
                    if recipe == "head_flip":
                        record(recipe, head_flip_res)
                if recipe in PHASE2:
                    epochs = args.seed_epochs if recipe in SEED_LIKE else \
                        EPOCHS.get(recipe, args.full_epochs)
                    res = phase2(recipe, backbone, head_flip, images[idx_tr],
                                 ytr, images[idx_ev], yev, n, seed, epochs,
                                 head_flip_res["val_loss"], head_flip_res["accuracy"])
                    record(recipe, res)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save(doc, out)
    print(report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
