"""End to end: `graft run` on a small generated data set, read back through MLMD, the
serving dir and the pushed SavedModel.

One module-scoped sequence of runs (each is a real LocalDagRunner run in a subprocess):
  1. floor 0.4        -> blessed, pushed as the first version
  2. identical rerun  -> every component cached (the baseline skips the candidate itself),
                         no new version
  3. floor 1.01       -> not blessed, nothing pushed, the reason printed
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline_runs import CLASSES, PER_CLASS, PNG_SIZE, TWO_PHASES, graft

pytestmark = pytest.mark.e2e



def held_back_images(label_names, n_per_class: int = 6):
    """Digits images NOT in the training data, encoded like the demo set (PNG) and as JPEG,
    with their label index in label_names (labels.txt order)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from pipeline.data.demo_dataset import DIGIT_NAMES

    digits = load_digits()
    out = []
    for digit in range(CLASSES):
        indices = np.flatnonzero(digits.target == digit)[PER_CLASS:PER_CLASS + n_per_class]
        for k, index in enumerate(indices):
            pixels = np.clip(np.round(digits.images[index] * (255.0 / 16.0)), 0, 255)
            image = Image.fromarray(pixels.astype(np.uint8), mode="L").resize(
                (PNG_SIZE, PNG_SIZE), Image.BILINEAR)
            buf = io.BytesIO()
            if k % 2:
                image.convert("RGB").save(buf, format="JPEG", quality=95)
            else:
                image.save(buf, format="PNG")
            out.append((buf.getvalue(), label_names.index(DIGIT_NAMES[digit])))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pipeline.data import demo_dataset

    root = tmp_path_factory.mktemp("e2e")
    data = demo_dataset.build(root / "data", per_class=PER_CLASS, image_size=PNG_SIZE,
                              classes=CLASSES, log=lambda *_: None)
    out = root / "out"
    serving = root / "serving"
    # --tflite-max-drop 1: the int8 model is pushed whatever it scores on these few test
    # images (tests/test_tflite.py checks the rule both ways), so the push is asserted.
    args = ["run", "--data", data, "--output", out, "--serving-dir", serving,
            "--tflite-max-drop", 1] + TWO_PHASES
    results = {"out": out, "serving": serving, "data": Path(data)}
    results["first"] = graft(*args, "--min-accuracy", 0.4)
    results["versions_after_first"] = sorted(os.listdir(serving / "digits"))
    results["report_first"] = (out / "report.html").read_text()
    results["cache_first"] = _cache_files(out)
    results["second"] = graft(*args, "--min-accuracy", 0.4)
    results["states_second"] = _states(out)
    results["report_second"] = (out / "report.html").read_text()
    results["cache_second"] = _cache_files(out)
    results["versions_after_second"] = sorted(os.listdir(serving / "digits"))
    results["floor"] = graft(*args, "--min-accuracy", 1.01)
    results["states_floor"] = _states(out)
    return results


def _cache_files(out: Path) -> dict:
    """{name: mtime_ns} of the report's cached results."""
    from pipeline.reporting import memo
    return {p.name: p.stat().st_mtime_ns for p in (out / memo.CACHE_DIR).iterdir()}


def _states(out: Path) -> dict:
    from pipeline.reporting import mlmd as mlmd_query
    return mlmd_query.node_states(mlmd_query.open_store(str(out / "metadata.sqlite")))


def _numeric(names):
    return [n for n in names if n.isdigit()]


def test_first_run_blessed_and_pushed(runs):
    out = runs["first"].stdout
    assert "blessed: yes" in out, out
    assert "push: pushed as version" in out, out
    assert len(_numeric(runs["versions_after_first"])) == 1
    version_dir = runs["serving"] / "digits" / _numeric(runs["versions_after_first"])[0]
    assert (version_dir / "saved_model.pb").exists()
    record = json.loads((version_dir / "graft_push.json").read_text())
    assert len(record["fingerprint"]) == 64


