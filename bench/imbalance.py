"""Does --class-weight balanced help when one class is rare? flowers-dev, one class cut to 20 %.

`graft make-tfrecords` splits flowers-dev 80/20 (the pipeline's own split). The frozen
EfficientNet-Lite0 features of every training image and its horizontal flip, and of every eval
image, are computed once (components/feature_cache.py, exactly what the Trainer caches). Then
for each class in turn as the small one, and each seed: that class keeps a random 20 % of its
training images (the seed picks them; eval is untouched, so the small class is scored on all
its eval images), and the Trainer's own `components.trainer.train()` trains phase 1 (the head
on the cached features: Adam 1e-3, label smoothing 0.1, early stopping on the eval loss, the
defaults) twice from the same initial weights: `class_weight='none'` and `'balanced'`.
Recorded per run: the small class's recall and precision on eval, overall accuracy, balanced
accuracy (mean per-class recall), the weights used. Phase 2 (fine-tuning on images) is not
run by default: 6 epochs x 25 s x 30 runs would not fit the shared 2-core machine
(`--fine-tune-epochs` is not offered; phase 2 gets the same weights, components/trainer.py).

    .venv/bin/python -m bench.imbalance                 # -> bench/results/imbalance.json
    .venv/bin/python -m bench.imbalance --small tulips --seeds 1   # one class, one seed
    .venv/bin/python -m bench.imbalance --control       # + the uncut data (adds "control")

Skips (exit 0) when ../shared/data/flowers-dev is absent.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import shlex
import sys
import time

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from bench import common

FRACTION = 0.2
MODES = ("none", "balanced")


def _stats(values) -> dict:
    return {"mean": round(sum(values) / len(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


def evaluate(head, cache, small: int, num_classes: int) -> dict:
    import numpy as np
    pred = head.predict(cache.eval_x, batch_size=256, verbose=0).argmax(axis=1)
    y = cache.eval_y
    recall = [float((pred[y == c] == c).mean()) for c in range(num_classes)]
    predicted_small = pred == small
    precision = float((y[predicted_small] == small).mean()) if predicted_small.any() else 0.0
    return {"small_recall": round(recall[small], 4), "small_precision": round(precision, 4),
            "accuracy": round(float((pred == y).mean()), 4),
            "balanced_accuracy": round(float(np.mean(recall)), 4),
            "recall": [round(r, 4) for r in recall]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/graft-bench-imbalance")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--small", nargs="*", default=None,
                   help="classes cut to --fraction, one at a time (default: every class)")
    p.add_argument("--fraction", type=float, default=FRACTION)
    p.add_argument("--out", default="imbalance.json")
    p.add_argument("--control", action="store_true",
                   help="only the control: the uncut training data, both modes, every seed; "
                        "stored as 'control' in the existing --out file")
    args = p.parse_args()
    work = common.flowers_work_dir(args.work)
    if work is None:
        return 0
    data = common.flowers_tfrecords(work)

    import numpy as np
    import tensorflow as tf
    import tf_keras

    from bench.plain_keras import make_ds
    from components import feature_cache, model as model_lib, trainer
    from components.backbones import registry
    from components.training_config import TrainingConfig
    from pipeline import configs

    names = configs.read_label_names(str(data))
    base_cfg = TrainingConfig(label_names=names, fine_tune_epochs=0)
    backbone = registry.get_backbone(base_cfg.backbone)
    train_files = sorted(glob.glob(os.path.join(data, "span-1/train/*")))
    eval_files = sorted(glob.glob(os.path.join(data, "span-1/eval/*")))
    batch = base_cfg.batch_size
    start = time.time()
    extractor = model_lib.feature_extractor(model_lib.build(backbone, base_cfg))
    cache = feature_cache.Cache(extractor, make_ds(train_files, backbone, base_cfg, batch, False),
                                make_ds(eval_files, backbone, base_cfg, batch, False), flip=True)
    print("features: %s" % cache.describe(), flush=True)
    n_train = cache.train_examples
    labels = cache.train_y[:n_train]
    small_classes = [names.index(s) for s in args.small] if args.small else range(len(names))
    if args.control:
        return control(args, names, cache, base_cfg, backbone, batch, start)
    result = {"machine": common.machine(),
              "command": "python -m bench.imbalance " + shlex.join(sys.argv[1:]),
              "data": {"train": class_counts(labels, names),
                       "eval": class_counts(cache.eval_y, names)},
              "fraction": args.fraction, "seeds": args.seeds,
              "feature_seconds": round(cache.seconds, 1),
              "setup": "phase 1 only (head on cached Lite0 features + flips, 224 px, defaults "
                       "of TrainingConfig), fine_tune_epochs=0; eval split untouched",
              "runs": []}
    for small in small_classes:
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            members = np.flatnonzero(labels == small)
            kept_small = rng.choice(members, size=max(1, round(args.fraction * len(members))),
                                    replace=False)
            keep = np.sort(np.concatenate([np.flatnonzero(labels != small), kept_small]))
            subset = cache.subset(keep)
            for mode in MODES:
                cfg = dataclasses.replace(base_cfg, class_weight=mode, seed=seed)
                tf_keras.backend.clear_session()
                tf_keras.utils.set_random_seed(seed)
                classifier = model_lib.build(backbone, cfg)
                t0 = time.time()
                phase1, _ = trainer.train(
                    classifier, cfg, tf.distribute.get_strategy(), batch, None, None,
                    lambda: None, lambda: len(keep), cache=subset)
                row = {"small_class": names[small], "seed": seed, "class_weight": mode,
                       "small_train_images": int(len(kept_small)),
                       "largest_over_smallest": round(
                           max(np.bincount(labels[keep])) / len(kept_small), 2),
                       "weights": phase1["class_weight"].get("weights"),
                       "epochs_run": len(phase1.get("loss", [])),
                       "seconds": round(time.time() - t0, 1),
                       **evaluate(classifier.head, subset, small, len(names))}
                result["runs"].append(row)
                print("%(small_class)s seed %(seed)d %(class_weight)-8s small recall "
                      "%(small_recall).3f precision %(small_precision).3f accuracy "
                      "%(accuracy).3f balanced %(balanced_accuracy).3f" % row, flush=True)
            result["summary"] = summarize(result["runs"])
            result["total_seconds"] = round(time.time() - start, 1)
            common.write_json(args.out, result)
    print_summary(result["summary"])
    return 0


def control(args, names, cache, base_cfg, backbone, batch, start) -> int:
    """Both modes on the uncut (nearly balanced) training data: what balanced costs there."""
    import dataclasses

    import tensorflow as tf
    import tf_keras

    from components import model as model_lib, trainer
    result = common.load_results(args.out)
    runs = []
    for seed in args.seeds:
        for mode in MODES:
            cfg = dataclasses.replace(base_cfg, class_weight=mode, seed=seed)
            tf_keras.backend.clear_session()
            tf_keras.utils.set_random_seed(seed)
            classifier = model_lib.build(backbone, cfg)
            phase1, _ = trainer.train(classifier, cfg, tf.distribute.get_strategy(), batch,
                                      None, None, lambda: None,
                                      lambda: cache.train_examples, cache=cache)
            row = {"seed": seed, "class_weight": mode,
                   "weights": phase1["class_weight"].get("weights"),
                   **evaluate(classifier.head, cache, 0, len(names))}
            del row["small_recall"], row["small_precision"]
            runs.append(row)
            print("control seed %(seed)d %(class_weight)-8s accuracy %(accuracy).3f balanced "
                  "%(balanced_accuracy).3f" % row, flush=True)
    pairs = [(b, n) for b in runs for n in runs
             if b["seed"] == n["seed"] and b["class_weight"] == "balanced"
             and n["class_weight"] == "none"]
    result["control"] = {
        "command": "python -m bench.imbalance " + shlex.join(sys.argv[1:]),
        "what": "uncut training data (every class at 100 %), both modes, same seeds",
        "runs": runs,
        "accuracy": {m: _stats([r["accuracy"] for r in runs if r["class_weight"] == m])
                     for m in MODES},
        "balanced_minus_none_accuracy": _stats([b["accuracy"] - n["accuracy"]
                                                for b, n in pairs]),
        "seconds": round(time.time() - start, 1)}
    common.write_json(args.out, result)
    print(result["control"]["accuracy"], result["control"]["balanced_minus_none_accuracy"])
    return 0


def class_counts(labels, names) -> dict:
    import numpy as np
    counts = np.bincount(labels, minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts)}


def summarize(runs: list) -> dict:
    """Per mode: mean/min/max over every (small class, seed); paired balanced - none."""
    out = {}
    keys = ("small_recall", "small_precision", "accuracy", "balanced_accuracy")
    for mode in MODES:
        rows = [r for r in runs if r["class_weight"] == mode]
        if rows:
            out[mode] = {k: _stats([r[k] for r in rows]) for k in keys}
            out[mode]["runs"] = len(rows)
    pairs = {}
    for r in runs:
        pairs.setdefault((r["small_class"], r["seed"]), {})[r["class_weight"]] = r
    diffs = [(p["balanced"], p["none"]) for p in pairs.values() if len(p) == 2]
    if diffs:
        out["balanced_minus_none"] = {
            k: dict(_stats([b[k] - n[k] for b, n in diffs]),
                    better=sum(b[k] > n[k] for b, n in diffs),
                    worse=sum(b[k] < n[k] for b, n in diffs), pairs=len(diffs))
            for k in keys}
        by_class = {}
        for (small, _seed), p in pairs.items():
            if len(p) == 2:
                by_class.setdefault(small, []).append(
                    p["balanced"]["small_recall"] - p["none"]["small_recall"])
        out["small_recall_gain_by_class"] = {c: _stats(v) for c, v in by_class.items()}
    return out


def print_summary(summary: dict) -> None:
    for mode in MODES:
        s = summary.get(mode)
        if s:
            print("%-8s " % mode + "  ".join("%s %.3f [%.3f-%.3f]" % (k, v["mean"], v["min"],
                                                                      v["max"])
                                             for k, v in s.items() if k != "runs"))
    for k, v in (summary.get("balanced_minus_none") or {}).items():
        print("balanced - none %s: mean %+.4f [%+.4f, %+.4f], better in %d of %d, worse in %d"
              % (k, v["mean"], v["min"], v["max"], v["better"], v["pairs"], v["worse"]))


if __name__ == "__main__":
    sys.exit(main())
