"""TFLite formats vs the SavedModel: size, accuracy on the gating split, single-image latency.

    .venv/bin/python -m bench.tflite --model-dir SERVING_DIR/graft/VERSION --data TFRECORDS_DIR
        [--formats float32,float16,int8] [--repeats 50] [--out tflite.json]

The model is a SavedModel the pipeline pushed (default: the flowers-dev Lite0 that
`python -m bench.pipeline_flowers` pushes, /tmp/graft-bench-pipeline/default/serving/graft/*),
the data its TFRecords (`graft make-tfrecords` output: span-N/{train,eval}, labels.txt).
Each format is converted the way TFLiteExport converts (components/custom/tflite.py: uint8 in,
the backbone's preprocessing inside; int8 calibrated on --representative training images,
default TFLiteExport's REPRESENTATIVE_COUNT) and evaluated on
the eval split against the SavedModel's `serving_default` on the same images (decode + resize
by the Transform's ops, rounded to uint8 for TFLite).

Latency: single-image calls on one fixed eval image, with 1 and 2 threads, in a fresh process
per thread count (TensorFlow's intra- and inter-op threads = N, `Interpreter(num_threads=N)`),
every contender called in turn, round after round (`--repeats`), so load from other jobs hits
them alike; median and minimum. Contenders: each TFLite format on the uint8 image; the
SavedModel on the same uint8 image through the loaded Keras model with the same preprocessing
(the same work as TFLite); and, for context, its `serving_default` on the JPEG bytes (decode
and resize too, what TF Serving runs).
Writes bench/results/tflite.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_MODEL_GLOB = "/tmp/graft-bench-pipeline/default/serving/graft/*"
DEFAULT_DATA = "/tmp/graft-bench-pipeline/tfrecords"


def _span_files(data: str, split: str) -> list:
    spans = sorted(glob.glob(os.path.join(data, "span-*")),
                   key=lambda p: int(p.rsplit("-", 1)[-1]))
    return sorted(glob.glob(os.path.join(spans[-1], split, "*")))


def _config(args):
    from components.training_config import TrainingConfig
    from pipeline import configs
    return TrainingConfig(label_names=configs.read_label_names(args.data),
                          backbone=args.backbone, image_size=args.image_size)


def _probe(args) -> tuple[bytes, np.ndarray]:
    """The fixed image: the first eval record's bytes and its uint8 model-size pixels."""
    from components.custom import tflite
    cfg = _config(args)
    data, _ = next(tflite.iter_examples(_span_files(args.data, "eval"), cfg.image_key,
                                        cfg.label_key, compression=""))
    return data, tflite.decode_uint8([data], cfg.input_size())[0]


