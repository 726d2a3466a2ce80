"""What the report says beyond the metrics: class imbalance, the model's most confident
mistakes (fastai's `plot_top_losses`), the most confused pairs of classes, possible label
errors in the training data, and over-fitting.

- `imbalance()`: the training split's images per class (ImageCheck's counts, the same
  records StatisticsGen counts); a warning when the largest class has more than
  IMBALANCE_RATIO times the images of the smallest.
- `overfitting()`: from the Trainer's history.json, the kept phase at the epoch whose weights
  were kept: training accuracy minus validation accuracy, flagged above OVERFIT_MARGIN. The
  training accuracy is Keras' running figure over that epoch (dropout on, augmented or
  flipped views), so the gap is, if anything, understated.
- `error_analysis()`: the model that was pushed (or, if nothing was pushed, the Trainer's
  output, which is what would be pushed) is loaded and its `serving_default` signature, the one
  TF Serving runs, scores the raw image bytes of the split the Evaluator gated on (`test` when
  the examples have one, else `eval`) and of the training split. Reported: the GALLERY_SIZE
  wrong predictions with the highest predicted probability (thumbnails, true and predicted
  class, probabilities), the most frequent (true, predicted) pairs, and the training images
  whose given label gets less than LABEL_ERROR_PROBABILITY (possible label errors).
  Cost bound: at most MAX_SCORED images per split (the first ones in file order; the report
  says when a split was cut) and one model load; the section prints its seconds. A rerun
  with the same model and examples reuses the result (pipeline/reporting/memo.py). Measured
  only under heavy load so far (2 cores, load average 20, where the same run's Trainer took
  525 s): 322 s for the end-to-end test's 72 digits images with the model loaded twice, 10 s
  in its next run with one load; not measured on flowers-dev.

Thumbnails are JPEGs of at most THUMB_PX pixels, embedded as base64 (html.py renders them).
"""
from __future__ import annotations

import base64
import glob
import io
import os
import time

IMBALANCE_RATIO = 3.0
OVERFIT_MARGIN = 0.10          # training minus validation accuracy that counts as over-fitting
LABEL_ERROR_PROBABILITY = 0.05
GALLERY_SIZE = 16
CONFUSED_PAIRS = 6
MAX_SCORED = 2000              # images scored per split
THUMB_PX = 112
BATCH = 8                      # images per call: 32 peaked 280 MB higher, no faster


def imbalance(splits: dict, label_names) -> dict | None:
    """{largest, smallest, counts, ratio, warn} of the training split's classes, or None."""
    counts = ((splits or {}).get("train") or {}).get("label_counts") or {}
    n = max(len(label_names), 1 + max((int(k) for k in counts), default=-1))
    per_class = [int(counts.get(str(i), 0)) for i in range(n)]
    if len(per_class) < 2 or not any(per_class):
        return None
    names = [str(label_names[i]) if i < len(label_names) else str(i) for i in range(n)]
    big = max(range(n), key=lambda i: per_class[i])
    small = min(range(n), key=lambda i: per_class[i])
    ratio = per_class[big] / per_class[small] if per_class[small] else float("inf")
    return {"largest": names[big], "largest_count": per_class[big], "smallest": names[small],
            "smallest_count": per_class[small], "ratio": ratio, "threshold": IMBALANCE_RATIO,
            "warn": ratio > IMBALANCE_RATIO}


def imbalance_text(imb: dict, class_weight: str | None) -> str:
    """The one-line warning of the summary and the report."""
    ratio = "%.1fx" % imb["ratio"] if imb["ratio"] != float("inf") else "no images of the smallest"
    advice = ("the loss was weighted by --class-weight balanced" if class_weight == "balanced"
              else "consider --class-weight balanced")
    return ("classes are imbalanced: '%s' has %d training images, '%s' %d (%s, more than %gx); "
            "%s" % (imb["largest"], imb["largest_count"], imb["smallest"],
                    imb["smallest_count"], ratio, imb["threshold"], advice))


def overfitting(history: dict | None, margin: float = OVERFIT_MARGIN) -> dict | None:
    """Train vs validation accuracy at the kept epoch of the kept phase (history.json)."""
    if not history:
        return None
    phase2 = history.get("phase2") or {}
    phase = phase2 if phase2.get("val_loss") and phase2.get("kept", True) else \
        history.get("phase1") or {}
    if not phase.get("val_loss") or not phase.get("accuracy"):
        return None
    i = min(range(len(phase["val_loss"])), key=lambda j: phase["val_loss"][j])
    train, val = float(phase["accuracy"][i]), float(phase["val_accuracy"][i])
    return {"phase": phase.get("phase", ""), "epoch": i + 1, "train_accuracy": train,
            "val_accuracy": val, "gap": train - val, "margin": margin,
            "overfit": train - val > margin}


