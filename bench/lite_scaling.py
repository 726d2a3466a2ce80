"""Benchmark: EfficientNet-Lite0 vs Lite1 vs Lite2 on ../shared/data/flowers-dev.

"Scale the backbone up if you need more accuracy", as a measured trade-off: each backbone runs
the whole pipeline (`graft run`, offline ImageNet weights, native input size 224/240/260,
phase 1 + phase 2, in_memory Beam) on the same 796/204 split. Records Evaluator accuracy,
phase 1 and phase 1 + 2 validation accuracy, pipeline and Trainer wall time, the pushed
SavedModel's size and parameter count, and serving throughput: images/s through the pushed
model's serving_default signature (raw JPEG bytes in, decode + resize + preprocess + forward)
at batch 32 and batch 1. Results accumulate in bench/results/lite_scaling.json.

    .venv/bin/python -m bench.lite_scaling [--work /tmp/graft-bench-lite] [--backbones ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench import common

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RESULT = "lite_scaling.json"


def throughput(model_dir: Path, jpegs: list, batch: int, batches: int) -> dict:
    """Images/s through serving_default (raw encoded bytes in), after two warm-up calls."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    x = tf.constant([jpegs[i % len(jpegs)] for i in range(batch)])
    for _ in range(2):
        fn(image_bytes=x)
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        fn(image_bytes=x)
        times.append(time.perf_counter() - t0)
    return {"batch": batch, "images_per_second": round(batch * batches / sum(times), 1),
            "median_ms_per_batch": round(1000 * statistics.median(times), 1)}


def count_params(model_dir: Path) -> int:
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(model_dir / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    return int(sum(np.prod(s) for k, s in shapes.items()
                   if "OPTIMIZER_SLOT" not in k and k.endswith("VARIABLE_VALUE")
                   and "optimizer" not in k and "save_counter" not in k))


def run_backbone(work: Path, backbone: str, data: Path, jpegs: list) -> dict:
    out = work / backbone
    shutil.rmtree(out, ignore_errors=True)
    log = work / (backbone + ".log")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--data", str(data), "--output",
           str(out), "--backbone", backbone, "--beam-mode", "in_memory", "--min-accuracy", "0",
           "--verbose"]  # the Trainer's `graft trainer: {json}` line in the captured log
    run = common.run_measured(cmd, log)
    if run["returncode"] != 0:
        raise SystemExit("%s failed, see %s" % (backbone, log))
    return collect(backbone, out, log, run, cmd[2:], jpegs)


def reuse_lite0(tvs_work: Path, jpegs: list) -> dict:
    """The Lite0 point from transfer_vs_scratch.py's 100 % transfer run: the same command
    (`graft run`, Lite0 defaults, in_memory, --min-accuracy 0) on the same split."""
    point = next(q for q in json.loads((common.RESULTS / "transfer_vs_scratch.json").read_text())
                 ["points"] if q["arm"] == "transfer" and q["fraction"] == 1.0)
    run = {"seconds": point["pipeline_seconds"],
           "peak_rss_single_mb": point["peak_rss_single_mb"]}
    return dict(collect("efficientnet_lite0", tvs_work / "transfer-1", tvs_work / "transfer-1.log",
                        run, point["command"], jpegs), reused_from="transfer_vs_scratch.json")


def collect(backbone: str, out: Path, log: Path, run: dict, command: list, jpegs: list) -> dict:
    text = log.read_text()
    summary = common.trainer_summary(text)
    seconds = common.component_seconds(common.component_windows(out / "metadata.sqlite"))
    pushed = next(p for p in sorted((out / "serving" / "graft").iterdir()) if p.is_dir())
    p1, p2 = summary.get("phase1") or {}, summary.get("phase2") or {}
    return {
        "backbone": backbone, "image_size": summary["image_size"], "command": command,
        "evaluator_accuracy": common.eval_accuracy(text),
        "phase1_val_accuracy": p1.get("val_accuracy"),
        "phase2_val_accuracy": p2.get("val_accuracy"), "phase2_kept": p2.get("kept"),
        "pipeline_seconds": run["seconds"], "trainer_seconds": seconds.get("Trainer"),
        "evaluator_seconds": seconds.get("Evaluator"),
        "phase1_seconds": round(p1.get("seconds", 0), 1),
        "phase2_seconds": round(p2.get("seconds", 0), 1),
        "peak_rss_single_mb": run["peak_rss_single_mb"],
        "saved_model_bytes": common.dir_bytes(pushed),
        "parameters": count_params(pushed),
        "serving_batch32": throughput(pushed, jpegs, 32, 8),
        "serving_batch1": throughput(pushed, jpegs, 1, 40),
        "summary": summary,
    }


def eval_jpegs(data: Path, n: int = 64) -> list:
    import tensorflow as tf
    out = []
    for path in sorted((data / "span-1" / "eval").glob("*")):
        for rec in tf.data.TFRecordDataset(str(path)):
            ex = tf.train.Example.FromString(rec.numpy())
            out.append(ex.features.feature["image"].bytes_list.value[0])
            if len(out) >= n:
                return out
    return out


def table(points: list) -> str:
    rows = ["| backbone | input | parameters | SavedModel | Evaluator accuracy | phase 1 "
            "| phase 1 + 2 | Trainer | pipeline | serving img/s (batch 32) | batch 1 latency |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        rows.append("| %s | %d px | %.2f M | %.1f MB | %.3f | %.3f | %s | %.0f s | %.0f s | %.1f "
                    "| %.0f ms |" % (
                        p["backbone"], p["image_size"], p["parameters"] / 1e6,
                        p["saved_model_bytes"] / 1e6, p["evaluator_accuracy"],
                        p["phase1_val_accuracy"],
                        "%.3f%s" % (p["phase2_val_accuracy"],
                                    " (not kept)" if p["phase2_kept"] is False else ""),
                        p["trainer_seconds"], p["pipeline_seconds"],
                        p["serving_batch32"]["images_per_second"],
                        p["serving_batch1"]["median_ms_per_batch"]))
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/graft-bench-lite")
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--fresh", action="store_true", help="forget earlier points")
    p.add_argument("--lite0-from", default=None,
                   help="work dir of transfer_vs_scratch.py: reuse its 100 %% transfer run "
                   "(the identical Lite0 run) instead of training Lite0 again")
    args = p.parse_args()
    work = common.flowers_work_dir(args.work)
    if work is None:
        return 0
    result = common.load_results(RESULT, args.fresh)
    data = common.flowers_tfrecords(work)
    jpegs = eval_jpegs(data)
    for backbone in args.backbones.split(","):
        if any(q["backbone"] == backbone for q in result["points"]):
            continue
        print("running", backbone, flush=True)
        if backbone == "efficientnet_lite0" and args.lite0_from:
            point = reuse_lite0(Path(args.lite0_from), jpegs)
        else:
            point = run_backbone(work, backbone, data, jpegs)
        result["points"].append(point)
        result["points"].sort(key=lambda q: q["backbone"])
        result["machine"] = common.machine()
        common.write_json(RESULT, result)
        print("  %s: Evaluator accuracy %.3f, Trainer %.0f s, %.1f img/s"
              % (backbone, point["evaluator_accuracy"], point["trainer_seconds"],
                 point["serving_batch32"]["images_per_second"]), flush=True)
    print(table(result["points"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
