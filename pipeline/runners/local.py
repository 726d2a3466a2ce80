"""`graft run`: the pipeline on TFX's LocalDagRunner with the Beam DirectRunner.

The runner owns the paths (output dir, pipeline root, SQLite ML Metadata, serving dir),
prepares the input data (embedded demo set, class folders, or image TFRecords), runs
create_pipeline() and prints a summary read back from ML Metadata, then writes
OUTPUT/report.html (pipeline/reporting/), failed runs included. A failure ends with one line
`error: ...` on stderr (no traceback).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time

from pipeline import configs
from pipeline.configs import COMPONENTS_DIR
from pipeline.data import splits

FLOWERS_URL = ("https://storage.googleapis.com/download.tensorflow.org/example_images/"
               "flower_photos.tgz")


def code_version() -> str:
    """Hash of the component code that TFX does not hash itself (sub-packages of components/,
    e.g. backbones/): editing it must invalidate the Transform/Trainer cache."""
    h = hashlib.sha256()
    # os.walk itself (not sorted(os.walk)) so that pruning `dirs` really skips custom/.
    for root, dirs, files in os.walk(COMPONENTS_DIR):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "custom"))
        if root == COMPONENTS_DIR:
            continue  # top-level modules are hashed by TFX's user-code wheel
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                h.update(os.path.relpath(path, COMPONENTS_DIR).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


def _is_tfrecord_dir(path: str) -> bool:
    return any(name.startswith("span-") for name in os.listdir(path)) or \
        os.path.exists(os.path.join(path, "labels.txt")) and not _has_class_folders(path)


def _has_class_folders(path: str) -> bool:
    return any(os.path.isdir(os.path.join(path, n)) and not n.startswith("span-")
               for n in os.listdir(path))


def prepare_data(data: str, output_dir: str) -> tuple[str, bool]:
    """Returns (TFRecords data dir, is_demo)."""
    from pipeline.data import demo_dataset, make_tfrecords
    if not data:
        root = os.path.join(output_dir, "demo-data")
        return demo_dataset.build(root, per_class=configs.DEMO_PER_CLASS,
                                  image_size=configs.DEMO_PNG_SIZE), True
    if data == "flowers":
        import tensorflow as tf
        archive = tf.keras.utils.get_file("flower_photos.tgz", FLOWERS_URL, extract=True)
        data = os.path.join(os.path.dirname(archive), "flower_photos")
    if not os.path.isdir(data):
        raise FileNotFoundError("--data %s is not a directory" % data)
    if _is_tfrecord_dir(data):
        return data, False
    out = os.path.join(output_dir, "data", os.path.basename(os.path.normpath(data)))
    if not os.path.isdir(os.path.join(out, "span-1")):
        make_tfrecords.convert(data, out)
    return out, False


def run(config: configs.PipelineConfig) -> None:
    """Compile and run the pipeline in this process."""
    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline
    os.makedirs(config.output_dir, exist_ok=True)
    pipeline = create_pipeline(
        config, beam_pipeline_args=config.beam_args(),
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(config.metadata_path))
    tfx.orchestration.LocalDagRunner().run(pipeline)


def main(args) -> int:
    start = time.time()
    try:
        data_dir, demo = prepare_data(args.data, os.path.abspath(args.output))
        config = configs.from_args(
            args, data_dir=os.path.abspath(data_dir),
            label_names=configs.read_label_names(data_dir),
            output_dir=os.path.abspath(args.output),
            serving_dir=os.path.abspath(args.serving_dir) if args.serving_dir else "",
            demo=demo, code_version=code_version())
        config, gate_note = splits.resolve(config)  # test split, or eval with a note
    except (OSError, ValueError) as e:
        from pipeline.reporting import errors
        print("error: %s" % errors.error_line(e, os.path.abspath(args.output)), file=sys.stderr)
        return 2
    print("graft run: %d classes from %s, backbone %s, output %s"
          % (config.training.num_classes, config.data_dir, config.training.backbone,
             config.output_dir),
          flush=True)
    if gate_note:
        print("graft run: %s" % gate_note, flush=True)
    failed = None
    try:
        run(config)
    except Exception as e:  # the summary still says which components finished
        failed = e
    return finish(config, start, failed)


def finish(config: configs.PipelineConfig, start: float, failed: Exception | None) -> int:
    """Summary, report, and for a failure one last `error: ...` line on stderr."""
    from pipeline.reporting import errors, facts, report, summary
    run_facts = None
    try:
        run_facts = facts.collect(config, time.time() - start, failed, since=start)
        print(summary.format_summary(run_facts), flush=True)
    except Exception as e:  # noqa: BLE001 - e.g. a full disk; the error line still comes
        print("graft run summary unavailable: %s" % errors.root_message(e), flush=True)
    try:
        if run_facts is None:
            raise RuntimeError("no facts of the run to report")
        print("  report: %s" % report.write(run_facts), flush=True)
    except Exception as e:  # noqa: BLE001
        print("  report: not written (%s)" % errors.root_message(e), flush=True)
    if failed is not None:
        print("error: %s" % errors.error_line(failed, config.output_dir), file=sys.stderr,
              flush=True)
        return 1
    return 0
