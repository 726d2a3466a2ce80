"""Benchmark: the whole pipeline on an image-folder data set (default ../shared/data/flowers-dev)
with today's recipe and the new defaults, and the new defaults as a plain Keras script.

Arms, all on the same `graft make-tfrecords` split, one after another on this machine:
- `seed, no cache`: `--recipe seed --no-feature-cache` (the original recipe and code path);
- `seed, cache`: `--recipe seed` (the same recipe, phase 1 on cached features: the cache alone);
- `default`: every default (twelfth session: half the layers, depthwise kernels frozen, phase 2
  on the frozen bottom's cached activations of four views of each image);
- `every_layer`: the defaults of sessions 7-11: every layer fine-tuned on the cached images
  (`--fine-tune-fraction 1.0 --no-freeze-depthwise`);
- `default_files`: `every_layer` with `--no-activation-cache` (phase 2 reads the image files
  every epoch and maps the Transform graph over them, as before the ninth session);
- `half_files`: the top half of the base's layers fine-tuned on augmented images read from the
  files (`--fine-tune-fraction 0.5 --no-activation-cache --no-freeze-depthwise`: the
  cross-validation's `half_10`);
- `half_nodw`: the top half, the depthwise kernels frozen too, on the cached images augmented
  every epoch (`--fine-tune-input images`: the cross-validation's `half_10_nodw`);
- `half_nodw_v4`: the defaults spelt out (`--fine-tune-fraction 0.5 --fine-tune-input
  activations --augmented-views 2`: the cross-validation's `half_10_nodw_v4`);
- `plain Keras, default`: bench/plain_keras.py, the same training function without TFX, then
  the model saved as the Trainer saves it (without the Transform signatures).
With `--seeds S1 S2 ...` every `graft run` arm runs once per training seed (`graft run --seed`,
the same split), keyed `ARM@SEED`; `seed_summary` holds each arm's mean, min and max test
accuracy and wall time over the seeds, and the accuracy gain is the difference of the means.
Per arm: Evaluator accuracy (and the split it gated on: test when make-tfrecords wrote one,
with the summary's accuracy lines and their 95 % intervals), accuracy after each phase,
per-component seconds, the Trainer's phases (feature extraction, head, fine-tuning), peak
memory of the process tree (PSS).
Writes bench/results/pipeline_flowers.json (or --out) and prints a markdown table.

    .venv/bin/python -m bench.pipeline_flowers [--data IMAGES_DIR] [--work DIR] [--arms ...]
        [--seeds 1 2 3] [--copies K]

`--copies K` (bench/scale_records.py) times the pipeline at K times the data: each split's
records written K times, altered; its accuracies are only a check that training ran.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench import common

ARMS = {
    "seed_nocache": ["--recipe", "seed", "--no-feature-cache"],
    "seed_cache": ["--recipe", "seed"],
    "default": [],
    "default_files": ["--fine-tune-fraction", "1.0", "--no-freeze-depthwise",
                      "--no-activation-cache"],
    "half_files": ["--fine-tune-fraction", "0.5", "--no-activation-cache",
                   "--no-freeze-depthwise"],
    "half_nodw": ["--fine-tune-fraction", "0.5", "--fine-tune-input", "images"],
    "half_nodw_v4": ["--fine-tune-fraction", "0.5", "--fine-tune-input", "activations",
                     "--augmented-views", "2"],
    "every_layer": ["--fine-tune-fraction", "1.0", "--no-freeze-depthwise"],
}


def arm_key(name: str, seed=None) -> str:
    """An arm's key in the results: NAME, or NAME@SEED for a run with `graft run --seed`."""
    return name if seed is None else "%s@%d" % (name, seed)


def seed_flags(seed=None) -> list:
    return [] if seed is None else ["--seed", str(seed)]


def _spread(values: list, digits: int) -> dict:
    return {"mean": round(sum(values) / len(values), digits), "min": min(values),
            "max": max(values), "each": values}


def seed_summary(arms: dict) -> dict:
    """ARM@SEED results -> {ARM: {seeds, accuracy mean/min/max, wall seconds mean/min/max}}."""
    grouped = {}
    for key, arm in arms.items():
        if "@" in key:
            name, seed = key.rsplit("@", 1)
            grouped.setdefault(name, []).append((int(seed), arm))
    return {name: {"seeds": [s for s, _ in runs],
                   "accuracy": _spread([a["evaluator_accuracy"] for _, a in runs], 4),
                   "wall_seconds": _spread([a["pipeline"]["seconds"] for _, a in runs], 1)}
            for name, runs in grouped.items()}


