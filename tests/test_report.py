"""The run report and summary without a pipeline: the HTML writer on synthetic facts, the
summary text of the same facts, TFMA parsing helpers, a report of a run that failed before ML
Metadata existed, and (when chromium is installed) a headless render. The report of real runs
is checked at the end of tests/test_pipeline_e2e.py (it reuses that module's runs)."""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess

import pytest

from pipeline import configs
from pipeline.reporting import facts, html as report_html, report, summary

NAMES = ["cat", "dog", "fish"]


def _png() -> str:
    return base64.b64encode(facts.confusion_png([[5, 1, 0], [0, 6, 0], [1, 0, 4]], NAMES)
                            ).decode()


def synthetic_facts(**overrides) -> dict:
    run = {
        "title": "graft run report", "generated": "2030-01-01 00:00:00", "seconds": 93.0,
        "output_dir": "/out", "data_dir": "/data", "backbone": "efficientnet_lite0",
        "model_name": "pets", "min_accuracy": 0.5, "label_names": NAMES, "failed": None,
        "components": [{"node": "ImportExampleGen", "state": "CACHED", "seconds": 0.0},
                       {"node": "ImageCheck", "state": "COMPLETE", "seconds": 1.5},
                       {"node": "Trainer", "state": "COMPLETE", "seconds": 80.2}],
        "data": {"label_names": NAMES, "span": 3,
                 "splits": {"train": {"records": 31, "bad": 1,
                                      "label_counts": {"0": 10, "1": 11, "2": 9}},
                            "eval": {"records": 17, "bad": 0,
                                     "label_counts": {"0": 6, "1": 6, "2": 5}}},
                 "bad_records": [{"split": "train", "file": "Split-train/d-0.gz", "index": 4,
                                  "filename": "cats/<broken>.jpg", "label": 0,
                                  "error": "jpeg::Uncompress failed"}],
                 "anomalies": {"train": [], "eval": ["feature 'label': new value"]}},
        "data_gate": "COMPLETE",
        "training": {"summary": {"phase1": {"epoch": 3, "epochs_run": 5, "val_accuracy": 0.8,
                                            "val_loss": 0.5, "seconds": 40},
                                 "phase2": {}, "final_val_accuracy": 0.82},
                     "history_png": _png()},
        "evaluation": {"accuracy": 0.8235, "example_count": 17.0, "model": "candidate",
                       "recall": {0: 0.8333, 1: 1.0, 2: 0.6}, "confusion": [[5, 1, 0]],
                       "confusion_png": _png(), "failures": []},
        "blessing": {"blessed": True, "reason": "eval accuracy 0.8235 >= the floor 0.500"},
        "push": {"pushed": 1, "pushed_version": 17, "pushed_destination": "/srv/pets/17",
                 "push_reason": "pushed as version 17"},
        "notes": [],
    }
    run.update(overrides)
    return run


def test_html_has_counts_blessing_recall_images_and_no_external_assets():
    html = report_html.render(synthetic_facts())
    assert html.startswith("<!DOCTYPE html>")
    rows = re.findall(r'<tr class="class-count"><td>(\w+)</td><td class="num">(\d+)</td>'
                      r'<td class="num">(\d+)</td></tr>', html)
    assert rows == [("cat", "10", "6"), ("dog", "11", "6"), ("fish", "9", "5")]
    assert "blessed: yes" in html and "BLESSED, PUSHED" in html
    assert "/srv/pets/17" in html
    recalls = re.findall(r'<tr class="recall"><td>(\w+)</td><td class="num">([\d.]+)</td>', html)
    assert recalls == [("cat", "0.8333"), ("dog", "1.0000"), ("fish", "0.6000")]
    assert html.count('src="data:image/png;base64,') == 2
    assert "cats/&lt;broken&gt;.jpg" in html  # escaped
    assert "feature &#x27;label&#x27;: new value" in html
    assert "80.2 s" in html and "cached" in html
    for external in ("http://", "https://", "<link", "<script", "@import"):
        assert external not in html


def test_failed_and_not_blessed_runs():
    html = report_html.render(synthetic_facts(
        failed="CorruptImages: split 'eval': 5 of 17 records <bad>", blessing={}, push={},
        evaluation={}, training={}))
    assert "FAILED" in html and "split &#x27;eval&#x27;: 5 of 17 records &lt;bad&gt;" in html
    assert "blessed: unknown" in html and "not pushed: the pusher did not run" in html
    html = report_html.render(synthetic_facts(
        blessing={"blessed": False, "reason": "sparse_categorical_accuracy 0.4 below the "
                  "floor 0.5"},
        push={"pushed": 0, "push_reason": "model not blessed by the Evaluator"}))
    assert "NOT BLESSED" in html and "blessed: no" in html and "below the floor 0.5" in html
    assert "not pushed: model not blessed by the Evaluator" in html


