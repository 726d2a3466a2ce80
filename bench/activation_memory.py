"""Benchmark: the memory phase 2's cached activations cost, fed as before (float32 numpy
arrays to fit(), which copies them into a tensor and again into its dataset) and as now
(float16 arrays, batches gathered by components.dataset.gathered).

One child process per way (a fresh process, so each peak is its own): it makes the training
images' activations as the feature cache keeps them for Lite0's default cut (block4c_add at
224 px: 14 x 14 x 80 per view) for N images x V views (random values: the bytes are what
matter), the eval images' (float32, one view), and trains a small model on top of
components.model.RandomView for 2 epochs. Reported per way: the arrays' bytes, the process's
resident memory before the arrays, and its peak (VmHWM) over the arrays and the fit.

    .venv/bin/python -m bench.activation_memory [--images 2934] [--views 4]

Writes bench/results/activation_memory.json. Defaults: the held-out flowers training set of
issue #11 (2,934 photos) with the default's four views (original, flip, two augmented).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from bench import common

WAYS = ("numpy_float32", "gathered_float16")


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))


def child(way: str, images: int, views: int, eval_images: int) -> dict:
    import numpy as np
    import tf_keras

    from components import dataset, model as model_lib

    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM from here
        f.write("5")
    rng = np.random.default_rng(0)
    dtype = np.float32 if way == "numpy_float32" else np.float16
    train = np.empty((images, views, 14, 14, 80), dtype)
    for i in range(0, images, 256):  # filled in slices: no float32 temporary of it all
        train[i:i + 256] = rng.standard_normal(train[i:i + 256].shape, np.float32)
    evals = rng.standard_normal((eval_images, 1, 14, 14, 80), np.float32)
    labels, eval_labels = np.arange(images) % 5, np.arange(eval_images) % 5
    inputs = tf_keras.Input((None, 14, 14, 80))
    x = tf_keras.layers.GlobalAveragePooling2D()(model_lib.RandomView()(inputs))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(5, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    if way == "numpy_float32":
        model.fit(train, labels, batch_size=32, epochs=2, verbose=0, shuffle=True,
                  validation_data=(evals, eval_labels))
    else:
        model.fit(dataset.finish(dataset.gathered(train, labels, 32, True, 42)), epochs=2,
                  verbose=0, validation_data=dataset.finish(
                      dataset.gathered(evals, eval_labels, 32, False, 42)))
    return {"arrays_mb": round((train.nbytes + evals.nbytes) / 2**20, 1),
            "rss_before_mb": round(before, 1), "peak_mb": round(_status("VmHWM"), 1),
            "peak_over_before_mb": round(_status("VmHWM") - before, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2934)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--eval-images", type=int, default=736)
    p.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.images, args.views, args.eval_images)))
        return 0
    result = {"machine": common.machine(),
              "command": " ".join(["python -m bench.activation_memory"] + sys.argv[1:]),
              "images": args.images, "views": args.views, "eval_images": args.eval_images,
              "ways": {}}
    for way in WAYS:
        out = subprocess.run([sys.executable, "-m", "bench.activation_memory", "--child", way,
                              "--images", str(args.images), "--views", str(args.views),
                              "--eval-images", str(args.eval_images)],
                             capture_output=True, text=True, check=True, cwd=common.REPO)
        result["ways"][way] = json.loads(out.stdout.strip().splitlines()[-1])
        print(way, result["ways"][way], flush=True)
    ways = result["ways"]
    result["saved_mb"] = round(ways["numpy_float32"]["peak_over_before_mb"]
                               - ways["gathered_float16"]["peak_over_before_mb"], 1)
    print("wrote", common.write_json("activation_memory.json", result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
