"""`graft predict --tflite FILE IMAGE... [--top-k K] [--json]`: local inference with a pushed
TFLite model, with the gRPC client's output contract (serving/client.py: per image the file
then '  CLASS_NAME PROBABILITY' lines, or one JSON line {"file", "predictions": [{"class",
"index", "probability"}]}; failures as 'error: FILE: MESSAGE' on stderr, exit status 1).

Each image is decoded and resized by the Transform graph's own ops, rounded to uint8 (what
the model was evaluated on, components/custom/tflite.py), then run by the TFLite interpreter.
Class names come from `labels.txt` beside the model file; without it a class prints as
'#INDEX' (JSON null).
"""
from __future__ import annotations

import argparse
import os
import sys

from serving.client import print_results, read_images


def read_labels(model_path: str) -> dict:
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "labels.txt")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return dict(enumerate(line.rstrip("\n") for line in f if line.strip()))


def main(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        print("error: --top-k must be at least 1", file=sys.stderr)
        return 2
    from components.custom import tflite
    try:
        runner = tflite.Runner(model_path=args.tflite)
    except (ValueError, OSError, RuntimeError) as e:
        print("error: %s: not a TFLite model (%s)" % (args.tflite, str(e).splitlines()[0]),
              file=sys.stderr)
        return 2
    results: list = []
    for path, data in read_images(args.images, results):
        try:
            image = tflite.decode_uint8([data], runner.size)[0]
        except ValueError as e:
            results.append((path, str(e).split(": ", 1)[-1]))
            continue
        probs = runner.predict_one(image).tolist()
        results.append((path, (probs, max(range(len(probs)), key=probs.__getitem__))))
    return print_results(results, read_labels(args.tflite), args.top_k, args.json)
