"""Benchmark: transfer learning vs training from scratch on ../shared/data/flowers-dev.

The same architecture (EfficientNet-Lite0 + head) and the same pipeline (`graft run`: every TFX
component, Evaluator accuracy on the same 204 held-out images) at 10 %, 25 %, 50 % and 100 %
of the 796 training images, with
  - transfer: the offline ImageNet weights, phase 1 (frozen base) + phase 2 (fine-tuning);
  - scratch:  random weights, one phase training every layer (BatchNorm learning too) for a
              fixed 40 epochs (patience 40: early stopping on the noisy from-scratch validation
              loss ended runs at chance after a few epochs, while BatchNorm's moving statistics
              were still settling); the best-validation-loss weights are restored as usual.
Training subsets are stratified and nested (10 % is inside 25 %, ...), fixed seed.
Records accuracy, epochs and training seconds until the validation accuracy first reaches
fixed thresholds, and phase 1 vs phase 1 + 2. Results accumulate in
bench/results/transfer_vs_scratch.json (finished points are kept when the script is rerun;
--fresh starts over); bench/results/transfer_vs_scratch.png plots accuracy vs data fraction.

    .venv/bin/python -m bench.transfer_vs_scratch [--work /tmp/graft-bench-tvs] [--only scratch]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

from bench import common

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# What differs between the two arms (everything else is the pipeline's defaults).
ARMS = {
    "transfer": ["--weights", "imagenet"],
    "scratch": ["--weights", "none", "--epochs", "40", "--early-stopping-patience", "40"],
}
RESULT = "transfer_vs_scratch.json"


def subset_data(full: Path, out: Path, fraction: float, seed: int = 0) -> dict:
    """A copy of FULL's span-1 with a stratified, nested FRACTION of the training records."""
    import tensorflow as tf

    records = []
    for path in sorted((full / "span-1" / "train").glob("*")):
        records += [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    by_class: dict = {}
    for rec in records:
        label = tf.train.Example.FromString(rec).features.feature["label"].int64_list.value[0]
        by_class.setdefault(label, []).append(rec)
    chosen = []
    for label in sorted(by_class):
        recs = by_class[label]
        random.Random(seed + label).shuffle(recs)  # same order for every fraction: nested
        chosen += recs[:max(1, round(fraction * len(recs)))]
    random.Random(seed).shuffle(chosen)
    shutil.rmtree(out, ignore_errors=True)
    (out / "span-1" / "train").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(out / "span-1" / "train" / "part-00000.tfrecord")) as w:
        for rec in chosen:
            w.write(rec)
    shutil.copytree(full / "span-1" / "eval", out / "span-1" / "eval")
    shutil.copy(full / "labels.txt", out / "labels.txt")
    return {"train_images": len(chosen), "total_train_images": len(records)}


def time_to(history: list, thresholds=THRESHOLDS) -> dict:
    """First epoch (counted over both phases) and training seconds at which the validation
    accuracy reached each threshold; None when it never did."""
    out = {}
    for t in thresholds:
        out[str(t)] = None
        offset_epochs, offset_seconds = 0, 0.0
        for phase in history:
            accs = phase.get("val_accuracy") or []
            clock = phase.get("epoch_end_seconds") or []
            hit = next((i for i, a in enumerate(accs) if a >= t), None)
            if hit is not None:
                out[str(t)] = {"epoch": offset_epochs + hit + 1,
                               "seconds": round(offset_seconds + clock[hit], 1)}
                break
            offset_epochs += len(accs)
            offset_seconds += phase.get("seconds", 0.0)
    return out


