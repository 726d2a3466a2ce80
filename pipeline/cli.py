"""`graft` command line: parse arguments, build a config, call the module that does the work.

The CLI holds no logic of its own. Heavy imports (TensorFlow, TFX) happen inside each
subcommand's handler so that `graft --help` answers instantly.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings


def _cmd_make_tfrecords(args: argparse.Namespace) -> int:
    from pipeline.data import make_tfrecords
    return make_tfrecords.main(args)


def _cmd_imagenet_predict(args: argparse.Namespace) -> int:
    from pipeline import imagenet_predict
    return imagenet_predict.main(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runners import local
    return local.main(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving import server
    if args.tf_serving:  # exec's tensorflow_model_server with the terminal as it is
        return server.main(args)
    from pipeline import configs, console
    with console.session(configs.DEFAULT_OUTPUT_DIR, "serve", args.verbose):
        return server.main(args)


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.tflite:
        from serving import tflite_predict
        return tflite_predict.main(args)
    if not args.model:
        print("error: --model is required (or --tflite FILE for local inference)",
              file=sys.stderr)
        return 2
    from serving import client
    return client.main(args)


def _cmd_kubeflow_compile(args: argparse.Namespace) -> int:
    from pipeline import configs, console
    from pipeline.kubeflow import compile as kubeflow_compile
    with console.session(configs.DEFAULT_OUTPUT_DIR, "kubeflow-compile", args.verbose):
        return kubeflow_compile.main(args)


def _cmd_kubeflow_submit(args: argparse.Namespace) -> int:
    from pipeline.kubeflow import submit
    return submit.main(args)


def _cmd_retrain(args: argparse.Namespace) -> int:
    from pipeline.runners import retrain
    return retrain.main(args)


def _add_kubeflow_parsers(sub) -> None:
    from pipeline import configs, console
    from pipeline.kubeflow import compile as kubeflow_compile
    k = configs.KubeflowSettings()
    kf = sub.add_parser("kubeflow", help="compile the pipeline for Kubeflow Pipelines 2.x, submit "
                        "runs and schedules (kubeflow/README.md)")
    kf_sub = kf.add_subparsers(dest="kubeflow_command", metavar="ACTION")
    kf_sub.required = True
    p = kf_sub.add_parser("compile", help="write the KFP pipeline spec (YAML)",
                          description="Compile the graft DAG with TFX's KubeflowV2DagRunner; "
                          "the Trainer requests GPUs.")
    kubeflow_compile.add_compile_arguments(p)
    console.add_verbose_argument(p, "graft-output/logs")
    p.set_defaults(func=_cmd_kubeflow_compile)
    p = kf_sub.add_parser("submit", help="upload the spec and start a run or a cron schedule")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://127.0.0.1:8080")
    p.add_argument("--package", default=k.package, help="spec to upload (default %(default)s)")
    p.add_argument("--experiment", default=k.experiment, help="default %(default)s")
    p.add_argument("--run-name", default=None, help="run (or recurring run) display name")
    p.add_argument("--pipeline-name", default=None, help="default: the spec's pipeline name")
    p.add_argument("--schedule", default=None, metavar="CRON",
                   help="recurring run on this cron ('0 3 * * *' or KFP's 6-field form)")
    p.add_argument("--max-concurrency", type=int, default=k.max_concurrency,
                   help="concurrent runs of the schedule (default %(default)s)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="run parameter (data_root, serving_dir); repeatable")
    p.add_argument("--pipeline-root", default=None, help="override the spec's pipeline root")
    p.add_argument("--namespace", default=None, help="multi-user KFP: the profile namespace")
    p.add_argument("--service-account", default=None)
    p.set_defaults(func=_cmd_kubeflow_submit)


def build_parser() -> argparse.ArgumentParser:
    from pipeline.data import make_tfrecords  # no TensorFlow at import: the defaults
    parser = argparse.ArgumentParser(
        prog="graft",
        description="Transfer learning from pretrained ImageNet backbones as a TFX pipeline, "
        "served by TF Serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "make-tfrecords",
        help="convert class folders of images into sharded image TFRecords",
        description="Convert IMAGES_DIR/<class>/*.jpg|png|... into TFRecords of tf.Example "
        "(image bytes, int64 label, label text, file name) laid out as "
        "OUT_DIR/span-N/{train,eval,test}/*.tfrecord plus OUT_DIR/labels.txt.",
    )
    p.add_argument("images_dir", metavar="IMAGES_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--eval-fraction", type=float, default=make_tfrecords.DEFAULT_EVAL_FRACTION,
                   help="fraction of each class for the eval split: early stopping and "
                   "phase choice (default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=make_tfrecords.DEFAULT_TEST_FRACTION,
                   help="fraction of each class for the test split, which only the blessing "
                   "gate reads (default %(default)s; 0 = no test split, train/eval only)")
    p.add_argument("--span", type=int, default=1, help="span number to write (default 1)")
    p.add_argument("--shards", type=int, default=2, help="shards per split (default 2)")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first bad file instead of skipping and counting it")
    p.set_defaults(func=_cmd_make_tfrecords)

    p = sub.add_parser(
        "imagenet-predict",
        help="print the top-5 ImageNet classes of images with a backbone's own head",
        description="Check that a backbone's weights and preprocessing are right: prints, per "
        "image, five lines 'INDEX NAME PROBABILITY'.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="backbone name (default efficientnet_lite0, offline)")
    p.add_argument("--weights", default=None,
                   help="'imagenet' (default) or a local weights file")
    p.set_defaults(func=_cmd_imagenet_predict)

    p = sub.add_parser(
        "run",
        help="run the TFX pipeline on the local Beam runner",
        description="ExampleGen -> statistics/schema/validation -> Transform -> Trainer -> "
        "Evaluator -> Pusher -> TFLite export on the local Beam runner. Without --data it "
        "trains on an embedded offline data set.",
    )
    from pipeline import configs, console
    configs.add_run_arguments(p)
    console.add_verbose_argument(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "serve",
        help="serve pushed models over TF Serving's gRPC API (development server)",
    )
    p.add_argument("--model-base-path", required=True, help="SERVING_DIR/MODEL_NAME")
    p.add_argument("--model-name", required=True)
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--poll-seconds", type=float, default=2.0,
                   help="how often to look for a newly pushed version (default 2)")
    from serving import flags as serving_flags
    serving_flags.add_serve_arguments(p)
    p.add_argument("--tf-serving", action="store_true",
                   help="exec the real tensorflow_model_server (must be on PATH)")
    console.add_verbose_argument(p, "graft-output/logs")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "predict",
        help="classify images through a TF Serving gRPC endpoint (or a local TFLite model)",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--server", default="127.0.0.1:8500", help="HOST:PORT (default 127.0.0.1:8500)")
    p.add_argument("--model", default=None, help="model name (required without --tflite)")
    p.add_argument("--tflite", default=None, metavar="FILE",
                   help="run this model.tflite locally instead (labels.txt beside it names "
                        "the classes); same output")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="one JSON object per line and image")
    serving_flags.add_predict_arguments(p)
    p.set_defaults(func=_cmd_predict)

    _add_kubeflow_parsers(sub)

    p = sub.add_parser(
        "retrain",
        help="run the pipeline only if the newest span of --data is not trained yet",
        description="Scheduled retraining on this machine (cron, systemd timer): runs `graft "
        "run` when the newest span-N of DATA has no finished Trainer in OUTPUT/metadata.sqlite; "
        "exits 0 with 'nothing new' otherwise, 3 when another retrain holds "
        "OUTPUT/retrain.lock (kubeflow/README.md).",
    )
    configs.add_run_arguments(p)
    console.add_verbose_argument(p)
    p.set_defaults(func=_cmd_retrain)
    return parser


def _quiet() -> None:
    """Keep TensorFlow's C++ start-up chatter and Google client FutureWarnings out of the
    user's terminal (inherited by Beam worker processes); explicit settings win."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    _quiet()
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def entry() -> None:
    """The `graft` command (and `python -m pipeline.cli`): main(), then, when it returned, an
    exit without the interpreter's teardown. Everything a normal exit does for the program
    still happens (non-daemon threads joined, every atexit handler run: logging flushed,
    temporary files removed, weakref finalizers; stdout and stderr flushed); what is skipped
    is the module teardown and TensorFlow's C++ destructors, which took 3.1 s after a
    `graft run` had finished (0.2 s without; a flowers-dev run, quiet 2-core machine). An
    exception or SystemExit out of main() exits the normal way."""
    code = main()
    exit_without_teardown(code)


def exit_without_teardown(code: int) -> None:
    import atexit
    import threading
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
