"""Benchmark: the full pipeline on ../shared/data/flowers-dev vs the same training as a plain
Keras script.

Measures validation accuracy after each phase, wall time per component (from ML Metadata),
peak RSS of the process tree (Beam workers included), Transform output bytes vs the raw
TFRecords, and the ratio pipeline wall time / plain Keras wall time.
Writes bench/results/pipeline_flowers.json and prints a markdown table.

    .venv/bin/python -m bench.pipeline_flowers [--work /tmp/graft-bench] [--beam-mode ...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench import common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/graft-bench-flowers")
    p.add_argument("--beam-mode", default="multi_processing")
    p.add_argument("--skip-plain", action="store_true")
    args = p.parse_args()
    if not common.FLOWERS.is_dir():
        print("skipped: %s is absent" % common.FLOWERS)
        return 0
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py = sys.executable
    data = work / "tfrecords"
    conv = common.run_measured([py, "-m", "pipeline.cli", "make-tfrecords", str(common.FLOWERS),
                                str(data)], work / "make_tfrecords.log")
    out = work / "out"
    run = common.run_measured([py, "-m", "pipeline.cli", "run", "--data", str(data), "--output",
                               str(out), "--beam-mode", args.beam_mode, "--min-accuracy", "0.8"],
                              work / "run.log")
    log = (work / "run.log").read_text()
    summary_lines = log[log.rfind("graft run summary"):].splitlines()
    trainer_summary = common.trainer_summary(log)
    raw_bytes = common.dir_bytes(data / "span-1")
    transform_dirs = list((out / "pipeline_root").glob("Transform/*/*"))
    transform_bytes = sum(common.dir_bytes(d) for d in transform_dirs)
    stats_bytes = sum(common.dir_bytes(d) for d in (out / "pipeline_root").glob("StatisticsGen/*"))
    result = {
        "machine": common.machine(),
        "make_tfrecords_seconds": conv["seconds"],
        "pipeline": run,
        "component_seconds": common.component_seconds(out / "metadata.sqlite"),
        "training": trainer_summary,
        "summary": summary_lines,
        "raw_tfrecord_bytes": raw_bytes,
        "transform_output_bytes": transform_bytes,
        "transform_to_raw_ratio": round(transform_bytes / raw_bytes, 4),
        "statistics_bytes": stats_bytes,
    }
    if not args.skip_plain:
        plain = common.run_measured([py, "-m", "bench.plain_keras",
                                     "--data", str(data), "--json", str(work / "plain.json")],
                                    work / "plain.log")
        plain_result = json.loads((work / "plain.json").read_text())
        result["plain_keras"] = dict(plain, **plain_result)
        result["pipeline_to_plain_ratio"] = round(run["seconds"] / plain["seconds"], 2)
    path = common.write_json("pipeline_flowers.json", result)
    print(json.dumps(result, indent=1))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