def run_point(work: Path, arm: str, fraction: float, data: Path) -> dict:
    out = work / ("%s-%g" % (arm, fraction))
    shutil.rmtree(out, ignore_errors=True)
    log = work / ("%s-%g.log" % (arm, fraction))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--data", str(data), "--output", str(out),
           "--beam-mode", "in_memory", "--min-accuracy", "0", "--verbose"] + ARMS[arm]
    run = common.run_measured(cmd, log)
    text = log.read_text()
    if run["returncode"] != 0:
        raise SystemExit("%s %g failed, see %s" % (arm, fraction, log))
    summary = common.trainer_summary(text)
    history_path = next((out / "pipeline_root" / "Trainer" / "model_run").glob("*/history.json"))
    history = json.loads(history_path.read_text())
    phases = [h for h in (history.get("phase1"), history.get("phase2")) if h]
    seconds = common.component_seconds(common.component_windows(out / "metadata.sqlite"))
    p1, p2 = summary.get("phase1") or {}, summary.get("phase2") or {}
    return {
        "arm": arm, "fraction": fraction, "command": cmd[2:],
        "pipeline_seconds": run["seconds"], "peak_rss_single_mb": run["peak_rss_single_mb"],
        "trainer_seconds": seconds.get("Trainer"), "component_seconds": seconds,
        "evaluator_accuracy": common.eval_accuracy(text),
        "final_val_accuracy": summary["final_val_accuracy"],
        "phase1_val_accuracy": p1.get("val_accuracy"),
        "phase2_val_accuracy": p2.get("val_accuracy"), "phase2_kept": p2.get("kept"),
        "best_epoch_val_accuracy": max(a for h in phases for a in h.get("val_accuracy", [0])),
        "epochs_run": sum(len(h.get("val_accuracy", [])) for h in phases),
        "training_seconds": round(sum(h.get("seconds", 0) for h in phases), 1),
        "time_to_accuracy": time_to(phases),
        "val_accuracy_per_epoch": [[round(a, 4) for a in h.get("val_accuracy", [])]
                                   for h in phases],
        "epoch_end_seconds": [h.get("epoch_end_seconds", []) for h in phases],
        "phase_seconds": [round(h.get("seconds", 0), 1) for h in phases],
        "summary": summary,
    }


