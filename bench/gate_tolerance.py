"""How far apart do two equally good models score on flowers-dev's test split? The measurement
behind the default `--max-regression`.

On `graft make-tfrecords`' default three-way split of ../shared/data/flowers-dev (the name
hash rule, eval 0.15 / test 0.15 / train 0.70: 700 / 150 / 150 photos), the Trainer's phase 1
(the head on frozen EfficientNet-Lite0 features of the training images and their flips,
early stopping on the eval split; bench/finetune_recipes.py's `head_flip`) is trained with
seeds 1..N on the same images: N models of the same recipe and data, differing only in the
random init, dropout and shuffling. Each is scored on the test split. Reported:

- each seed's test (and eval) accuracy, with the 95 % Wilson interval of the test accuracy;
- |test accuracy difference| over all seed pairs: mean, 95th percentile, max, in points. A
  tolerance below the 95th percentile would refuse a retrained model that is no worse than
  the served one in more than 1 of 20 retrains of the same quality;
- the paired bootstrap (2,000 resamples of the 150 test images) of the difference of the
  first two seeds: its 2.5-97.5 % range.

    .venv/bin/python -m bench.gate_tolerance [--seeds 10]  # -> bench/results/gate_tolerance.json
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from bench import common


def main() -> int:
    import numpy as np

    from bench import finetune_recipes as fr
    from components.backbones import registry
    from pipeline.data import make_tfrecords as mt
    from pipeline.reporting.facts import wilson

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--out", default="gate_tolerance.json")
    args = p.parse_args()
    if not common.FLOWERS.is_dir():
        print("skipped: %s is absent" % common.FLOWERS)
        return 0
    t0 = time.time()
    paths, labels, classes = fr.list_images(str(common.FLOWERS))
    rel = ["/".join(path.split("/")[-2:]) for path in paths]
    split = np.array([mt.split_of(r, mt.DEFAULT_EVAL_FRACTION, mt.DEFAULT_TEST_FRACTION)
                      for r in rel])
    y = np.array(labels)
    images = fr.load_images(paths)
    backbone = registry.get_backbone(fr.BACKBONE)
    feats = fr.pooled_features(backbone, images, flip=False)
    tr = split == "train"
    flips = fr.pooled_features(backbone, images[tr], flip=True)
    features_s = time.time() - t0
    xtr, ytr = np.concatenate([feats[tr], flips]), np.concatenate([y[tr], y[tr]])
    ev, te = split == "eval", split == "test"
    runs, probs = [], []
    for seed in range(1, args.seeds + 1):
        head, r = fr.train_head(xtr, ytr, feats[ev], feats[ev], y[ev], len(classes), seed, 30)
        pt = head.predict(feats[te], batch_size=256, verbose=0)
        probs.append(pt.argmax(1) == y[te])
        acc = float(probs[-1].mean())
        runs.append({"seed": seed, "test_accuracy": acc, "eval_accuracy": r["accuracy"],
                     "test_ci95": [round(v, 4) for v in wilson(acc, int(te.sum()))],
                     "best_epoch": r["best_epoch"], "seconds": r["seconds"]})
        print(runs[-1], flush=True)
    diffs = [abs(a["test_accuracy"] - b["test_accuracy"]) * 100
             for a, b in itertools.combinations(runs, 2)]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, int(te.sum()), size=(2000, int(te.sum())))
    boot = (probs[0][idx].mean(1) - probs[1][idx].mean(1)) * 100
    accs = np.array([r["test_accuracy"] for r in runs]) * 100
    result = {
        "machine": common.machine(), "data": str(common.FLOWERS),
        "command": " ".join(["python -m bench.gate_tolerance"] + sys.argv[1:]),
        "split": {s: int((split == s).sum()) for s in ("train", "eval", "test")},
        "recipe": "phase 1 head on frozen Lite0 features + flips (finetune_recipes head_flip)",
        "features_seconds": round(features_s, 1), "runs": runs,
        "test_accuracy_points": {"mean": round(float(accs.mean()), 2),
                                 "std": round(float(accs.std(ddof=1)), 2),
                                 "min": round(float(accs.min()), 2),
                                 "max": round(float(accs.max()), 2)},
        "pairwise_abs_diff_points": {"pairs": len(diffs),
                                     "mean": round(float(np.mean(diffs)), 2),
                                     "p95": round(float(np.percentile(diffs, 95)), 2),
                                     "max": round(float(np.max(diffs)), 2)},
        "one_image_points": round(100 / int(te.sum()), 3),
        "bootstrap_diff_seed1_seed2_points": {
            "observed": round((runs[0]["test_accuracy"] - runs[1]["test_accuracy"]) * 100, 2),
            "p2.5": round(float(np.percentile(boot, 2.5)), 2),
            "p97.5": round(float(np.percentile(boot, 97.5)), 2)},
        "seconds": round(time.time() - t0, 1)}
    path = common.write_json(args.out, result)
    print({k: v for k, v in result.items() if k not in ("runs", "machine")})
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
