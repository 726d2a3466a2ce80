"""Trainer module: `run_fn`, the two-phase transfer learning that TFX's Trainer runs.

Reads the raw examples and maps the Transform graph over them (Transform ran with
materialize=False). Phase 1 trains a new head on the frozen base: on features the base
computes once per image (components/feature_cache.py; `feature_cache=False` trains on the
images every epoch instead). Phase 2 fine-tunes the top `fine_tune_count` layers of the base
(BatchNorm frozen, and the depthwise kernels with `freeze_depthwise`) with its own optimizer
and schedule (model.py), each batch's gradient summed over micro-batches (`micro_batch_size`,
less memory, the same update), on what the cache kept (`activation_cache`; without it, or over
its budget, on the image files): for a partial fine-tune with
`fine_tune_input='activations'` (the default, and `--recipe seed`), the activations where the
frozen bottom ends, for each image, its flip and `augmented_views` augmented copies; else the
images decoded and transformed, augmented every epoch. Its weights are kept
unless it did worse than phase 1 on both validation loss and accuracy (`keep_phase2`; the
seed's rule: unless its validation loss is higher). `class_weight='balanced'` weighs both
phases' training loss by inverse class frequency (components/class_weights.py; counts from the
cached training labels, or one pass over the training records' labels without the cache).
Exports a SavedModel (without optimizer state) whose signatures embed the same Transform
graph. Writes
`history.json`, `history.png`, `training_summary.json` and TensorBoard logs to the model-run
directory.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras

from components import (
    class_weights,
    dataset,
    distribution,
    feature_cache,
    model as model_lib,
    progress,
    signatures,
)
from components.training_config import TrainingConfig


def _fit(model, train, eval_data, epochs, patience, callbacks, phase, batch_size=None,
         class_weight=None, monitor_from=0):
    """fit() with early stopping (best weights restored; epochs before index `monitor_from`
    not judged) and a per-epoch clock; `train` is a dataset, or (features, labels) arrays for
    phase 1 on cached features. class_weight: {label id: loss weight} of the training
    examples (the validation loss is unweighted)."""
    if epochs <= 0:
        return {}
    start = time.time()
    clock = model_lib.EpochClock()
    inputs = dict(x=train[0], y=train[1], batch_size=batch_size, shuffle=True) \
        if isinstance(train, tuple) else dict(x=train)
    history = model.fit(**inputs, validation_data=eval_data, epochs=epochs, verbose=2,
                        class_weight=class_weight,
                        callbacks=callbacks + [clock, model_lib.early_stopping(patience,
                                                                               monitor_from)]
                        + progress.callbacks(phase))
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    hist["seconds"] = time.time() - start
    hist["epoch_end_seconds"] = clock.seconds
    hist["phase"] = phase
    hist["monitored_from_epoch"] = monitor_from + 1
    return hist


def best(hist: dict) -> dict:
    """Metrics at the epoch whose weights early stopping restored (lowest val_loss among the
    epochs it judged)."""
    if not hist.get("val_loss"):
        return {}
    first = min(hist.get("monitored_from_epoch", 1), len(hist["val_loss"])) - 1
    i = min(range(first, len(hist["val_loss"])), key=lambda j: hist["val_loss"][j])
    return {"epoch": i + 1, "epochs_run": len(hist["val_loss"]),
            "val_loss": hist["val_loss"][i], "val_accuracy": hist["val_accuracy"][i],
            "seconds": hist["seconds"], "kept": hist.get("kept", True),
            "label": hist.get("phase", "")}


def plot_history(histories: list, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    offset = 0
    for hist in histories:
        if not hist.get("loss"):
            continue
        epochs = [offset + i + 1 for i in range(len(hist["loss"]))]
        for ax, key in zip(axes, ("loss", "accuracy")):
            ax.plot(epochs, hist[key], marker="o", label="%s train" % hist["phase"])
            ax.plot(epochs, hist["val_" + key], marker="s", label="%s validation" % hist["phase"])
        offset = epochs[-1]
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    with tf.io.gfile.GFile(path, "wb") as f:  # works on gs:// too
        f.write(buf.getvalue())


def train(classifier, cfg: TrainingConfig, strategy, global_batch: int, train_ds, eval_ds,
          unaugmented_train, count_train, callbacks=(), count_labels=None,
          cache=None) -> tuple[dict, dict]:
    """Phase 1 then phase 2 on `classifier`; returns their histories ({} for a skipped phase).

    train_ds: augmented, shuffled training batches; eval_ds: eval batches;
    unaugmented_train(): the training batches in file order without augmentation (feature
    cache); count_train(): the number of training examples (the schedule's length without the
    cache); count_labels(): training examples per class, needed for class_weight 'balanced'
    without the feature cache (with it, the cached labels are counted); cache: a
    feature_cache.Cache computed already (benchmarks reuse one across runs). Both phases weigh
    the loss by class_weights.for_mode(cfg.class_weight, counts), recorded in
    phase1["class_weight"]. Also what bench/plain_keras.py runs, so both train the very same
    recipe.
    """
    model, base = classifier.model, classifier.base
    callbacks = list(callbacks)
    patience = cfg.early_stopping_patience
    scratch = cfg.from_scratch
    value_range = cfg.get_backbone().value_range
    if cfg.feature_cache and not scratch:
        # Phase 1: the frozen base once per image (and flip), the head on the features.
        if cache is None:
            # Phase 2's input from the same pass: the images (decoded and transformed), or the
            # activations of a partial fine-tune's frozen bottom (fine_tune_input).
            keep = cfg.activation_cache and cfg.fine_tune_epochs > 0
            split = model_lib.frozen_split(classifier, cfg.fine_tune_count(len(base.layers))) \
                if keep and cfg.fine_tune_input == "activations" else None
            cache = feature_cache.Cache(model_lib.feature_extractor(classifier),
                                        unaugmented_train(), eval_ds, flip=cfg.augment,
                                        split=split, images=keep,
                                        augmented=cfg.augmented_views if cfg.augment else 0,
                                        value_range=value_range)
        print("graft trainer: feature cache %s" % json.dumps(cache.describe()))
        # Every view of every training image is in the cache: the same proportions.
        counts = [c // cache.views for c in class_weights.label_counts(cache.train_y,
                                                                       cfg.num_classes)]
        weights = class_weights.for_mode(cfg.class_weight, counts)
        with strategy.scope():
            for trained in (classifier.head, model):  # the model too: evaluated at the end
                model_lib.compile_for(trained, cfg.learning_rate, cfg)
        phase1 = _fit(classifier.head, (cache.train_x, cache.train_y),
                      (cache.eval_x, cache.eval_y), cfg.epochs, patience, callbacks, "phase 1",
                      batch_size=global_batch, class_weight=weights)
        phase1["seconds"] = phase1.get("seconds", 0.0) + cache.seconds  # {} at 0 epochs
        phase1["feature_cache"] = cache.describe()
        train_examples = cache.train_examples
    else:
        counts = None
        if cfg.class_weight != "none":
            if count_labels is None:
                raise ValueError("class_weight %r without the feature cache needs "
                                 "count_labels" % cfg.class_weight)
            counts = list(count_labels())
        weights = class_weights.for_mode(cfg.class_weight, counts)
        with strategy.scope():
            model_lib.compile_for(model, cfg.learning_rate, cfg)
        phase1 = _fit(model, train_ds, eval_ds, cfg.epochs, patience, callbacks,
                      "from scratch" if scratch else "phase 1", class_weight=weights)
        train_examples = count_train() if cfg.fine_tune_epochs > 0 and not scratch else 0
    if counts is not None:
        phase1["class_weight"] = class_weights.describe(cfg.class_weight, counts,
                                                        cfg.label_names)
    else:
        phase1["class_weight"] = {"mode": cfg.class_weight}
    phase2 = {}
    phase1_weights = model.get_weights()
    # From scratch every layer trained already: there is nothing left to fine-tune.
    if cfg.fine_tune_epochs > 0 and not scratch:
        # On what the cache kept (the frozen bottom's activations or the transformed images),
        # else on the image files.
        cached = cfg.feature_cache and cfg.activation_cache and cache is not None \
            and cache.phase2_input is not None
        split = cache.split if cached else None
        with strategy.scope():
            unfrozen = model_lib.unfreeze_top(base, cfg.fine_tune_count(len(base.layers)),
                                              cfg.freeze_depthwise)
            rate = model_lib.learning_rate(cfg, model_lib.steps(train_examples, global_batch))
            trained = model if split is None else \
                model_lib.on_activations(classifier, split)
            # Trains `model`'s own layers, in slices of micro_batch_size images per replica.
            fitted = model_lib.micro_batched(trained, cfg.micro_batch_size, cfg.batch_size)
            model_lib.compile_for(fitted, model_lib.optimizer(
                cfg.fine_tune_optimizer, rate, cfg.weight_decay), cfg)
        label = model_lib.phase2_label(base)
        slices = getattr(fitted, "micro_batch_size", 0)
        print("graft trainer: %s with %d of %d base layers trainable (%s, %s, peak "
              "learning rate %g%s)" % (label, unfrozen, len(base.layers), cfg.fine_tune_optimizer,
                                       cfg.fine_tune_schedule, cfg.fine_tune_learning_rate,
                                       ", gradients in slices of %d" % slices if slices else ""))
        n = cache.train_examples if cached else 0
        if not cached:
            data = dict(train=train_ds, eval_data=eval_ds)
        elif split is None:  # the cached images, augmented as the files' are
            print("graft trainer: phase 2 on the cached images (%s)"
                  % json.dumps(cache.describe()["images"]))
            data = dict(train=dataset.from_arrays(cache.train_in, cache.train_y[:n],
                                                  global_batch, True, cfg, value_range),
                        eval_data=dataset.from_arrays(cache.eval_in, cache.eval_y,
                                                      global_batch, False, cfg))
        else:  # one cached view of each image at random (original, flip, augmented copies)
            print("graft trainer: phase 2 on the cached activations of %s (%s)"
                  % (split.layer, json.dumps(cache.describe()["activations"])))
            # Batches gathered from the cache's arrays: fit() on numpy arrays converts them
            # to float32 tensors and copies those into its dataset (2,934 images x 4 views:
            # 2.19 GB over the start against 0.56 GB, bench/results/activation_memory.json).
            data = dict(train=dataset.finish(dataset.gathered(
                cache.train_in, cache.train_y[:n], global_batch, True, cfg.seed)),
                eval_data=dataset.finish(dataset.gathered(
                    cache.eval_in, cache.eval_y, global_batch, False, cfg.seed)))
        phase2 = _fit(fitted, epochs=cfg.fine_tune_epochs, patience=patience,
                      callbacks=callbacks, phase=label, class_weight=weights,
                      monitor_from=model_lib.warmup_epochs_unjudged(cfg), **data)
        phase2["input"] = cache.phase2_input if cached else "images"
        phase2["trainable_base_layers"] = unfrozen
        phase2["micro_batch_size"] = slices
    if phase2 and not phase2_kept(cfg.keep_phase2, best(phase1), best(phase2)):
        # Fine-tuning never makes the model worse on validation: keep phase 1's weights.
        model.set_weights(phase1_weights)
        phase2["kept"] = False
        print("graft trainer: phase 2 did worse than phase 1 on validation %s; keeping phase 1"
              % {"either": "loss and accuracy", "accuracy": "accuracy",
                 "val_loss": "loss"}[cfg.keep_phase2])
    elif phase2:
        phase2["kept"] = True
    if phase2:
        phase2["keep_rule"] = cfg.keep_phase2
    return phase1, phase2


def final_metrics(phase1: dict, phase2: dict) -> dict:
    """The exported weights' validation loss and accuracy without another pass over the eval
    images: early stopping restored the weights of the kept phase's best() epoch, which were
    scored on the eval split at the end of that epoch (on cached features or activations: the
    model's own outputs within 1e-5). {} when no phase ran."""
    kept = phase2 if phase2.get("kept") else phase1
    at = best(kept)
    if not at:
        return {}
    return {"loss": at["val_loss"], "accuracy": at["val_accuracy"],
            "source": "%s, epoch %d" % (at["label"] or "phase", at["epoch"])}


def phase2_kept(rule: str, phase1: dict, phase2: dict) -> bool:
    """Whether phase 2's weights replace phase 1's, from each phase's best() metrics.
    'either' (the default): unless phase 2 is worse on both validation loss and accuracy;
    'accuracy': unless its accuracy is lower; 'val_loss': unless its loss is higher (the
    seed's rule). Ties keep phase 2. Phase 2 is the better model on average (nested 5-fold
    cross-validation, bench/finetune_recipes.py `trainer_10`), and with label smoothing a
    fine-tuned model can be more accurate at a higher loss (it is more confident, and pays
    more for its few mistakes: mri-dev's pipeline benchmark dropped a more accurate phase 2
    over a 0.009 higher loss), so phase 1 wins only when both measures say so. Without phase 1
    metrics, phase 2."""
    if not phase1 or not phase2:
        return bool(phase2)
    by_loss = phase2["val_loss"] <= phase1["val_loss"]
    by_accuracy = phase2["val_accuracy"] >= phase1["val_accuracy"]
    return {"either": by_loss or by_accuracy, "accuracy": by_accuracy,
            "val_loss": by_loss}[rule]


def run_fn(fn_args) -> None:
    clock = {"start": time.time()}
    cfg = TrainingConfig.from_custom_config(fn_args.custom_config)
    tf_keras.utils.set_random_seed(cfg.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    backbone = cfg.get_backbone()
    size = cfg.input_size()
    strategy = distribution.choose_strategy()
    policy = distribution.configure_precision()
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    print("graft trainer: backbone=%s size=%d strategy=%s replicas=%d policy=%s batch=%d"
          % (backbone.name, size, type(strategy).__name__, strategy.num_replicas_in_sync,
             policy, global_batch))

    def images(files, training):
        return dataset.make_dataset(files, tf_transform_output, cfg, global_batch,
                                    training=training, value_range=backbone.value_range)

    train_ds, eval_ds = images(fn_args.train_files, True), images(fn_args.eval_files, False)
    with strategy.scope():
        classifier = model_lib.build(backbone, cfg)
    model = classifier.model
    scratch = cfg.from_scratch
    clock["built"] = time.time()
    callbacks = [tf_keras.callbacks.TensorBoard(log_dir=os.path.join(fn_args.model_run_dir,
                                                                     "logs"))]
    phase1, phase2 = train(classifier, cfg, strategy, global_batch, train_ds, eval_ds,
                           lambda: images(fn_args.train_files, False),
                           lambda: dataset.count_examples(fn_args.train_files), callbacks,
                           count_labels=lambda: dataset.count_labels(
                               fn_args.train_files, cfg.label_key, cfg.num_classes))
    clock["trained"] = time.time()
    final = final_metrics(phase1, phase2) or model.evaluate(eval_ds, verbose=0,
                                                            return_dict=True)
    clock["evaluated"] = time.time()

    summary = {"backbone": backbone.name, "image_size": size, "global_batch": global_batch,
               "init": "random" if scratch else str(cfg.weights), "recipe": cfg.recipe,
               "feature_cache": phase1.get("feature_cache"),
               "class_weight": phase1.get("class_weight"),
               "strategy": type(strategy).__name__, "precision": policy,
               "phase1": best(phase1), "phase2": best(phase2),
               "final_val_accuracy": float(final["accuracy"]),
               "final_val_source": final.get("source", "evaluated after training"),
               "eval_examples": dataset.count_examples(fn_args.eval_files),
               "final_val_loss": float(final["loss"])}
    # Asked before make_signatures attaches the Transform layer (tracked, outside the model's
    # config: Keras loads the model without its traces).
    layer_traces = model_lib.needs_layer_traces(model)
    summary["layer_traces"] = layer_traces
    sigs = signatures.make_signatures(model, tf_transform_output, cfg)
    # Saving is collective under MultiWorkerMirroredStrategy: every worker saves, the chief
    # to the real location, the others to a throwaway directory.
    save_dir = distribution.save_path(fn_args.serving_model_dir)
    model_lib.save_for_serving(model, save_dir, sigs, layer_traces)
    clock["saved"] = time.time()
    if not distribution.is_chief():
        shutil.rmtree(save_dir, ignore_errors=True)
        return
    # Where the Trainer's time went (the floor is the features plus the phases' epochs).
    summary["seconds"] = {
        "setup_and_build": round(clock["built"] - clock["start"], 1),
        "features": round((phase1.get("feature_cache") or {}).get("seconds", 0.0), 1),
        "phase1": round(phase1.get("seconds", 0.0), 1),
        "phase2": round(phase2.get("seconds", 0.0), 1),
        "train": round(clock["trained"] - clock["built"], 1),
        "final_evaluate": round(clock["evaluated"] - clock["trained"], 1),
        "export": round(clock["saved"] - clock["evaluated"], 1)}
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        json.dump({"phase1": phase1, "phase2": phase2}, f, indent=1)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "training_summary.json"),
                           "w") as f:
        json.dump(summary, f, indent=1)
    plot_history([phase1, phase2], os.path.join(fn_args.model_run_dir, "history.png"))
    print("graft trainer: %s" % json.dumps(summary))
