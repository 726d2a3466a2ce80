"""Int8 calibration: how many representative images TFLiteExport's conversion needs.

    .venv/bin/python -m bench.tflite_calibration --run OUTPUT_DIR [--counts 25,50,100,150,300]
        [--seeds 3] [--out tflite_calibration.json]

OUTPUT_DIR is a `graft run` output (e.g. a `bench.pipeline_flowers` arm's directory; --data,
--backbone, --image-size as that run had them): its
pushed SavedModel (serving/graft/VERSION, the newest) and ImageCheck's cleaned examples (the
records TFLiteExport reads). For each count and each seed 0..N-1 the model is converted to int8
exactly as TFLiteExport converts it (components/custom/tflite.py: `sample_examples` of the
training split with that seed, decoded by the Transform's ops), the conversion timed, and the
int8 model scored against the SavedModel's `serving_default` on every eval and test image:
accuracy, drop (SavedModel minus int8, points), top-1 agreement with the SavedModel (fewer
images decide it than accuracy: a disagreement is a changed prediction whichever is right) and
the mean and largest probability difference. Writes bench/results/OUT (one entry per run
directory, replaced when measured again).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a graft run's output directory")
    p.add_argument("--data", default="", help="the directory with labels.txt (default: "
                   "RUN/../tfrecords, where bench.pipeline_flowers writes them)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--counts", default="25,50,100,150,300")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="tflite_calibration.json")
    args = p.parse_args(argv)

    import tensorflow as tf

    from bench.common import RESULTS, machine, newest, run_label_names, write_json
    from components.backbones import registry
    from components.custom import tflite
    from components.training_config import TrainingConfig
    from pipeline.reporting.diagnostics import score, split_files

    model_dir = os.path.dirname(newest(os.path.join(args.run, "serving", "*", "[0-9]*",
                                                     "saved_model.pb")))
    examples = newest(os.path.join(args.run, "pipeline_root", "ImageCheck", "cleaned_examples",
                                    "[0-9]*"))
    cfg = TrainingConfig(label_names=run_label_names(args.run, args.data),
                         backbone=args.backbone, image_size=args.image_size)
    size = cfg.input_size()
    backbone = registry.get_backbone(cfg.backbone)
    scored = [e for split in ("eval", "test") for e in tflite.iter_examples(
        split_files([examples], split), cfg.image_key, cfg.label_key)]
    y = np.asarray([label for _, label in scored])
    images = tflite.decode_uint8([b for b, _ in scored], size)
    model = tf.saved_model.load(model_dir)
    sm = score(model.signatures["serving_default"], [b for b, _ in scored])
    sm_top = sm.argmax(-1)
    train = list(tflite.iter_examples(split_files([examples], "train"), cfg.image_key,
                                      cfg.label_key))
    rows = []
    for count in [int(c) for c in args.counts.split(",")]:
        for seed in range(args.seeds):
            sample = tflite.sample_examples(iter(train), count, seed=seed)
            start = time.time()
            representative = tflite.decode_uint8([b for b, _ in sample], size)
            content = tflite.convert(model, backbone, size, "int8", representative)
            seconds = time.time() - start
            q = tflite.Runner(model_content=content, num_threads=1).predict(images)
            diff = np.abs(q - sm)
            row = {"count": count, "seed": seed, "convert_s": round(seconds, 1),
                   "int8_accuracy": round(float(np.mean(q.argmax(-1) == y)), 4),
                   "savedmodel_accuracy": round(float(np.mean(sm_top == y)), 4),
                   "agreement": round(float(np.mean(q.argmax(-1) == sm_top)), 4),
                   "mean_abs_diff": round(float(diff.mean()), 5),
                   "max_abs_diff": round(float(diff.max()), 4)}
            row["drop_points"] = round(100 * (row["savedmodel_accuracy"]
                                              - row["int8_accuracy"]), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for count in sorted({r["count"] for r in rows}):
        mine = [r for r in rows if r["count"] == count]
        summary[str(count)] = {
            k: round(float(np.mean([r[k] for r in mine])), 4)
            for k in ("convert_s", "drop_points", "agreement", "mean_abs_diff")}
        summary[str(count)]["worst_drop_points"] = max(r["drop_points"] for r in mine)
    print(json.dumps(summary, indent=1))
    path = RESULTS / args.out
    results = json.loads(path.read_text()) if path.exists() else {}
    results[os.path.abspath(args.run)] = {
        "machine": machine(), "command": "python -m bench.tflite_calibration "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "model_dir": model_dir, "examples": examples, "backbone": cfg.backbone,
        "image_size": size, "scored_images": len(scored), "train_images": len(train),
        "rows": rows, "summary": summary}
    print("wrote %s" % write_json(args.out, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
