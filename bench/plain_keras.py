"""The pipeline's two-phase training as a plain Keras script (no TFX, no Beam, no Transform):
the baseline for the pipeline/plain wall-time ratio. Same TFRecords, same decode/resize/
preprocess ops, same model, phases, early stopping and augmentation as the Trainer.

    .venv/bin/python -m bench.plain_keras --data TFRECORDS_DIR --json OUT.json
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

from components import dataset, image_ops, model as model_lib
from components.backbones import registry
from pipeline import configs


def make_ds(files, backbone, size, batch, training, cfg):
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(files).map(lambda s: tf.io.parse_single_example(s, spec)).cache()
    if training:
        ds = ds.shuffle(2048, seed=cfg["seed"])
    ds = ds.batch(batch).map(
        lambda f: (backbone.preprocess(image_ops.decode_resize(f["image"], size)), f["label"]),
        num_parallel_calls=tf.data.AUTOTUNE)
    if training and cfg["augment"]:
        ds = ds.map(lambda x, y: (dataset.augment(x, backbone.value_range), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--json", required=True)
    args = p.parse_args()
    start = time.time()
    cfg = configs.PipelineConfig(label_names=tuple(
        open(os.path.join(args.data, "labels.txt")).read().split())).component_config()
    tf_keras.utils.set_random_seed(cfg["seed"])
    backbone = registry.get_backbone(cfg["backbone"])
    size = backbone.resolve_size(cfg["image_size"])
    train = make_ds(sorted(glob.glob(os.path.join(args.data, "span-1/train/*"))), backbone, size,
                    cfg["batch_size"], True, cfg)
    val = make_ds(sorted(glob.glob(os.path.join(args.data, "span-1/eval/*"))), backbone, size,
                  cfg["batch_size"], False, cfg)
    model, base = model_lib.build(backbone, cfg, size)
    model_lib.compile_for(model, cfg["learning_rate"])
    stop = model_lib.early_stopping(cfg["early_stopping_patience"])
    t1 = time.time()
    model.fit(train, validation_data=val, epochs=cfg["epochs"], callbacks=[stop], verbose=2)
    acc1 = model.evaluate(val, verbose=0, return_dict=True)["accuracy"]
    t2 = time.time()
    model_lib.unfreeze_top(base, cfg["fine_tune_layers"])
    model_lib.compile_for(model, cfg["fine_tune_learning_rate"])
    model.fit(train, validation_data=val, epochs=cfg["fine_tune_epochs"],
              callbacks=[model_lib.early_stopping(cfg["early_stopping_patience"])], verbose=2)
    acc2 = model.evaluate(val, verbose=0, return_dict=True)["accuracy"]
    t3 = time.time()
    result = {"phase1_val_accuracy": acc1, "phase2_val_accuracy": acc2,
              "phase1_seconds": round(t2 - t1, 1), "phase2_seconds": round(t3 - t2, 1),
              "total_seconds": round(t3 - start, 1)}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