# ----------------------------------------------------------------------------- scoring
def input_artifacts(store, execution) -> list:
    from ml_metadata.proto import metadata_store_pb2
    events = store.get_events_by_execution_ids([execution.id])
    ids = [ev.artifact_id for ev in events if ev.type == metadata_store_pb2.Event.INPUT]
    return store.get_artifacts_by_id(ids) if ids else []


def split_files(example_uris, split: str) -> list[str]:
    files = []
    for uri in example_uris:
        files += sorted(glob.glob(os.path.join(uri, "Split-%s" % split, "*")))
    return files


def read_examples(files, image_key: str, label_key: str, limit: int = MAX_SCORED):
    """([(image bytes, label, filename)] of the first `limit` records, whether there were
    more)."""
    import tensorflow as tf
    out = []
    for f in files:
        compression = "GZIP" if f.endswith(".gz") else ""
        for record in tf.data.TFRecordDataset(f, compression_type=compression):
            if len(out) >= limit:
                return out, True
            feats = tf.train.Example.FromString(record.numpy()).features.feature
            image = feats[image_key].bytes_list.value
            label = feats[label_key].int64_list.value
            if not image or not label:
                continue
            name = feats["filename"].bytes_list.value if "filename" in feats else []
            out.append((image[0], int(label[0]),
                        name[0].decode("utf-8", "replace") if name else ""))
    return out, False


def score(serve, images: list[bytes]):
    """Probabilities [N, k] from a SavedModel's serving_default on raw image bytes."""
    import numpy as np
    import tensorflow as tf
    probs = [serve(image_bytes=tf.constant(images[s:s + BATCH]))["probabilities"].numpy()
             for s in range(0, len(images), BATCH)]
    return np.concatenate(probs) if probs else np.zeros((0, 0))


def thumbnail(image: bytes, px: int = THUMB_PX) -> str | None:
    """A small JPEG of the image, base64; None when PIL cannot read it."""
    from PIL import Image
    try:
        img = Image.open(io.BytesIO(image))
        img.seek(0)
        img = img.convert("RGB")
    except Exception:  # noqa: BLE001 - a thumbnail is optional
        return None
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _name(names, i: int) -> str:
    return str(names[i]) if 0 <= i < len(names) else str(i)


def analyse(model_dir: str, split: str, scored, train, label_names) -> dict:
    """The facts of the error analysis from already read examples (see error_analysis)."""
    import numpy as np
    import tensorflow as tf
    start = time.time()
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]  # loaded once
    out = {"model": model_dir, "split": split, "scored": len(scored[0]),
           "truncated": scored[1], "train_scored": len(train[0]),
           "train_truncated": train[1], "max_scored": MAX_SCORED,
           "label_error_probability": LABEL_ERROR_PROBABILITY}
    examples = scored[0]
    probs = score(serve, [e[0] for e in examples])
    labels = np.array([e[1] for e in examples], dtype=np.int64)
    pred = probs.argmax(axis=1) if len(examples) else labels
    wrong = np.flatnonzero(pred != labels)
    out["wrong"] = int(len(wrong))
    order = sorted(wrong, key=lambda i: -probs[i, pred[i]])[:GALLERY_SIZE]
    out["top_losses"] = [{
        "filename": examples[i][2], "true": _name(label_names, labels[i]),
        "predicted": _name(label_names, int(pred[i])),
        "probability": float(probs[i, pred[i]]),
        "true_probability": float(probs[i, labels[i]]) if labels[i] < probs.shape[1] else 0.0,
        "thumbnail": thumbnail(examples[i][0])} for i in order]
    pairs: dict = {}
    for i in wrong:
        key = (int(labels[i]), int(pred[i]))
        pairs[key] = pairs.get(key, 0) + 1
    per_class = np.bincount(labels, minlength=len(label_names))
    out["confused_pairs"] = [
        {"true": _name(label_names, a), "predicted": _name(label_names, b), "count": n,
         "of_true": int(per_class[a])}
        for (a, b), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:CONFUSED_PAIRS]]
    if train[0]:
        train_examples = train[0]
        train_probs = score(serve, [e[0] for e in train_examples])
        given = np.array([e[1] for e in train_examples], dtype=np.int64)
        p_given = train_probs[np.arange(len(given)), np.minimum(given, train_probs.shape[1] - 1)]
        suspects = sorted(np.flatnonzero(p_given < LABEL_ERROR_PROBABILITY),
                          key=lambda i: p_given[i])
        out["label_errors_count"] = int(len(suspects))
        out["label_errors"] = [{
            "filename": train_examples[i][2], "given": _name(label_names, given[i]),
            "given_probability": float(p_given[i]),
            "predicted": _name(label_names, int(train_probs[i].argmax())),
            "probability": float(train_probs[i].max()),
            "thumbnail": thumbnail(train_examples[i][0])} for i in suspects[:GALLERY_SIZE]]
    out["seconds"] = round(time.time() - start, 1)
    return out


