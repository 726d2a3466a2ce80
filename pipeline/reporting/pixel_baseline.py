"""The yardstick in the summary: a logistic regression on raw pixels, on the run's own split.

`graft run` fits scikit-learn's LogisticRegression on the training images of the span it
trained on, each decoded (PIL, RGB), resized to 32x32 and scaled to [0, 1] (3,072 numbers),
and scores it on the split the Evaluator gated on. So the gain from the pretrained features
is visible in the run, not asserted.
Bounded cost: at most MAX_IMAGES images per split (the first in file order, which
make-tfrecords orders by a hash of the file name); records that do not decode are skipped,
as ImageCheck drops them. For the demo's 300 photos: 1 s to decode, 9 s to fit on a machine
with a load average of 22 on its 2 cores (one BLAS thread). A rerun on the same files reuses
the result (pipeline/reporting/memo.py).
"""
from __future__ import annotations

import glob
import io
import os
import time

SIZE = 32
MAX_IMAGES = 1000


def _split_files(data_dir: str, pattern: str, spans) -> list[str]:
    files = []
    for span in spans:
        files += sorted(glob.glob(os.path.join(data_dir, pattern.replace("{SPAN}", str(span)))))
    return files


def pixels(data: bytes):
    """Encoded image bytes -> SIZE*SIZE*3 float32 in [0, 1] (PIL: JPEGs are decoded at a
    reduced scale, which makes this ~3 ms an image; TensorFlow's eager ops took 60x that)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (2 * SIZE, 2 * SIZE))
        small = image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32).reshape(-1) / 255.0


def load(files: list[str], image_key: str, label_key: str, limit: int = MAX_IMAGES):
    """(pixels [n, SIZE*SIZE*3] float32 in [0, 1], labels [n]) of the first `limit` records
    whose image decodes."""
    import numpy as np
    import tensorflow as tf

    xs, ys = [], []
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        if len(xs) >= limit:
            break
        feature = tf.train.Example.FromString(record).features.feature
        if image_key not in feature or label_key not in feature:
            continue
        try:
            xs.append(pixels(feature[image_key].bytes_list.value[0]))
        except Exception:  # noqa: BLE001 - PIL raises many kinds; ImageCheck drops these too
            continue
        ys.append(int(feature[label_key].int64_list.value[0]))
    return np.asarray(xs, dtype=np.float32).reshape(-1, SIZE * SIZE * 3), np.asarray(ys)


def score(train_files: list[str], eval_files: list[str], image_key: str, label_key: str) -> dict:
    """{"accuracy", "train", "eval", "seconds"} of the logistic regression fitted on the
    records of train_files, scored on those of eval_files."""
    from sklearn.linear_model import LogisticRegression

    start = time.time()
    x_train, y_train = load(train_files, image_key, label_key)
    x_eval, y_eval = load(eval_files, image_key, label_key)
    if len(set(y_train.tolist())) < 2 or not len(y_eval):
        raise ValueError("too few decodable images for the pixel baseline")
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):  # BLAS threads on a busy machine took 10x longer
        model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return {"accuracy": float(model.score(x_eval, y_eval)), "train": int(len(y_train)),
            "eval": int(len(y_eval)), "size": SIZE, "seconds": round(time.time() - start, 2)}


def for_run(config, span, since: float | None = None) -> dict:
    """score() on the spans the run trained on (the last num_spans up to `span`), scored on
    the split the Evaluator gates on: `config.gate_split` where the config has one (a test
    split), else eval. since: the run's start (memo.cached's fresh_since)."""
    from pipeline.reporting import memo
    spans = range(max(0, int(span) - config.num_spans + 1), int(span) + 1)
    split = getattr(config, "gate_split", "eval")
    files = [_split_files(config.data_dir, pattern, spans)
             for pattern in (config.train_pattern, getattr(config, split + "_pattern"))]
    t = config.training
    key = {"files": [memo.files_identity(f) for f in files],
           "keys": [t.image_key, t.label_key], "code": memo.source_digest(__file__)}
    result = memo.cached(config.output_dir, "pixel_baseline", key,
                         lambda: score(*files, t.image_key, t.label_key), since)
    return dict(result, split=split)


def summary_line(baseline: dict, model_accuracy: float | None) -> str:
    """The summary's comparison line."""
    text = ("  pixel baseline: logistic regression on raw %dx%d pixels, same split: %s "
            "accuracy %.4f" % (baseline["size"], baseline["size"], baseline.get("split", "eval"),
                               baseline["accuracy"]))
    if model_accuracy is not None:
        text += " (graft: %.4f, %+.1f points from pretrained features)" % (
            model_accuracy, 100 * (model_accuracy - baseline["accuracy"]))
    return text