def test_confusion_matrix_fills_tfma_omitted_zero_ids():
    plots = [((), {"": {"": {"multiClassConfusionMatrixAtThresholds": {"matrices": [{
        "entries": [{"numWeightedExamples": 4.0},
                    {"actualClassId": 1, "predictedClassId": 2, "numWeightedExamples": 1.0},
                    {"actualClassId": 2, "numWeightedExamples": 2.0},
                    {"actualClassId": 2, "predictedClassId": -1, "numWeightedExamples": 9.0}]
    }]}}}})]
    assert facts.confusion_matrix(plots, 3) == [[4, 0, 0], [0, 0, 1], [2, 0, 0]]
    assert facts.confusion_matrix([], 3) is None


def test_validation_failure_in_words():
    from tensorflow_model_analysis.proto import validation_result_pb2

    failure = validation_result_pb2.ValidationFailure()
    failure.metric_key.name = "sparse_categorical_accuracy"
    failure.metric_value.double_value.value = 0.42
    failure.metric_threshold.value_threshold.lower_bound.value = 0.5
    assert facts.failure_text(failure) == "sparse_categorical_accuracy 0.4200 below the floor 0.5"
    failure = validation_result_pb2.ValidationFailure()
    failure.metric_key.name = "sparse_categorical_accuracy"
    failure.metric_key.is_diff = True
    failure.metric_value.double_value.value = -0.05
    failure.metric_threshold.change_threshold.absolute.value = -1e-10
    assert "-0.0500 against the last blessed model" in facts.failure_text(failure)


def test_report_of_a_run_that_never_reached_ml_metadata(tmp_path):
    config = configs.PipelineConfig(output_dir=str(tmp_path),
                                    training=configs.TrainingConfig(label_names=tuple(NAMES)))
    run = facts.collect(config, 1.0, RuntimeError("boom <x>"))
    path = report.write(run)
    html = open(path).read()
    assert "RuntimeError: boom &lt;x&gt;" in html and "no ML Metadata" in html
    assert summary.format_summary(run) == ("\ngraft run summary (1 s)\n"
                                           "  components: none started\n"
                                           "  FAILED: RuntimeError: boom <x>")


def test_summary_of_the_facts():
    assert summary.format_summary(synthetic_facts()).splitlines() == [
        "",
        "graft run summary (93 s)",
        "  components: ImportExampleGen cached, ImageCheck complete, Trainer complete",
        "  bad images: 1 records dropped (image does not decode):",
        "    train d-0.gz record 4 (cats/<broken>.jpg): jpeg::Uncompress failed",
        "  phase 1: val_accuracy 0.8000 (best epoch 3 of 5, 40 s)",
        "  blessed: yes (eval accuracy 0.8235: accuracy >= 0.500 and not worse than the last "
        "blessed model, if any)",
        "  push: pushed as version 17",
        "  model: /srv/pets/17",
        "  serve: graft serve --model-base-path /srv/pets --model-name pets",
        "  query: graft predict --server 127.0.0.1:8500 --model pets IMAGE...",
    ]
    text = summary.format_summary(synthetic_facts(
        failed="CorruptImages: too many", blessing={}, push={}, evaluation={}, training={},
        data={}, components=[{"node": "ImportExampleGen", "state": "COMPLETE", "seconds": 1.0},
                             {"node": "latest_blessed_model_resolver", "state": "COMPLETE",
                              "seconds": 0.0},
                             {"node": "ImageCheck", "state": "FAILED", "seconds": 1.0}]))
    assert text.splitlines()[2:] == [
        "  components: ImportExampleGen complete, ImageCheck failed",
        "  FAILED: CorruptImages: too many",
        "  (finished components stay cached: rerun the same command to resume)",
    ]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-headless-shell")