def model_dir_of(store, executions: dict, push: dict) -> tuple:
    """(SavedModel dir, 'pushed' | 'trained'): the pushed model, else the Trainer's (what
    would have been pushed); (None, None) without either."""
    from pipeline.reporting import mlmd
    dest = (push or {}).get("pushed_destination")
    if dest and os.path.isdir(dest):  # pushed, or the identical model served already
        return dest, "pushed"
    model = mlmd.output_artifact(store, executions["Trainer"], "model") \
        if "Trainer" in executions else None
    if model is not None:
        path = os.path.join(model.uri, "Format-Serving")
        return (path if os.path.isdir(path) else model.uri), "trained"
    return None, None


def error_analysis(store, executions: dict, config, push: dict,
                   since: float | None = None) -> dict | None:
    """The error analysis of the run's model on its examples, or None without a model.
    since: the run's start (memo.cached's fresh_since)."""
    model_dir, source = model_dir_of(store, executions, push)
    node = executions.get("Evaluator") or executions.get("Trainer")
    if model_dir is None or node is None:
        return None
    uris = [a.uri for a in input_artifacts(store, node)
            if glob.glob(os.path.join(a.uri, "Split-*"))]
    split = "test" if split_files(uris, "test") else "eval"
    t = config.training
    scored_files, train_files = split_files(uris, split), split_files(uris, "train")

    def compute():
        scored = read_examples(scored_files, t.image_key, t.label_key)
        train = read_examples(train_files, t.image_key, t.label_key)
        return analyse(model_dir, split, scored, train, list(t.label_names))

    # The model by its contents: the Trainer's analysed while the pipeline runs is the
    # pushed copy's (report_prefetch).
    from components.savedmodel_fingerprint import fingerprint
    from pipeline.reporting import memo
    key = {"model": fingerprint(model_dir), "scored": memo.files_identity(scored_files),
           "train": memo.files_identity(train_files), "split": split,
           "keys": [t.image_key, t.label_key], "labels": list(t.label_names),
           "code": memo.source_digest(__file__)}
    return dict(memo.cached(config.output_dir, "error_analysis", key, compute, since),
                model=model_dir, model_source=source)


def collect(store, executions: dict, config, facts: dict, since: float | None = None) -> dict:
    """The diagnostics of a run's facts (facts.collect() calls this last): imbalance,
    over-fitting, and the error analysis (its failure becomes a note, not a lost report)."""
    training = facts.get("training") or {}
    out = {"imbalance": imbalance((facts.get("data") or {}).get("splits"),
                                  list(config.training.label_names)),
           "class_weight": ((training.get("summary") or {}).get("class_weight") or {}).get(
               "mode", config.training.class_weight),
           "overfitting": overfitting(training.get("history"))}
    try:
        out["errors"] = error_analysis(store, executions, config, facts.get("push") or {},
                                       since)
    except Exception as e:  # noqa: BLE001 - the rest of the report must survive
        out["errors"] = None
        facts.setdefault("notes", []).append("error analysis: not available (%s: %s)"
                                             % (type(e).__name__, e))
    return out


def warnings(diag: dict | None) -> list[str]:
    """The warning lines of the summary and the report."""
    diag = diag or {}
    out = []
    imb = diag.get("imbalance")
    if imb and imb["warn"]:
        out.append(imbalance_text(imb, diag.get("class_weight")))
    over = diag.get("overfitting")
    if over and over["overfit"]:
        out.append(overfitting_text(over))
    return out


def overfitting_text(over: dict) -> str:
    return ("%s: training accuracy %.4f vs validation %.4f at the kept epoch %d: a gap of %.1f "
            "points, %s the %.0f-point margin%s"
            % ("over-fitting" if over["overfit"] else "no over-fitting",
               over["train_accuracy"], over["val_accuracy"], over["epoch"], 100 * over["gap"],
               "above" if over["overfit"] else "within", 100 * over["margin"],
               " (more data, more augmentation or fewer epochs would help)"
               if over["overfit"] else ""))
