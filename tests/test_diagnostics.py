"""The report's diagnostics (pipeline/reporting/diagnostics.py) without a pipeline: the error
analysis of a real SavedModel (tests/toy_model.py: classifies an image by its mean colour) on
images whose true colour we know, the imbalance and over-fitting warnings, and their HTML and
summary lines."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import tensorflow as tf

from pipeline.reporting import diagnostics, diagnostics_html, html as report_html, summary

import toy_model

NAMES = list(toy_model.CLASS_NAMES)  # red, green, blue
RGB = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230),
       "orange": (200, 120, 10)}   # orange: red, but less sure


def _png(rgb, size=40) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _write(path, items):
    """GZIP TFRecords like ImageCheck's output: image, label, filename."""
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for colour, label, name in items:
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(RGB[colour])])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "filename": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[name.encode()]))}
            w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                    .SerializeToString())


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    model = toy_model.build(str(root / "model"))
    # Eval: 12 correctly labelled, 3 wrongly labelled (a red image labelled blue etc.), and
    # an orange image labelled green: wrong too, but with less confidence.
    evals = [(c, NAMES.index(c), "%s/ok-%d.png" % (c, i)) for i in range(4) for c in NAMES]
    evals += [("red", 2, "blue/red-<1>.png"), ("green", 0, "red/green-2.png"),
              ("blue", 1, "green/blue-3.png"), ("orange", 1, "green/orange-4.png")]
    train = [(c, NAMES.index(c), "%s/t-%d.png" % (c, i)) for i in range(5) for c in NAMES]
    train += [("blue", 0, "red/blue-mislabelled.png"), ("orange", 1, "green/orange-t.png")]
    for split, items in (("eval", evals), ("train", train)):
        (root / "examples" / ("Split-" + split)).mkdir(parents=True)
        _write(root / "examples" / ("Split-" + split) / "data.gz", items)
    uris = [str(root / "examples")]
    scored = diagnostics.read_examples(diagnostics.split_files(uris, "eval"), "image", "label")
    trained = diagnostics.read_examples(diagnostics.split_files(uris, "train"), "image",
                                        "label")
    return diagnostics.analyse(model, "eval", scored, trained, NAMES)


def _mean_rgb(b64: str):
    from PIL import Image
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "JPEG" and max(image.size) <= diagnostics.THUMB_PX
    return np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3).mean(axis=0)


def test_gallery_holds_exactly_the_misclassified_images_most_confident_first(analysis):
    assert analysis["scored"] == 16 and analysis["wrong"] == 4
    top = analysis["top_losses"]
    # Probabilities of the toy model: red 0.988, green 0.986, blue 0.984, orange as red 0.872.
    assert [(t["filename"], t["true"], t["predicted"]) for t in top] == [
        ("blue/red-<1>.png", "blue", "red"), ("red/green-2.png", "red", "green"),
        ("green/blue-3.png", "green", "blue"), ("green/orange-4.png", "green", "red")]
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and probs[0] > 0.98 > 0.9 > probs[3]
    for t in top:
        assert t["true_probability"] < t["probability"]
        # The thumbnail is the image itself: its colour is the predicted class's, not the
        # label's (orange is mostly red).
        mean = _mean_rgb(t["thumbnail"])
        colour = t["filename"].split("/")[1].split("-")[0]
        assert np.abs(mean - RGB[colour]).max() < 12
    pairs = {(p["true"], p["predicted"]): p["count"] for p in analysis["confused_pairs"]}
    assert pairs == {("blue", "red"): 1, ("red", "green"): 1, ("green", "blue"): 1,
                     ("green", "red"): 1}


def test_possible_label_errors_are_train_images_whose_label_gets_under_5_percent(analysis):
    assert analysis["train_scored"] == 17
    assert analysis["label_errors_count"] == 1  # orange labelled green keeps > 5 %
    (suspect,) = analysis["label_errors"]
    assert suspect["filename"] == "red/blue-mislabelled.png"
    assert suspect["given"] == "red" and suspect["predicted"] == "blue"
    assert suspect["given_probability"] < diagnostics.LABEL_ERROR_PROBABILITY


def test_gallery_html_is_escaped_and_embeds_the_thumbnails(analysis):
    page = report_html.render({"title": "t", "label_names": NAMES, "components": [],
                               "data": {}, "training": {}, "evaluation": {}, "blessing": {},
                               "push": {}, "notes": [],
                               "diagnostics": {"errors": analysis, "overfitting": None}})
    assert len(re.findall(r'<figure class="top-loss">.*?</figure>', page)) == 4
    assert len(re.findall(r'<figure class="label-error">.*?</figure>', page)) == 1
    assert page.count('src="data:image/jpeg;base64,') == 5
    assert "blue/red-&lt;1&gt;.png" in page and "red-<1>" not in page
    assert "4 of 16 eval images misclassified" in page
    assert "1 of 17 training images get less than 5 % probability" in page


def test_imbalance_warning_in_summary_and_report():
    splits = {"train": {"label_counts": {"0": 300, "1": 99, "2": 100}}}
    imb = diagnostics.imbalance(splits, NAMES)
    assert imb["largest"] == "red" and imb["smallest"] == "green" and imb["warn"]
    assert not diagnostics.imbalance({"train": {"label_counts": {"0": 300, "1": 100,
                                                                 "2": 100}}}, NAMES)["warn"]
    facts = {"seconds": 1.0, "components": [], "data": {}, "training": {}, "blessing": {},
             "push": {}, "failed": None, "evaluation": {},
             "diagnostics": {"imbalance": imb, "class_weight": "none"}}
    line = ("  warning: classes are imbalanced: 'red' has 300 training images, 'green' 99 "
            "(3.0x, more than 3x); consider --class-weight balanced")
    assert line in summary.format_summary(facts).splitlines()
    assert "(3.0x, more than 3x); consider --class-weight balanced" in \
        diagnostics_html.warnings_section(facts)
    facts["diagnostics"]["class_weight"] = "balanced"
    assert "the loss was weighted by --class-weight balanced" in summary.format_summary(facts)


def test_overfitting_line_from_the_kept_epoch():
    history = {"phase1": {"phase": "phase 1", "loss": [1, 0.5, 0.4], "val_loss": [1, 0.6, 0.7],
                          "accuracy": [0.5, 0.97, 0.99], "val_accuracy": [0.5, 0.85, 0.84]},
               "phase2": {"phase": "phase 2", "val_loss": [0.65], "accuracy": [1.0],
                          "val_accuracy": [0.8], "kept": False}}
    over = diagnostics.overfitting(history)
    assert over["epoch"] == 2 and over["phase"] == "phase 1" and over["overfit"]
    assert over["gap"] == pytest.approx(0.12)
    assert diagnostics.warnings({"overfitting": over}) == [
        "over-fitting: training accuracy 0.9700 vs validation 0.8500 at the kept epoch 2: a gap "
        "of 12.0 points, above the 10-point margin (more data, more augmentation or fewer "
        "epochs would help)"]
    history["phase1"]["val_accuracy"][1] = 0.9
    assert not diagnostics.overfitting(history)["overfit"]
    assert diagnostics.warnings({"overfitting": diagnostics.overfitting(history)}) == []