def run_arm(name: str, flags: list, data: Path, work: Path, beam_mode: str) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    log_path = work / ("%s.log" % name)
    run = common.run_measured([sys.executable, "-m", "pipeline.cli", "run", "--data", str(data),
                               "--output", str(out), "--beam-mode", beam_mode,
                               "--min-accuracy", "0.5", "--verbose", *flags], log_path,
                              samples=True)
    samples = run.pop("pss_samples")
    windows = common.component_windows(out / "metadata.sqlite")
    log = log_path.read_text()
    training = common.trainer_summary(log)
    history = json.loads(next((out / "pipeline_root" / "Trainer" / "model_run").glob(
        "*/history.json")).read_text())
    phase2 = history.get("phase2") or {}
    return {"flags": flags, "pipeline": run,
            "evaluator_accuracy": common.eval_accuracy(log),
            "gate_split": "test" if "blessed: yes (test" in log or "blessed: no (test" in log
            else "eval",
            "accuracies": common.summary_accuracies(log),
            "phase1_val_accuracy": training["phase1"].get("val_accuracy"),
            "phase2_val_accuracy": training["phase2"].get("val_accuracy"),
            "phase2_kept": training["phase2"].get("kept"),
            "trainer_phases_seconds": {
                "feature_cache": (training.get("feature_cache") or {}).get("seconds"),
                "phase1": round(history["phase1"]["seconds"], 1),
                "phase2": round(phase2.get("seconds", 0.0), 1),
                "phase2_epochs": len(phase2.get("loss", [])),
                "phase2_input": phase2.get("input"),
                "phase2_epoch_end_seconds": phase2.get("epoch_end_seconds", []),
                "phase2_seconds_per_epoch": round(phase2["seconds"] / len(phase2["loss"]), 1)
                if phase2.get("loss") else None},
            "component_seconds": common.component_seconds(windows),
            "component_peak_pss_mb": common.component_peak_pss(windows, samples),
            "training": training,
            "summary": log[log.rfind("graft run summary"):].splitlines()}


def same_epochs(seconds: float, epoch_ends: list, epochs: int) -> float:
    """`seconds` had phase 2 stopped after `epochs` epochs: minus its later epochs
    (epoch_ends: phase 2's clock at the end of each epoch)."""
    if not epoch_ends or epochs >= len(epoch_ends):
        return seconds
    return seconds - (epoch_ends[-1] - epoch_ends[epochs - 1])