def latencies(args) -> dict:
    """Run in a fresh process (TensorFlow's thread pools are fixed at first use), with
    args.threads threads for TensorFlow and every interpreter: single-image calls of every
    contender interleaved round by round (so load from other jobs hits them alike); median
    and minimum ms per contender."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from components.backbones import registry
    from components.custom import tflite
    cfg = _config(args)
    data, image = _probe(args)
    loaded = tf.saved_model.load(args.model_dir)
    fn = tflite.uint8_function(loaded, registry.get_backbone(cfg.backbone), cfg.input_size())
    serve = loaded.signatures["serving_default"]
    batch = tf.constant(image[np.newaxis])
    calls = {"savedmodel": lambda: fn(batch),
             "savedmodel_serving_default_bytes": lambda: serve(image_bytes=tf.constant([data]))}
    for path in args.tflite_files.split(","):
        runner = tflite.Runner(model_path=path, num_threads=args.threads)
        calls[os.path.basename(path).rsplit(".", 1)[0]] = \
            lambda runner=runner: runner.predict_one(image)
    times = {name: [] for name in calls}
    for _ in range(3):  # warm-up
        for call in calls.values():
            call()
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: {"median_ms": round(float(np.median(t)), 2), "min_ms": round(min(t), 2)}
            for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--formats", default="float32,float16,int8")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--representative", type=int, default=None,
                   help="int8 calibration images (default: TFLiteExport's)")
    p.add_argument("--out", default="tflite.json")
    p.add_argument("--keep", default="", metavar="DIR",
                   help="keep the converted FORMAT.tflite files in DIR")
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)  # subprocess mode
    p.add_argument("--tflite-files", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.model_dir:
        found = sorted(glob.glob(DEFAULT_MODEL_GLOB))
        if not found:
            print("error: no --model-dir and nothing at %s (run python -m bench.pipeline_flowers "
                  "first)" % DEFAULT_MODEL_GLOB, file=sys.stderr)
            return 2
        args.model_dir = found[-1]
    if args.threads:
        print(json.dumps(latencies(args)))
        return 0

    import tensorflow as tf

    from bench.common import machine, write_json
    from components.backbones import registry
    from components.custom import tflite

    cfg = _config(args)
    if args.representative is None:
        from components.custom.tflite_export import REPRESENTATIVE_COUNT
        args.representative = REPRESENTATIVE_COUNT
    size = cfg.input_size()
    backbone = registry.get_backbone(cfg.backbone)
    eval_files = _span_files(args.data, "eval")
    _, probe = _probe(args)
    sample = tflite.sample_examples(tflite.iter_examples(
        _span_files(args.data, "train"), cfg.image_key, cfg.label_key, compression=""),
        args.representative, seed=cfg.seed)
    representative = tflite.decode_uint8([b for b, _ in sample], size)

    rows = {}
    variables = tflite.directory_bytes(os.path.join(args.model_dir, "variables"))
    rows["savedmodel"] = {"size_mb": round(tflite.directory_bytes(args.model_dir) / 1e6, 2),
                          "variables_mb": round(variables / 1e6, 2)}
    loaded = tf.saved_model.load(args.model_dir)
    workdir = args.keep or tempfile.mkdtemp(prefix="graft-bench-tflite-")
    os.makedirs(workdir, exist_ok=True)
    files = []
    for fmt in args.formats.split(","):
        start = time.time()
        content = tflite.convert(loaded, backbone, size, fmt,
                                 representative if fmt == "int8" else None)
        seconds = time.time() - start
        files.append(os.path.join(workdir, fmt + ".tflite"))
        with open(files[-1], "wb") as f:
            f.write(content)
        scores = tflite.compare(args.model_dir, tflite.Runner(model_content=content,
                                                              num_threads=1),
                                tflite.iter_examples(eval_files, cfg.image_key, cfg.label_key,
                                                     compression=""))
        rows["savedmodel"]["accuracy"] = round(scores["savedmodel_accuracy"], 4)
        rows["savedmodel"]["eval_images"] = scores["count"]
        rows[fmt] = {"size_mb": round(len(content) / 1e6, 2), "convert_s": round(seconds, 1),
                     "accuracy": round(scores["tflite_accuracy"], 4),
                     "drop_points": round(100 * (scores["savedmodel_accuracy"]
                                                 - scores["tflite_accuracy"]), 2),
                     "max_abs_diff_vs_savedmodel": round(scores["max_abs_diff"], 5)}
        print("%s: %s" % (fmt, rows[fmt]), flush=True)

    for threads in (1, 2):
        cmd = [sys.executable, "-m", "bench.tflite", "--model-dir", args.model_dir, "--data",
               args.data, "--backbone", args.backbone, "--repeats", str(args.repeats),
               "--threads", str(threads), "--tflite-files", ",".join(files)] + (
                   ["--image-size", str(args.image_size)] if args.image_size else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        lat = json.loads(out.stdout.strip().splitlines()[-1])
        print("%d thread(s): %s" % (threads, lat), flush=True)
        for name, value in lat.items():
            row = rows.setdefault(name, {}) if name != "savedmodel_serving_default_bytes" \
                else rows["savedmodel"]
            key = "serving_default_bytes_" if name == "savedmodel_serving_default_bytes" else ""
            row["%slatency_ms_%d_thread" % (key, threads)] = value["median_ms"]
            row["%slatency_min_ms_%d_thread" % (key, threads)] = value["min_ms"]
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)

    targets = {}
    if "int8" in rows and "float32" in rows:
        i8, f32, sm = rows["int8"], rows["float32"], rows["savedmodel"]
        targets = {
            "int8_size_at_most_a_third_of_float32": i8["size_mb"] <= f32["size_mb"] / 3,
            "int8_size_ratio": round(i8["size_mb"] / f32["size_mb"], 3),
            "int8_within_1_point_of_savedmodel": i8["drop_points"] <= 1.0,
            "int8_latency_no_worse_than_savedmodel": all(
                i8["latency_ms_%d_thread" % t] <= sm["latency_ms_%d_thread" % t]
                for t in (1, 2)),
        }
    result = {"machine": machine(),
              "command": "python -m bench.tflite " + " ".join(argv or sys.argv[1:]),
              "model_dir": args.model_dir, "data": args.data, "backbone": cfg.backbone,
              "image_size": size, "representative_images": len(representative),
              "repeats": args.repeats, "rows": rows, "targets": targets,
              "note": "2-core machine shared with other agents' jobs during the run: "
                      "latencies are upper bounds"}
    path = write_json(args.out, result)
    print(json.dumps(targets))
    print("wrote %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