def test_tflite_exported_and_pushed_beside_the_savedmodel(runs):
    """TFLiteExport (default --tflite int8) ran after the pusher: its summary line, and the
    pushed model.tflite + labels.txt under digits-tflite/VERSION (the same version), never
    inside the TF Serving version directory."""
    out = runs["first"].stdout
    line = next(x for x in out.splitlines() if x.startswith("  TFLite int8: "))
    version = _numeric(runs["versions_after_first"])[0]
    tflite_dir = runs["serving"] / "digits-tflite" / version
    assert "pushed as version %s" % version in line, line
    assert sorted(os.listdir(tflite_dir)) == ["labels.txt", "model.tflite"]
    assert (tflite_dir / "labels.txt").read_text().split() == \
        (runs["data"] / "labels.txt").read_text().split()
    assert not (runs["serving"] / "digits" / version / "model.tflite").exists()


def test_the_gate_scored_the_test_split_and_both_accuracies_are_shown(runs):
    """The Evaluator read exactly the test split's records; the summary and the report show
    the test accuracy (gate) and the eval accuracy (model choice) with 95 % intervals."""
    import re

    from pipeline.reporting import mlmd as mlmd_query
    from pipeline.reporting.facts import eval_metrics

    out = runs["first"].stdout
    assert "blessed: yes (test accuracy " in out, out
    assert "gate: no test split" not in out
    store = mlmd_query.open_store(str(runs["out"] / "metadata.sqlite"))
    evaluator = mlmd_query.node_executions(store, mlmd_query.run_ids(store)[0])["Evaluator"]
    uri = next(a.uri for a in mlmd_query.output_artifacts(store, evaluator)
               if "/evaluation/" in a.uri + "/")
    metrics = eval_metrics(uri)
    n_test = sum(_label_counts(runs["data"], "test").values())
    n_eval = sum(_label_counts(runs["data"], "eval").values())
    assert metrics["example_count"] == n_test
    test_line = re.search(r"^  test accuracy ([\d.]+), 95 % CI ([\d.]+)-([\d.]+) \((\d+) "
                          r"examples\): gates the push$", out, re.M)
    assert test_line and int(test_line.group(4)) == n_test, out
    low, acc, high = (float(test_line.group(i)) for i in (2, 1, 3))
    assert low <= acc <= high and acc == pytest.approx(metrics["sparse_categorical_accuracy"],
                                                       abs=1e-4)
    eval_line = re.search(r"^  eval accuracy [\d.]+, 95 % CI [\d.]+-[\d.]+ \((\d+) examples\): "
                          r"chose the model", out, re.M)
    assert eval_line and int(eval_line.group(1)) == n_eval, out
    html = (runs["out"] / "report.html").read_text()
    # The last (floor) run: its model is the only blessed one, so it has no baseline
    # (pipeline/baseline.py): the candidate on test, then on eval.
    rows = re.findall(r'<tr class="accuracy"><td>(\w+)</td>', html)
    assert rows == ["test", "eval"], rows


