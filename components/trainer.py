"""Trainer module: `run_fn`, the two-phase transfer learning that TFX's Trainer runs.

Reads the raw examples and maps the Transform graph over them (Transform ran with
materialize=False), trains phase 1 (frozen base, new head) and phase 2 (top layers
unfrozen, BatchNorm frozen, lower learning rate; its weights are kept only if it beats phase 1's
validation loss), and exports a SavedModel whose
signatures embed the same Transform graph. Writes `history.json`, `history.png`,
`training_summary.json` and TensorBoard logs to the model-run directory.
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

from components import dataset, distribution, model as model_lib, signatures
from components.backbones import registry
from components.training_config import TrainingConfig


def _fit(model, train_ds, eval_ds, epochs, patience, callbacks, phase):
    if epochs <= 0:
        return {}
    start = time.time()
    clock = model_lib.EpochClock()
    history = model.fit(train_ds, validation_data=eval_ds, epochs=epochs, verbose=2,
                        callbacks=callbacks + [clock, model_lib.early_stopping(patience)])
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    hist["seconds"] = time.time() - start
    hist["epoch_end_seconds"] = clock.seconds
    hist["phase"] = phase
    return hist


def _best(hist: dict) -> dict:
    """Metrics at the epoch whose weights early stopping restored (lowest val_loss)."""
    if not hist.get("val_loss"):
        return {}
    i = min(range(len(hist["val_loss"])), key=lambda j: hist["val_loss"][j])
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


def run_fn(fn_args) -> None:
    cfg = TrainingConfig.from_custom_config(fn_args.custom_config)
    tf_keras.utils.set_random_seed(cfg.seed)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    backbone = registry.get_backbone(cfg.backbone)
    size = cfg.input_size()
    strategy = distribution.choose_strategy()
    policy = distribution.configure_precision()
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    print("graft trainer: backbone=%s size=%d strategy=%s replicas=%d policy=%s batch=%d"
          % (backbone.name, size, type(strategy).__name__, strategy.num_replicas_in_sync,
             policy, global_batch))

    train_ds = dataset.make_dataset(fn_args.train_files, tf_transform_output, cfg, global_batch,
                                    training=True, value_range=backbone.value_range)
    eval_ds = dataset.make_dataset(fn_args.eval_files, tf_transform_output, cfg, global_batch,
                                   training=False)

    with strategy.scope():
        model, base = model_lib.build(backbone, cfg)
        model_lib.compile_for(model, cfg.learning_rate)
    log_dir = os.path.join(fn_args.model_run_dir, "logs")
    callbacks = [tf_keras.callbacks.TensorBoard(log_dir=log_dir)]
    patience = cfg.early_stopping_patience

    scratch = cfg.from_scratch
    phase1 = _fit(model, train_ds, eval_ds, cfg.epochs, patience, callbacks,
                  "from scratch" if scratch else "phase 1")
    phase2 = {}
    phase1_weights = model.get_weights()
    # From scratch every layer trained already: there is nothing left to fine-tune.
    if cfg.fine_tune_epochs > 0 and not scratch:
        with strategy.scope():
            unfrozen = model_lib.unfreeze_top(base, cfg.fine_tune_layers)
            model_lib.compile_for(model, cfg.fine_tune_learning_rate)
        print("graft trainer: phase 2 with %d trainable base layers" % unfrozen)
        phase2 = _fit(model, train_ds, eval_ds, cfg.fine_tune_epochs, patience,
                      callbacks, "phase 2")
    if phase2 and _best(phase2).get("val_loss", float("inf")) > _best(phase1)["val_loss"]:
        # Fine-tuning never makes the model worse: keep phase 1's weights.
        model.set_weights(phase1_weights)
        phase2["kept"] = False
        print("graft trainer: phase 2 did not beat phase 1's validation loss; keeping phase 1")
    elif phase2:
        phase2["kept"] = True
    final = model.evaluate(eval_ds, verbose=0, return_dict=True)

    summary = {"backbone": backbone.name, "image_size": size, "global_batch": global_batch,
               "init": "random" if scratch else str(cfg.weights),
               "strategy": type(strategy).__name__, "precision": policy,
               "phase1": _best(phase1), "phase2": _best(phase2),
               "final_val_accuracy": float(final["accuracy"]),
               "final_val_loss": float(final["loss"])}
    # Saving is collective under MultiWorkerMirroredStrategy: every worker saves, the chief
    # to the real location, the others to a throwaway directory.
    sigs = signatures.make_signatures(model, tf_transform_output, cfg)
    save_dir = distribution.save_path(fn_args.serving_model_dir)
    model.save(save_dir, save_format="tf", signatures=sigs)
    if not distribution.is_chief():
        shutil.rmtree(save_dir, ignore_errors=True)
        return
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        json.dump({"phase1": phase1, "phase2": phase2}, f, indent=1)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "training_summary.json"),
                           "w") as f:
        json.dump(summary, f, indent=1)
    plot_history([phase1, phase2], os.path.join(fn_args.model_run_dir, "history.png"))
    print("graft trainer: %s" % json.dumps(summary))
