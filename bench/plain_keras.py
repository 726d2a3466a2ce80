"""The Trainer's recipe as a plain Keras script (no TFX, no Beam, no Transform component):
the baseline for the pipeline/plain wall-time ratio. Same TFRecords, same decode/resize/
preprocess ops, same model, and the very same training function (components.trainer.train:
phase 1 on cached features or on images, phase 2, early stopping, augmentation).

    .venv/bin/python -m bench.plain_keras --data TFRECORDS_DIR --json OUT.json [--save DIR] \
        [graft run flags]

Training flags are `graft run`'s (e.g. --recipe seed --no-feature-cache). --save DIR saves the
trained model as a plain script would deliver it (Keras SavedModel, no optimizer, layer traces
only when the Trainer's export needs them; no Transform signatures: there is no Transform
graph), timed apart as `save_seconds`.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import tensorflow as tf
import tf_keras

from components import dataset, image_ops, model as model_lib, trainer
from pipeline import configs


def make_ds(files, backbone, cfg, batch, training):
    spec = {cfg.image_key: tf.io.FixedLenFeature([], tf.string),
            cfg.label_key: tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(files).map(lambda s: tf.io.parse_single_example(s, spec)).cache()
    if training:
        ds = ds.shuffle(2048, seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(
        lambda f: (backbone.preprocess(image_ops.decode_resize(f[cfg.image_key],
                                                               cfg.input_size())),
                   f[cfg.label_key]),
        num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.finish(dataset.augmented(ds, training, cfg, backbone.value_range))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--save", default="", help="save the trained model to this directory")
    configs.add_config_arguments(p)
    args = p.parse_args()
    start = time.time()
    cfg = configs.from_args(args, data_dir=args.data,
                            label_names=configs.read_label_names(args.data),
                            output_dir="").training
    tf_keras.utils.set_random_seed(cfg.seed)
    backbone = cfg.get_backbone()
    train_files = sorted(glob.glob(os.path.join(args.data, "span-1/train/*")))
    eval_files = sorted(glob.glob(os.path.join(args.data, "span-1/eval/*")))
    batch = cfg.batch_size
    classifier = model_lib.build(backbone, cfg)
    strategy = tf.distribute.get_strategy()
    phase1, phase2 = trainer.train(
        classifier, cfg, strategy, batch, make_ds(train_files, backbone, cfg, batch, True),
        make_ds(eval_files, backbone, cfg, batch, False),
        lambda: make_ds(train_files, backbone, cfg, batch, False),
        lambda: sum(1 for _ in tf.data.TFRecordDataset(train_files)),
        count_labels=lambda: dataset.count_labels(train_files, cfg.label_key, cfg.num_classes,
                                                  compression_type=""))
    final = classifier.model.evaluate(make_ds(eval_files, backbone, cfg, batch, False),
                                      verbose=0, return_dict=True)
    save_seconds = 0.0
    if args.save:
        t0 = time.time()
        model_lib.save_for_serving(classifier.model, args.save)
        save_seconds = time.time() - t0
    best1, best2 = trainer.best(phase1), trainer.best(phase2)
    result = {"phase1_val_accuracy": best1.get("val_accuracy"),
              "phase2_val_accuracy": best2.get("val_accuracy"), "phase2_kept": best2.get("kept"),
              "phase2_label": phase2.get("phase"),
              "phase2_trainable_base_layers": phase2.get("trainable_base_layers"),
              "phase2_trainable_base_weights": len(classifier.base.trainable_weights),
              "phase2_epochs_run": best2.get("epochs_run"),
              "phase2_val_accuracy_per_epoch": phase2.get("val_accuracy"),
              "phase2_epoch_end_seconds": phase2.get("epoch_end_seconds"),
              "final_val_accuracy": float(final["accuracy"]),
              "phase1_seconds": round(phase1.get("seconds", 0), 1),
              "phase2_seconds": round(phase2.get("seconds", 0), 1),
              "feature_cache": phase1.get("feature_cache"),
              "class_weight": phase1.get("class_weight"),
              "save_seconds": round(save_seconds, 1),
              "total_seconds": round(time.time() - start, 1)}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