def test_pushed_model_classifies_held_back_raw_bytes(runs):
    import tensorflow as tf

    version = _numeric(runs["versions_after_first"])[0]
    loaded = tf.saved_model.load(str(runs["serving"] / "digits" / version))
    serve = loaded.signatures["serving_default"]
    label_names = (runs["data"] / "labels.txt").read_text().split()
    images = held_back_images(label_names)
    result = serve(image_bytes=tf.constant([b for b, _ in images]))
    probs = result["probabilities"].numpy()
    assert probs.shape == (len(images), CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    predicted = result["class_index"].numpy()
    labels = np.array([label for _, label in images])
    accuracy = float((predicted == labels).mean())
    assert accuracy >= 0.6, "held-back accuracy %.2f (chance %.2f)" % (accuracy, 1 / CLASSES)
    names = [n.decode() for n in result["class_name"].numpy()]
    assert names == [label_names[i] for i in predicted]
    assert result["class_names"].numpy().shape == (len(images), CLASSES)
    assert [n.decode() for n in result["class_names"].numpy()[0]] == label_names


def test_identical_rerun_is_fully_cached_and_pushes_nothing(runs):
    # Resolver nodes (span_window, latest_blessed_model_resolver) always resolve afresh: they
    # are MLMD queries, not component work. The baseline resolver skips the candidate, so the
    # Evaluator sees the inputs of the first run (no baseline) and is cached too.
    states = runs["states_second"]
    not_cached = {k: v for k, v in states.items() if v != "CACHED" and "resolver" not in k
                  and k != "span_window"}
    assert not not_cached, not_cached
    assert "Evaluator" in states and "VersionedPusher" in states, states
    assert "push: nothing new (inputs unchanged" in runs["second"].stdout, runs["second"].stdout
    assert _numeric(runs["versions_after_second"]) == _numeric(runs["versions_after_first"])


def test_identical_rerun_reuses_the_error_analysis_and_the_pixel_baseline(runs):
    """The report's costly results (pipeline/reporting/memo.py): computed during the first
    run by its helper process (pipeline/runners/report_prefetch.py), reused by the identical
    rerun, with the same findings; the floor run's report analyses the Trainer's model
    (nothing pushed): the cached Trainer's, whose copy the first run pushed, so the same
    contents (components/savedmodel_fingerprint.py): reused too."""
    import re
    pattern = r"(\d+ of \d+ test images misclassified by the \w+ model)[^;]*; [\d.]+ s([^<]*)<"
    first = re.search(pattern, runs["report_first"])
    second = re.search(pattern, runs["report_second"])
    assert first and second
    assert first.group(2) == ", computed while the pipeline ran."
    assert second.group(1) == first.group(1)
    assert second.group(2) == ", reused from an earlier run on the same model and images."
    floor = re.search(pattern, (runs["out"] / "report.html").read_text())
    assert "by the trained model" in floor.group(1)
    assert floor.group(2) == ", reused from an earlier run on the same model and images."
    baseline = "pixel baseline: logistic regression"
    line = [ln for ln in runs["first"].stdout.splitlines() if baseline in ln]
    assert line and line == [ln for ln in runs["second"].stdout.splitlines() if baseline in ln]
    # Neither result was written again by the rerun (same files, same modification times).
    assert sorted(n.split("-")[0] for n in runs["cache_first"]) == ["error_analysis",
                                                                   "pixel_baseline"]
    assert runs["cache_second"] == runs["cache_first"]


def test_floor_above_one_blocks_the_push(runs):
    out = runs["floor"].stdout
    assert "blessed: no" in out, out
    assert runs["states_floor"]["Trainer"] == "CACHED"
    assert _numeric(sorted(os.listdir(runs["serving"] / "digits"))) == \
        _numeric(runs["versions_after_first"])
    assert "not blessed" in out


def test_evaluator_reports_accuracy_recall_and_confusion_matrix(runs):
    from pipeline.reporting import mlmd as mlmd_query
    from pipeline.reporting.facts import eval_metrics

    store = mlmd_query.open_store(str(runs["out"] / "metadata.sqlite"))
    first_run = mlmd_query.run_ids(store)[0]
    evaluator = mlmd_query.node_executions(store, first_run)["Evaluator"]
    uri = next(a.uri for a in mlmd_query.output_artifacts(store, evaluator)
               if "/evaluation/" in a.uri + "/")
    metrics = eval_metrics(uri)
    assert 0.4 <= metrics["sparse_categorical_accuracy"] <= 1.0
    recalls = [k for k in metrics if k.startswith("recall") and "classId" in k]
    assert len(recalls) == CLASSES, sorted(metrics)
    assert any(Path(uri).rglob("plots*")), "no confusion-matrix plots written"


def test_training_history_saved(runs):
    from pipeline.reporting import mlmd as mlmd_query

    store = mlmd_query.open_store(str(runs["out"] / "metadata.sqlite"))
    first_run = mlmd_query.run_ids(store)[0]
    trainer = mlmd_query.node_executions(store, first_run)["Trainer"]
    run_dir = next(Path(a.uri) for a in mlmd_query.output_artifacts(store, trainer)
                   if "model_run" in a.uri)
    history = json.loads((run_dir / "history.json").read_text())
    assert history["phase1"]["val_accuracy"] and history["phase2"]["val_accuracy"]
    # Phase 2 trained through the micro-batch model (the pushed model is tested elsewhere).
    assert history["phase2"]["micro_batch_size"] == 8
    # The top 10 of Lite0's 150 layers start in block 7a: phase 2 trained on the cached
    # activations where the frozen bottom ends (the last block boundary below them).
    assert history["phase2"]["input"] == "activations of block6d_add"
    assert history["phase1"]["feature_cache"]["activations"]["kept"] is True
    assert (run_dir / "history.png").stat().st_size > 1000
    summary = json.loads((run_dir / "training_summary.json").read_text())
    assert summary["strategy"] == "_DefaultDistributionStrategy"
    assert summary["precision"] == "float32"
    # Built-in Keras layers only: saved without per-layer traces (the Evaluator loads it).
    assert summary["layer_traces"] is False
    seconds = summary["seconds"]
    assert set(seconds) == {"setup_and_build", "features", "phase1", "phase2", "train",
                            "final_evaluate", "export"}
    assert seconds["phase2"] > 0 and seconds["train"] >= seconds["phase2"]


def test_trainer_and_serving_see_the_same_tensors(runs):
    """Parity: the Trainer's input tensors == the serving graph's; pushed == in-memory model."""
    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras

    from components import dataset
    from components.training_config import TrainingConfig
    from pipeline.reporting import mlmd as mlmd_query

    store = mlmd_query.open_store(str(runs["out"] / "metadata.sqlite"))
    first = mlmd_query.run_ids(store)[0]
    execs = mlmd_query.node_executions(store, first)
    graph_uri = next(a.uri for a in mlmd_query.output_artifacts(store, execs["Transform"])
                     if "transform_graph" in a.uri)
    examples_uri = next(a.uri for a in
                        mlmd_query.output_artifacts(store, execs["ImportExampleGen"]))
    cfg = TrainingConfig(label_names=tuple((runs["data"] / "labels.txt").read_text().split()))
    tft_out = tft.TFTransformOutput(graph_uri)
    # One shard, so that the dataset's record order is the file's order.
    pattern = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*")))[0]
    trainer_ds = dataset.make_dataset([pattern], tft_out, cfg, batch_size=64, training=False,
                                      cache=False)
    trainer_images, labels = next(iter(trainer_ds))
    assert trainer_images.shape[0] >= 2
    # tf.data's autotuner off: with it, every iterator teardown (each epoch) waited seconds.
    assert trainer_ds.options().autotune.enabled is False

    raw = tf.data.TFRecordDataset([pattern], compression_type="GZIP")
    serialized = [r.numpy() for r in raw]
    version = _numeric(runs["versions_after_first"])[0]
    pushed_dir = str(runs["serving"] / "digits" / version)
    loaded = tf.saved_model.load(pushed_dir)
    served = loaded.signatures["transform_features"](examples=tf.constant(serialized))
    diff = np.abs(served["image_xf"].numpy() - trainer_images.numpy()).max()
    assert diff <= 1e-5, diff

    image_bytes = [tf.train.Example.FromString(s).features.feature["image"].bytes_list.value[0]
                   for s in serialized]
    served_probs = loaded.signatures["serving_default"](
        image_bytes=tf.constant(image_bytes))["probabilities"].numpy()
    keras_model = tf_keras.models.load_model(pushed_dir)
    in_memory = keras_model(trainer_images, training=False).numpy()
    assert np.abs(served_probs - in_memory).max() <= 1e-5
    # The classifier saved as a graph (what TFLiteExport converts): the same probabilities.
    graph = loaded.classify_image_xf(trainer_images).numpy()
    assert np.abs(graph - in_memory).max() <= 1e-5


# --- run report (pipeline/reporting/report.py): OUTPUT/report.html of the last (floor) run ---

def _label_counts(data: Path, split: str) -> dict:
    import tensorflow as tf

    counts: dict = {}
    for shard in (data / "span-1" / split).iterdir():
        for record in tf.data.TFRecordDataset(str(shard)):
            label = tf.train.Example.FromString(record.numpy()).features.feature["label"]
            counts[label.int64_list.value[0]] = counts.get(label.int64_list.value[0], 0) + 1
    return counts


def test_report_written_by_every_run(runs):
    for name in ("first", "second", "floor"):
        assert "report: %s" % (runs["out"] / "report.html") in runs[name].stdout


def test_report_has_counts_blessing_recall_and_images(runs):
    import re

    html = (runs["out"] / "report.html").read_text()
    label_names = (runs["data"] / "labels.txt").read_text().split()
    counts = [_label_counts(runs["data"], s) for s in ("train", "eval", "test")]
    rows = re.findall(r'<tr class="class-count"><td>(\w+)</td><td class="num">(\d+)</td>'
                      r'<td class="num">(\d+)</td><td class="num">(\d+)</td></tr>', html)
    assert rows == [(name, *(str(c[i]) for c in counts)) for i, name in enumerate(label_names)]
    assert '<p class="blessing">blessed: no' in html  # the floor run
    assert "below the floor 1.01" in html
    recalls = re.findall(r'<tr class="recall"><td>(\w+)</td><td class="num">([\d.]+)</td>', html)
    assert [name for name, _ in recalls] == label_names
    assert all(0.0 <= float(value) <= 1.0 for _, value in recalls)
    assert html.count('src="data:image/png;base64,') >= 2  # training curves, confusion matrix
    for node in ("ImageCheck", "Trainer", "Evaluator", "VersionedPusher"):
        assert ">%s</td>" % node in html
    assert "Bad images: none." in html


def test_report_gallery_holds_images_the_served_model_gets_wrong(runs):
    """The error analysis of the last run: its count of mistakes is the pushed model's on the
    gating split, and every gallery image is one that model really misclassifies, with the
    class and probability the report prints (and matches TFMA's accuracy). It scores the
    split that gates the push: test."""
    import re

    import tensorflow as tf

    html = (runs["out"] / "report.html").read_text()
    label_names = (runs["data"] / "labels.txt").read_text().split()
    m = re.search(r"(\d+) of (\d+) test images misclassified by the (\w+) model", html)
    assert m, "no error analysis in the report"
    wrong, scored = int(m.group(1)), int(m.group(2))
    records = {}
    for shard in sorted((runs["data"] / "span-1" / "test").iterdir()):
        for record in tf.data.TFRecordDataset(str(shard)):
            f = tf.train.Example.FromString(record.numpy()).features.feature
            records[f["filename"].bytes_list.value[0].decode()] = (
                f["image"].bytes_list.value[0], f["label"].int64_list.value[0])
    assert scored == len(records)
    version = _numeric(runs["versions_after_first"])[0]
    serve = tf.saved_model.load(str(runs["serving"] / "digits" / version)).signatures[
        "serving_default"]
    names = sorted(records)
    probs = serve(image_bytes=tf.constant([records[n][0] for n in names]))["probabilities"]
    probs = dict(zip(names, probs.numpy()))
    truly_wrong = {n for n in names if probs[n].argmax() != records[n][1]}
    assert wrong == len(truly_wrong)
    tfma_accuracy = float(re.search(r"accuracy <b>([\d.]+)</b> on", html).group(1))
    assert abs((scored - wrong) / scored - tfma_accuracy) < 1e-3
    gallery = html.split("Most confident mistakes")[1].split("Possible label errors")[0] \
        if wrong else ""
    figures = re.findall(r'<figure class="top-loss">.*?alt="([^"]+)".*?<span class="wrong">'
                         r'(\w+)</span> ([\d.]+)<br>true: (\w+)', gallery)
    assert len(figures) == min(16, wrong)
    for filename, predicted, probability, true in figures:
        assert filename in truly_wrong
        p = probs[filename]
        assert label_names[int(p.argmax())] == predicted != true
        assert label_names[records[filename][1]] == true
        assert abs(float(probability) - p.max()) < 2e-3


def test_statistics_report_the_image_feature_as_bytes(runs):
    """StatisticsGen runs with pipeline.statistics_options: the image feature gets bytes_stats
    (presence and sizes), no top-k of encoded images; the label keeps its numeric stats."""
    from tensorflow_metadata.proto.v0 import statistics_pb2
    [stats_file] = (runs["out"] / "pipeline_root" / "StatisticsGen" / "statistics").glob(
        "*/Split-train/FeatureStats.pb")
    stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(stats_file.read_bytes())
    features = {f.path.step[0]: f for f in stats.datasets[0].features}
    image = features["image"]
    assert image.WhichOneof("stats") == "bytes_stats"
    assert image.bytes_stats.common_stats.num_non_missing == stats.datasets[0].num_examples > 0
    assert image.bytes_stats.min_num_bytes > 100  # PNG digits, not placeholders
    assert features["label"].WhichOneof("stats") == "num_stats"
