"""`graft run`: the pipeline on TFX's LocalDagRunner with the Beam DirectRunner.

The runner owns the paths (output dir, pipeline root, SQLite ML Metadata, serving dir),
prepares the input data (the demo photos shipped with graft, class folders, or image
TFRecords), runs create_pipeline() and prints a summary read back from ML Metadata, then writes
OUTPUT/report.html (pipeline/reporting/), failed runs included. The report's costly sections
are computed by a helper process while the pipeline runs (pipeline/runners/report_prefetch.py).

What the user sees (pipeline/console.py): one line per component as it starts and finishes
(pipeline/runners/follow.py), the Trainer's progress (components/progress.py) and the summary,
which compares the model with a logistic regression on raw pixels of the same split
(pipeline/reporting/pixel_baseline.py); TensorFlow, absl, Beam and pip write to
OUTPUT/logs/run-*.log, named in the summary. A failure ends with one line `error: ...` on
stderr (no traceback), which names the log.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time

from pipeline import configs, console
from pipeline.configs import COMPONENTS_DIR
from pipeline.data import splits

FLOWERS_URL = ("https://storage.googleapis.com/download.tensorflow.org/example_images/"
               "flower_photos.tgz")


def code_version() -> str:
    """Hash of the code the components import from components/ (top-level modules and
    sub-packages such as backbones/; not custom/, whose components TFX runs in-process and
    whose edits need not retrain). The local runner names the Transform/Trainer functions by
    import path, so no user-code wheel's hash does this: editing it must invalidate the
    Transform/Trainer cache."""
    h = hashlib.sha256()
    # os.walk itself (not sorted(os.walk)) so that pruning `dirs` really skips custom/.
    for root, dirs, files in os.walk(COMPONENTS_DIR):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "custom"))
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
    from pipeline.data import demo, make_tfrecords
    if not data:
        return demo.build(output_dir), True
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
    """Compile and run the pipeline in this process (Transform/Trainer by import path: no
    user-code wheel is built or pip-installed; code_version keys their cache; no TFX source
    package is built for the DirectRunner: tfx_sdist)."""
    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline
    from pipeline.runners import tfx_sdist
    os.makedirs(config.output_dir, exist_ok=True)
    pipeline = create_pipeline(
        config, beam_pipeline_args=config.beam_args(),
        metadata_connection_config=tfx.orchestration.metadata
        .sqlite_metadata_connection_config(config.metadata_path), module_files=False)
    with tfx_sdist.skipped_for_direct_runner(), own_argv_only():
        tfx.orchestration.LocalDagRunner().run(pipeline)


@contextlib.contextmanager
def own_argv_only():
    """sys.argv without graft's flags while the pipeline runs: absl parses sys.argv again
    with the Beam pipeline's arguments after it, and absl's `-v` (--verbosity) then took
    `graft run -v`'s next word, a Beam flag, as its value: ImportExampleGen failed with
    "invalid literal for int() ... '--direct_running_mode=in_memory'"."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


def main(args) -> int:
    output = os.path.abspath(args.output)
    with console.session(output, "run", getattr(args, "verbose", False)):
        return _main(args, output)


def _main(args, output: str) -> int:
    from pipeline.runners import follow, report_prefetch
    start = time.time()
    try:
        data_dir, demo = prepare_data(args.data, output)
        config = configs.from_args(
            args, data_dir=os.path.abspath(data_dir),
            label_names=configs.read_label_names(data_dir), output_dir=output,
            serving_dir=os.path.abspath(args.serving_dir) if args.serving_dir else "",
            code_version=code_version())
        handle = config.training.backbone[len("hub:"):]
        if config.training.backbone.startswith("hub:") and "://" not in handle \
                and not os.path.isdir(handle):
            raise FileNotFoundError("--backbone hub:%s: no such SavedModel directory" % handle)
        config, gate_note = splits.resolve(config)  # test split, or eval with a note
    except (OSError, ValueError) as e:
        from pipeline.reporting import errors
        console.error(errors.error_line(e, output))
        return 2
    t = config.training
    console.say("graft run: %d classes from %s, backbone %s at %d px, output %s"
                % (t.num_classes, "the demo photos (pipeline/data/demo_flowers, NOTICE)"
                   if demo else config.data_dir, t.backbone, t.input_size(),
                   config.output_dir))
    if gate_note:
        console.say("graft run: %s" % gate_note)
    failed = None
    prefetch = report_prefetch.Prefetch(config).start()
    follower = follow.Follower(config.metadata_path, start, console.say,
                               on_finish=prefetch.on_finish).start()
    try:
        run(config)
    except Exception as e:  # the summary still says which components finished
        failed = e
    except BaseException:  # e.g. Ctrl-C: no report work to wait for
        prefetch.stop()
        raise
    finally:
        follower.stop()
    prefetch.wait()
    return finish(config, start, failed)


def _pixel_baseline(config, run_facts: dict, since: float) -> None:
    """run_facts["pixel_baseline"]: the logistic regression on raw pixels of the same split,
    for a run that has an eval accuracy to compare with."""
    from pipeline.reporting import pixel_baseline
    span = run_facts["data"].get("span")
    if run_facts["failed"] is not None or span is None \
            or run_facts["evaluation"].get("accuracy") is None:
        return
    try:
        run_facts["pixel_baseline"] = pixel_baseline.for_run(config, span, since)
    except Exception as e:  # noqa: BLE001 - a yardstick must not fail a finished run
        run_facts["notes"].append("pixel baseline: not computed (%s)" % e)


def finish(config: configs.PipelineConfig, start: float, failed: Exception | None) -> int:
    """Summary, report, and for a failure one last `error: ...` line on stderr."""
    from pipeline.reporting import errors, facts, report, summary
    run_facts = None
    try:
        run_facts = facts.collect(config, time.time() - start, failed, since=start)
        _pixel_baseline(config, run_facts, start)
        console.say(summary.format_summary(run_facts))
    except Exception as e:  # noqa: BLE001 - e.g. a full disk; the error line still comes
        console.say("graft run summary unavailable: %s" % errors.root_message(e))
    try:
        if run_facts is None:
            raise RuntimeError("no facts of the run to report")
        console.say("  report: %s" % report.write(run_facts))
    except Exception as e:  # noqa: BLE001
        console.say("  report: not written (%s)" % errors.root_message(e))
    session = console.current()
    if session is not None and session.log_path:
        console.say("  log: %s (TensorFlow, Beam, pip; -v shows it here)" % session.log_path)
    if failed is not None:
        console.error(errors.error_line(failed, config.output_dir))
        return 1
    return 0
