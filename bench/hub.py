"""Phase 2 on a TF Hub module vs the native backbone: EfficientNet-Lite0 exported as a TF2
SavedModel image feature vector in TF Hub's format (components/backbones/hub.py: ``export``),
trained through ``--backbone hub:<that directory>``, against native ``efficientnet_lite0``, on
flowers-dev with the Trainer's own ``train()`` (bench/plain_keras.py: same TFRecords, ops and
recipe as the pipeline, without TFX). Phase 1 sees the same features on both arms; phase 2
differs by design: the native base unfreezes its layers with BatchNorm layers frozen, the Hub
module is one block whose trainable variables (BatchNorm scale/offset included) all train,
its BatchNorm statistics in inference mode.

    .venv/bin/python -m bench.hub [--work /tmp/graft-bench-hub] [graft run training flags]

Extra flags go to both arms (e.g. --fine-tune-epochs 3). One run per arm (the config's seed,
42). Writes bench/results/hub.json.
"""
from __future__ import annotations

import argparse
import json
import sys

from bench import common


def run_arm(work, data, backbone: str, extra: list) -> dict:
    name = "hub" if backbone.startswith("hub:") else "native"
    out = work / (name + ".json")
    cmd = [sys.executable, "-m", "bench.plain_keras", "--data", str(data), "--json", str(out),
           "--backbone", backbone, *extra]
    run = common.run_measured(cmd, work / (name + ".log"))
    if run["returncode"] != 0:
        raise SystemExit("%s failed, see %s" % (name, work / (name + ".log")))
    return {"arm": name, "backbone": backbone, "seed": 42,
            "command": " ".join(["python"] + cmd[1:]), **json.loads(out.read_text()),
            "wall_seconds": run["seconds"], "peak_pss_tree_mb": run["peak_pss_tree_mb"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/graft-bench-hub")
    p.add_argument("--out", default="hub.json")
    args, extra = p.parse_known_args()
    work = common.flowers_work_dir(args.work)
    if work is None:
        return 0
    data = common.flowers_tfrecords(work)
    module = work / "lite0_hub_224"
    if not (module / "saved_model.pb").exists():
        export = common.run_measured(
            [sys.executable, "-c", "import components; from components.backbones import hub; "
             "hub.export('efficientnet_lite0', %r, 224)" % str(module)], work / "export.log")
        if export["returncode"] != 0:
            raise SystemExit("export failed, see %s" % (work / "export.log"))
    runs = []
    for backbone in ("efficientnet_lite0", "hub:%s" % module):  # one run each (seed 42)
        runs.append(run_arm(work, data, backbone, extra))
        print(json.dumps(runs[-1]))
    common.write_json(args.out, {
        "machine": common.machine(),
        "command": "python -m bench.hub " + " ".join(sys.argv[1:]),
        "data": "flowers-dev, graft make-tfrecords 80/20 split", "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