def plain_ratios(default: dict, plain: dict) -> dict:
    """Pipeline / plain Keras wall time, as run and at the same number of phase-2 epochs
    (early stopping may stop the two at different epochs: the ratio should measure the
    pipeline's overhead, not that), each also without TFLiteExport (an output plain Keras
    does not make)."""
    pipe, flat = default["pipeline"]["seconds"], plain["seconds"]
    tflite = default["component_seconds"].get("TFLiteExport", 0.0)
    pipe_ends = default["trainer_phases_seconds"].get("phase2_epoch_end_seconds") or []
    plain_ends = plain.get("phase2_epoch_end_seconds") or []
    k = min(len(pipe_ends), len(plain_ends))
    pipe_k, flat_k = same_epochs(pipe, pipe_ends, k), same_epochs(flat, plain_ends, k)
    return {"pipeline_to_plain_ratio": round(pipe / flat, 2),
            "pipeline_to_plain_ratio_without_tflite": round((pipe - tflite) / flat, 2),
            "phase2_epochs": {"pipeline": len(pipe_ends), "plain": len(plain_ends)},
            "same_epochs": {"phase2_epochs": k, "pipeline_seconds": round(pipe_k, 1),
                            "plain_seconds": round(flat_k, 1),
                            "ratio": round(pipe_k / flat_k, 2),
                            "ratio_without_tflite": round((pipe_k - tflite) / flat_k, 2)}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(common.FLOWERS),
                   help="class folders (default %(default)s)")
    p.add_argument("--work", default="/tmp/graft-bench-pipeline")
    p.add_argument("--beam-mode", default="multi_processing")
    p.add_argument("--arms", nargs="+", default=["seed_nocache", "seed_cache", "default",
                                                 "plain"],
                   choices=list(ARMS) + ["plain"])
    p.add_argument("--out", default="pipeline_flowers.json",
                   help="results file name under bench/results/")
    p.add_argument("--split-args", default="",
                   help="extra `graft make-tfrecords` flags, e.g. '--eval-fraction 0.2 "
                   "--test-fraction 0' (the 80/20 split of before the test split)")
    p.add_argument("--copies", type=int, default=1,
                   help="timing at a larger scale: every record of each split written this "
                   "many times, altered (bench/scale_records.py; accuracy then means nothing)")
    p.add_argument("--seeds", nargs="+", type=int, default=[],
                   help="run each graft run arm once per training seed (graft run --seed; "
                   "default: once, the config's seed)")
    args = p.parse_args()
    images = Path(args.data)
    if not images.is_dir():
        print("skipped: %s is absent" % images)
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "tfrecords"
    shutil.rmtree(data, ignore_errors=True)
    conv = common.run_measured([sys.executable, "-m", "pipeline.cli", "make-tfrecords",
                                str(images), str(data), *args.split_args.split()],
                               work / "make_tfrecords.log")
    copies = None
    if args.copies > 1:
        from bench import scale_records
        copies = scale_records.scale(str(data), args.copies)
    result = {"machine": common.machine(), "data": str(images),
              "command": " ".join(["python -m bench.pipeline_flowers"] + sys.argv[1:]),
              "beam_mode": args.beam_mode, "make_tfrecords_seconds": conv["seconds"],
              "split": [line.strip() for line in (work / "make_tfrecords.log").read_text()
                        .splitlines() if line.strip().startswith(("label", "total"))],
              **({"copies": args.copies, "records_after_copies": copies} if copies else {}),
              "arms": {}}
    runs = [(name, None) for name in args.arms] if not args.seeds else \
        [(name, None) for name in args.arms if name == "plain"] + \
        [(name, seed) for seed in args.seeds for name in args.arms if name != "plain"]
    first = args.seeds[0] if args.seeds else None  # plain Keras runs with the first seed
    for name, seed in runs:
        key = arm_key(name, seed)
        if name == "plain":
            shutil.rmtree(work / "plain_model", ignore_errors=True)
            plain = common.run_measured([sys.executable, "-m", "bench.plain_keras", "--data",
                                         str(data), "--json", str(work / "plain.json"),
                                         "--save", str(work / "plain_model"),
                                         *seed_flags(first)],
                                        work / "plain.log")
            result["arms"]["plain"] = dict(plain, **json.loads((work / "plain.json").read_text()))
        else:
            result["arms"][key] = run_arm(key, ARMS[name] + seed_flags(seed), data, work,
                                          args.beam_mode)
        if args.seeds:
            result["seed_summary"] = seed_summary(result["arms"])
        common.write_json(args.out, result)
        print("%s done: %s" % (key, json.dumps(result["arms"][key])[:400]), flush=True)
    arms = result["arms"]
    summary = result.get("seed_summary") or {}
    if "default" in summary and "seed_nocache" in summary:
        result["accuracy_gain_points_mean"] = round(100 * (
            summary["default"]["accuracy"]["mean"]
            - summary["seed_nocache"]["accuracy"]["mean"]), 1)
        result["wall_ratio_mean"] = round(summary["default"]["wall_seconds"]["mean"]
                                          / summary["seed_nocache"]["wall_seconds"]["mean"], 2)
    # Seeded runs: the first seed's arms.
    nocache, cache, default = (arm_key(n, first) for n in ("seed_nocache", "seed_cache",
                                                            "default"))
    if nocache in arms and cache in arms:
        result["cache_speedup_trainer"] = round(
            arms[nocache]["component_seconds"]["Trainer"]
            / arms[cache]["component_seconds"]["Trainer"], 2)
    if default in arms and "plain" in arms:  # plain Keras ran with the first seed
        result.update(plain_ratios(arms[default], arms["plain"]))
    if "default" in arms and "seed_nocache" in arms:
        result["accuracy_gain_points"] = round(100 * (
            arms["default"]["evaluator_accuracy"] - arms["seed_nocache"]["evaluator_accuracy"]),
            1)
    path = common.write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "arms"}, indent=1))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
