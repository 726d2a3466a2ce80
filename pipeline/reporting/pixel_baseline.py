"""The yardstick in the summary: a logistic regression on raw pixels, on the run's own split.

`graft run` fits scikit-learn's LogisticRegression on the training images of the span it
trained on, each decoded like the pipeline does (components/image_ops.decode_rgb), resized to
32x32 RGB and scaled to [0, 1] (3,072 numbers), and scores it on the split the Evaluator gated
on (`eval`). So the gain from the pretrained features is visible in the run, not asserted.
Bounded cost: at most MAX_IMAGES images per split (the first in file order, which
make-tfrecords orders by a hash of the file name); records that do not decode are skipped,
as ImageCheck drops them. About 2 s for the demo set's 300 photos on 2 cores.
"""
from __future__ import annotations

import glob
import os
import time

SIZE = 32
MAX_IMAGES = 1000


def _split_files(data_dir: str, pattern: str, spans) -> list[str]:
    files = []
    for span in spans:
        files += sorted(glob.glob(os.path.join(data_dir, pattern.replace("{SPAN}", str(span)))))
    return files


def load(files: list[str], image_key: str, label_key: str, limit: int = MAX_IMAGES):
    """(pixels [n, SIZE*SIZE*3] float32 in [0, 1], labels [n]) of the first `limit` records
    whose image decodes."""
    import numpy as np
    import tensorflow as tf

    from components.image_ops import decode_rgb

    xs, ys = [], []
    for record in tf.data.TFRecordDataset(files):
        if len(xs) >= limit:
            break
        example = tf.train.Example.FromString(record.numpy())
        feature = example.features.feature
        if image_key not in feature or label_key not in feature:
            continue
        try:
            image = decode_rgb(feature[image_key].bytes_list.value[0])
        except (tf.errors.InvalidArgumentError, IndexError):
            continue
        small = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (SIZE, SIZE),
                                antialias=True)
        xs.append(small.numpy().reshape(-1))
        ys.append(int(feature[label_key].int64_list.value[0]))
    return np.asarray(xs, dtype=np.float32), np.asarray(ys)


def score(data_dir: str, train_pattern: str, eval_pattern: str, spans, image_key: str,
          label_key: str) -> dict:
    """{"accuracy", "train", "eval", "seconds"} of the logistic regression."""
    from sklearn.linear_model import LogisticRegression

    start = time.time()
    x_train, y_train = load(_split_files(data_dir, train_pattern, spans), image_key, label_key)
    x_eval, y_eval = load(_split_files(data_dir, eval_pattern, spans), image_key, label_key)
    if len(set(y_train.tolist())) < 2 or not len(y_eval):
        raise ValueError("too few decodable images for the pixel baseline")
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return {"accuracy": float(model.score(x_eval, y_eval)), "train": int(len(y_train)),
            "eval": int(len(y_eval)), "size": SIZE, "seconds": round(time.time() - start, 2)}


def for_run(config, span) -> dict:
    """score() on the spans the run trained on (the last num_spans up to `span`)."""
    spans = range(max(0, int(span) - config.num_spans + 1), int(span) + 1)
    return score(config.data_dir, config.train_pattern, config.eval_pattern, spans,
                 config.training.image_key, config.training.label_key)


def summary_line(baseline: dict, model_accuracy: float | None) -> str:
    """The summary's comparison line."""
    text = ("  pixel baseline: logistic regression on raw %dx%d pixels, same split: eval "
            "accuracy %.4f" % (baseline["size"], baseline["size"], baseline["accuracy"]))
    if model_accuracy is not None:
        text += " (graft: %.4f, %+.1f points from pretrained features)" % (
            model_accuracy, 100 * (model_accuracy - baseline["accuracy"]))
    return text
