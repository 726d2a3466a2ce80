"""The pipeline's tail run concurrently: would the Evaluator and TFLiteExport, which need
only the Trainer's model and the examples, finish sooner side by side than one after the
other (TFX's LocalDagRunner runs components one at a time)?

On a finished `graft run` (its pipeline root: the Trainer's model, ImageCheck's examples),
the same work three ways, each in fresh processes after the imports:
- `sequential`: TFX's Evaluator executor (the pipeline's eval config, in-memory Beam), then
  TFLiteExport's conversion and comparison (components/custom/tflite_export.export), in one
  process;
- `threads`: the two in two threads of one process (what a threaded local runner would do);
- `processes`: each in its own process, both started together once both have imported.

    .venv/bin/python -m bench.concurrent_tail --run OUTPUT_DIR [--data TFRECORDS_DIR]
        [--out concurrent_tail.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import components  # noqa: F401 - the Keras choice, made before TensorFlow is imported
from bench import common


def _inputs(run: str) -> tuple[str, str]:
    """The run's newest Trainer model and ImageCheck examples (artifact directories)."""
    root = os.path.join(run, "pipeline_root")
    return (common.newest(os.path.join(root, "Trainer", "model", "[0-9]*")),
            common.newest(os.path.join(root, "ImageCheck", "cleaned_examples", "[0-9]*")))


def _config(labels):
    from pipeline import configs
    p = argparse.ArgumentParser()
    configs.add_config_arguments(p)
    return configs.from_args(p.parse_args([]), data_dir="/tmp", label_names=labels,
                             output_dir="/tmp")


def tasks(run: str, scratch: str, labels) -> dict:
    """{'evaluator': fn, 'tflite': fn}: each returns its seconds."""
    from tfx.components.evaluator.executor import Executor
    from tfx.types import artifact_utils, standard_artifacts
    from tfx.utils import proto_utils

    from components.custom import tflite_export
    from pipeline.pipeline import eval_config
    config = _config(labels)
    model_uri, examples_uri = _inputs(run)
    splits = [n[len("Split-"):] for n in sorted(os.listdir(examples_uri))
              if n.startswith("Split-")]

    def evaluator() -> float:
        start = time.time()
        examples = standard_artifacts.Examples()
        examples.uri, examples.split_names = examples_uri, artifact_utils.encode_split_names(
            splits)
        model = standard_artifacts.Model()
        model.uri = model_uri
        evaluation, blessing = standard_artifacts.ModelEvaluation(), \
            standard_artifacts.ModelBlessing()
        evaluation.uri, blessing.uri = (os.path.join(scratch, "evaluation"),
                                        os.path.join(scratch, "blessing"))
        context = Executor.Context(beam_pipeline_args=config.beam_args(),
                                   tmp_dir=os.path.join(scratch, "tmp"), unique_id="bench")
        Executor(context).Do(
            {"examples": [examples], "model": [model]},
            {"evaluation": [evaluation], "blessing": [blessing]},
            {"eval_config": proto_utils.proto_to_json(eval_config(config)),
             "example_splits": json.dumps([config.gate_split]),
             "fairness_indicator_thresholds": "null"})
        return time.time() - start

    def tflite() -> float:
        start = time.time()
        out = os.path.join(scratch, "tflite")
        os.makedirs(out, exist_ok=True)
        tflite_export.export(os.path.join(model_uri, "Format-Serving"), examples_uri, splits,
                             config.training, config.tflite, out)
        return time.time() - start

    return {"evaluator": evaluator, "tflite": tflite}


def _child(args) -> int:
    """One way (or one task of `processes`), after the imports; prints a JSON line."""
    with tempfile.TemporaryDirectory() as scratch:
        fns = tasks(args.run, scratch, args.labels.split(","))
        if args.go:  # processes: wait until both children have imported
            open(args.go + "." + args.child, "w").close()
            while not os.path.exists(args.go):
                time.sleep(0.01)
        start = time.time()
        if args.child == "sequential":
            out = {name: round(fn(), 1) for name, fn in fns.items()}
        elif args.child == "threads":
            out = {}
            side = threading.Thread(target=lambda: out.update(tflite=round(fns["tflite"](), 1)))
            side.start()
            out["evaluator"] = round(fns["evaluator"](), 1)
            side.join()
        else:
            out = {args.child: round(fns[args.child](), 1)}
        out["wall"] = round(time.time() - start, 1)
        out["end"] = time.time()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def _result(stdout: str) -> dict:
    """A child's RESULT line."""
    return json.loads(next(line for line in stdout.splitlines()
                           if line.startswith("RESULT "))[len("RESULT "):])


def _run_child(cmd: list, log) -> dict:
    return _result(subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                  check=True).stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished graft run's output directory")
    p.add_argument("--data", default="", help="the directory with labels.txt (default: "
                   "RUN/../tfrecords, where bench.pipeline_flowers writes them)")
    p.add_argument("--labels", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="concurrent_tail.json")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--go", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)
    me = [sys.executable, "-m", "bench.concurrent_tail", "--run", args.run,
          "--labels", ",".join(common.run_label_names(args.run, args.data))]
    result = {"machine": common.machine(), "run": args.run,
              "command": " ".join(["python -m bench.concurrent_tail"] + sys.argv[1:])}
    with open(os.devnull, "w") as log:
        for way in ("sequential", "threads"):
            result[way] = _run_child(me + ["--child", way], log)
            result[way].pop("end")
            print(way, result[way], flush=True)
        with tempfile.TemporaryDirectory() as gate:
            go = os.path.join(gate, "go")
            procs = {name: subprocess.Popen(me + ["--child", name, "--go", go],
                                            stdout=subprocess.PIPE, stderr=log, text=True)
                     for name in ("evaluator", "tflite")}
            while not all(os.path.exists(go + "." + name) for name in procs):
                time.sleep(0.05)
            start = time.time()
            open(go, "w").close()
            outs = {}
            for name, proc in procs.items():
                outs[name] = _result(proc.communicate()[0])
        result["processes"] = {name: o[name] for name, o in outs.items()}
        result["processes"]["wall"] = round(max(o["end"] for o in outs.values()) - start, 1)
        print("processes", result["processes"], flush=True)
    seq = result["sequential"]["wall"]
    result["saved_seconds"] = {way: round(seq - result[way]["wall"], 1)
                               for way in ("threads", "processes")}
    path = common.write_json(args.out, result)
    print(json.dumps(result["saved_seconds"]), "wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