def _thumb(rgb) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (96, 72), rgb).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def synthetic_diagnostics() -> dict:
    """Diagnostics as diagnostics.collect() makes them: a warning of each kind, a gallery."""
    top = [{"filename": "cats/img_%02d<b>.jpg" % i, "true": NAMES[i % 3],
            "predicted": NAMES[(i + 1) % 3], "probability": 0.99 - 0.02 * i,
            "true_probability": 0.005, "thumbnail": _thumb((40 * i % 255, 90, 160))}
           for i in range(16)]
    suspects = [{"filename": "dogs/odd.jpg", "given": "dog", "given_probability": 0.01,
                 "predicted": "fish", "probability": 0.97, "thumbnail": _thumb((200, 30, 30))}]
    return {"imbalance": {"largest": "dog", "largest_count": 1100, "smallest": "fish",
                          "smallest_count": 90, "ratio": 1100 / 90, "threshold": 3.0,
                          "warn": True},
            "class_weight": "none",
            "overfitting": {"phase": "phase 1", "epoch": 4, "train_accuracy": 0.99,
                            "val_accuracy": 0.82, "gap": 0.17, "margin": 0.1, "overfit": True},
            "errors": {"model": "/srv/pets/17", "model_source": "pushed", "split": "eval",
                       "scored": 17, "truncated": False, "wrong": 16, "train_scored": 30,
                       "train_truncated": False, "max_scored": 2000,
                       "label_error_probability": 0.05, "seconds": 3.2,
                       "top_losses": top,
                       "confused_pairs": [{"true": "cat", "predicted": "dog", "count": 6,
                                           "of_true": 6}],
                       "label_errors_count": 1, "label_errors": suspects}}


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("GRAFT_REQUIRE_CHROMIUM"),
                    reason="chromium is not installed")
def test_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    assert CHROMIUM, "GRAFT_REQUIRE_CHROMIUM is set but no chromium is installed"
    page = tmp_path / "report.html"
    page.write_text(report_html.render(synthetic_facts(diagnostics=synthetic_diagnostics())))
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    "--screenshot=%s" % shot, "--window-size=1200,3000", "file://%s" % page],
                   check=True, capture_output=True, timeout=120)
    if os.environ.get("GRAFT_REPORT_SHOT"):  # to look at it
        shutil.copy(shot, os.environ["GRAFT_REPORT_SHOT"])
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 3000)
    lo, hi = image.convert("L").getextrema()
    assert hi - lo > 100  # something was drawn, not a blank page
    # The gallery's thumbnails were decoded and drawn: their colours are on the page.
    colours = {c for _, c in image.getcolors(maxcolors=1 << 20)}
    for i in (1, 3, 5):
        assert any(abs(r - 40 * i % 255) <= 6 and abs(g - 90) <= 6 and abs(b - 160) <= 6
                   for r, g, b in colours), "thumbnail %d not drawn" % i


def test_from_scratch_run_is_labelled_as_such():
    html = report_html.render(synthetic_facts(training={
        "summary": {"init": "random", "phase1": {"epoch": 30, "epochs_run": 40,
                                                 "val_accuracy": 0.6, "val_loss": 1.0,
                                                 "seconds": 700, "label": "from scratch"},
                    "phase2": {}, "final_val_accuracy": 0.6}}))
    assert "Training (from scratch: random init, every layer trained)" in html
    assert "<td>from scratch</td>" in html and "frozen base" not in html
    assert "phase 1: frozen base" in report_html.render(synthetic_facts())


def test_exports_table_and_summary_line():
    """A row per exported format (TFLiteExport's facts): size, accuracy, drop, push."""
    exports = [{"format": "SavedModel", "size_bytes": 14_300_000, "accuracy": 0.9412,
                "drop": 0.0, "split": "eval split, 204 images"},
               {"format": "TFLite int8", "size_bytes": 4_110_000, "accuracy": 0.9363,
                "drop": 0.0049, "split": "eval split, 204 images", "pushed": False,
                "destination": "", "reason": "accuracy 0.9363 is 0.49 points below the "
                "SavedModel's 0.9412 (allowed: 0.00)"}]
    html = report_html.render(synthetic_facts(exports=exports))
    section = html[html.index("<h2>Exports</h2>"):]
    section = section[:section.index("</section>")]
    assert "eval split, 204 images" in section
    rows = re.findall(r"<tr><td>(.*?)</td><td class=\"num\">(.*?)</td><td class=\"num\">(.*?)"
                      r"</td><td class=\"num\">(.*?)</td><td>(.*?)</td></tr>", section)
    assert [r[:4] for r in rows] == [("SavedModel", "14.30 MB", "0.9412", "0.00"),
                                     ("TFLite int8", "4.11 MB", "0.9363", "0.49")]
    assert rows[1][4].startswith("not pushed: accuracy 0.9363 is 0.49 points below")
    assert "<h2>Exports</h2>" not in report_html.render(synthetic_facts())
    line = summary.format_summary(synthetic_facts(exports=exports)).splitlines()[-1]
    assert line == ("  TFLite int8: 4.11 MB, accuracy 0.9363 (-0.49 points vs SavedModel); "
                    "not pushed: " + exports[1]["reason"])