def plot(points: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm, style in (("transfer", "o-"), ("scratch", "s--")):
        pts = sorted((p for p in points if p["arm"] == arm), key=lambda p: p["fraction"])
        if pts:
            ax.plot([p["fraction"] * 100 for p in pts],
                    [p["evaluator_accuracy"] for p in pts], style,
                    label="%s (%s)" % (arm, "ImageNet Lite0, phase 1 + 2" if arm == "transfer"
                                       else "random init, all layers"))
            for p in pts:
                ax.annotate("%d img" % p["train_images"],
                            (p["fraction"] * 100, p["evaluator_accuracy"]),
                            textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.axhline(0.2, color="grey", lw=0.8, ls=":", label="chance (5 classes)")
    ax.set_xscale("log")
    ax.set_xticks([10, 25, 50, 100])
    ax.set_xticklabels(["10 %", "25 %", "50 %", "100 %"])
    ax.set_ylim(0, 1)
    ax.set_xlabel("fraction of the 796 flowers-dev training images")
    ax.set_ylabel("Evaluator accuracy (204 held-out images)")
    ax.set_title("EfficientNet-Lite0: transfer vs from scratch (2 CPU cores)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(points: list) -> str:
    rows = ["| data | images | init | Evaluator accuracy | best epoch's val accuracy | phase 1 "
            "| phase 1 + 2 | epochs run | training time | time to 0.5 | time to 0.8 |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]

    def reach(p, t):
        hit = p["time_to_accuracy"].get(str(t))
        return "never" if hit is None else "%d s (epoch %d)" % (hit["seconds"], hit["epoch"])

    for p in sorted(points, key=lambda p: (p["fraction"], p["arm"] != "transfer")):
        rows.append("| %d %% | %d | %s | %.3f | %.3f | %s | %s | %d | %.0f s | %s | %s |" % (
            p["fraction"] * 100, p["train_images"],
            "ImageNet" if p["arm"] == "transfer" else "random", p["evaluator_accuracy"],
            p["best_epoch_val_accuracy"],
            "%.3f" % p["phase1_val_accuracy"] if p["arm"] == "transfer" else "-",
            ("%.3f%s" % (p["phase2_val_accuracy"],
                         " (not kept)" if p["phase2_kept"] is False else ""))
            if p["phase2_val_accuracy"] is not None else "-",
            p["epochs_run"], p["training_seconds"], reach(p, 0.5), reach(p, 0.8)))
    return "\n".join(rows)


def claims(points: list) -> dict:
    """The seed's three claims, computed from the points: accuracy gain, data needed and
    training speed-up (seconds the scratch run needed to reach its best validation accuracy
    vs seconds transfer needed to reach the same accuracy, same data)."""
    by = {(q["arm"], q["fraction"]): q for q in points}
    out = {"per_fraction": []}
    for fraction in sorted({q["fraction"] for q in points}):
        t, s = by.get(("transfer", fraction)), by.get(("scratch", fraction))
        if not (t and s):
            continue
        best = max(a for phase in s["val_accuracy_per_epoch"] for a in phase)  # as recorded
        s_hit = time_to([{"val_accuracy": s["val_accuracy_per_epoch"][0],
                          "epoch_end_seconds": s["epoch_end_seconds"][0],
                          "seconds": s["training_seconds"]}], (best,))[str(best)]
        t_hit = time_to([{"val_accuracy": a, "epoch_end_seconds": c, "seconds": sec}
                         for a, c, sec in zip(t["val_accuracy_per_epoch"],
                                              t["epoch_end_seconds"], t["phase_seconds"])],
                        (best,))[str(best)]
        out["per_fraction"].append({
            "fraction": fraction,
            "accuracy_gain_points": round(100 * (t["evaluator_accuracy"]
                                                 - s["evaluator_accuracy"]), 1),
            "scratch_best_val_accuracy": best,
            "scratch_seconds_to_its_best": s_hit and s_hit["seconds"],
            "scratch_epochs_to_its_best": s_hit and s_hit["epoch"],
            "transfer_seconds_to_same": t_hit and t_hit["seconds"],
            "transfer_epochs_to_same": t_hit and t_hit["epoch"],
            "speedup": round(s_hit["seconds"] / t_hit["seconds"], 1)
            if s_hit and t_hit else None})
    full_scratch = by.get(("scratch", 1.0))
    if full_scratch:
        enough = [q["fraction"] for q in points if q["arm"] == "transfer"
                  and q["evaluator_accuracy"] >= full_scratch["evaluator_accuracy"]]
        out["smallest_transfer_fraction_beating_scratch_at_100"] = min(enough) if enough else None
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/graft-bench-tvs")
    p.add_argument("--only", choices=sorted(ARMS), default=None)
    p.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS))
    p.add_argument("--fresh", action="store_true", help="forget earlier points")
    p.add_argument("--report-only", action="store_true",
                   help="only redo the plot, claims and table from the results file")
    args = p.parse_args()
    work = common.flowers_work_dir(args.work)
    if work is None:
        return 0
    result_path = common.RESULTS / RESULT
    result = common.load_results(RESULT, args.fresh)
    if args.report_only:
        backfill(result["points"], work)
        return report(result, result_path)
    full = common.flowers_tfrecords(work)
    arms = [args.only] if args.only else ["scratch", "transfer"]
    for fraction in (float(f) for f in args.fractions.split(",")):
        data = work / ("data-%g" % fraction)
        counts = subset_data(full, data, fraction)
        for arm in arms:
            if any(q["arm"] == arm and q["fraction"] == fraction for q in result["points"]):
                continue
            print("running %s at %g %% of the training images (%d)"
                  % (arm, fraction * 100, counts["train_images"]), flush=True)
            point = dict(run_point(work, arm, fraction, data), **counts)
            result["points"].append(point)
            result["machine"] = common.machine()
            result["arms"] = ARMS
            result["thresholds"] = THRESHOLDS
            common.write_json(RESULT, result)
            print("  %s: Evaluator accuracy %.3f, %d epochs, %.0f s training"
                  % (arm, point["evaluator_accuracy"], point["epochs_run"],
                     point["training_seconds"]), flush=True)
    return report(result, result_path)


def backfill(points: list, work: Path) -> None:
    """Per-epoch clocks for points recorded before they were kept, from their history.json."""
    for q in points:
        if "epoch_end_seconds" in q:
            continue
        out = work / ("%s-%g" % (q["arm"], q["fraction"]))
        history = json.loads(next((out / "pipeline_root" / "Trainer" / "model_run")
                                  .glob("*/history.json")).read_text())
        phases = [h for h in (history.get("phase1"), history.get("phase2")) if h]
        q["epoch_end_seconds"] = [h.get("epoch_end_seconds", []) for h in phases]
        q["phase_seconds"] = [round(h.get("seconds", 0), 1) for h in phases]


def report(result: dict, result_path: Path) -> int:
    result["claims"] = claims(result["points"])
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result["points"], common.RESULTS / "transfer_vs_scratch.png")
    print(table(result["points"]))
    print(json.dumps(result["claims"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
