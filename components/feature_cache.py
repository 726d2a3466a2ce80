"""Phase 1 on cached features: the frozen base runs once per image, not once per epoch.

In phase 1 nothing below the head changes, so the Trainer runs the Transform graph and the
frozen base once over the training images (plus one fixed augmented view: the horizontal
flip) and once over the eval images, keeps the pooled features in memory, and trains the head
on them for as many epochs as early stopping wants. The cache lives only in the Trainer's
memory for the duration of one `run_fn`: a new backbone, weights, image size or data is a new
Trainer execution and recomputes it, so nothing stale can be reused.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import tensorflow as tf


def forward_fn(extractor):
    """`extractor` in inference mode as one tf.function traced once for every batch size
    (the batch dimension is None in its signature): tracing the backbone costs seconds, and
    a function traced per call site, per view and per last partial batch traced it four
    times per Trainer run."""
    spec = tf.TensorSpec([None] + list(extractor.input_shape[1:]), tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def forward(images):
        return extractor(images, training=False)
    return forward


def extract(extractor, ds: tf.data.Dataset, flip: bool = False, forward=None) -> tuple:
    """Pooled features of every image of `ds` (batches of (image, label), not augmented):
    (features float32 [N, D], labels int64 [N]); with flip, the horizontally flipped images'
    features follow as N more rows with the same labels. forward: forward_fn(extractor),
    shared by calls that extract with the same extractor."""
    forward = forward or forward_fn(extractor)
    views, labels = [], []
    for images, y in ds:
        images = tf.cast(images, tf.float32)
        out = [forward(images)]
        if flip:
            out.append(forward(tf.image.flip_left_right(images)))
        views.append([v.numpy().astype(np.float32) for v in out])
        labels.append(y.numpy().astype(np.int64))
    if not labels:
        raise ValueError("no examples to extract features from")
    n_views = len(views[0])
    features = np.concatenate([batch[v] for v in range(n_views) for batch in views])
    return features, np.concatenate(labels * n_views)


class Cache:
    """Features of the training (original + flipped when augmenting) and eval images."""

    def __init__(self, extractor, train_ds, eval_ds, flip: bool):
        start = time.time()
        forward = forward_fn(extractor)  # traced once for both splits and views
        self.train_x, self.train_y = extract(extractor, train_ds, flip=flip, forward=forward)
        self.eval_x, self.eval_y = extract(extractor, eval_ds, forward=forward)
        self.traces = forward.experimental_get_tracing_count()
        self.views = 2 if flip else 1
        self.seconds = time.time() - start

    @property
    def train_examples(self) -> int:
        return len(self.train_y) // self.views

    def subset(self, keep) -> "Cache":
        """The same cache with only the training images at indices `keep` (every view of
        each); eval untouched. Benchmarks train on subsets of one cache."""
        n = self.train_examples
        rows = np.concatenate([np.asarray(keep, dtype=np.int64) + v * n
                               for v in range(self.views)])
        out = copy.copy(self)
        out.train_x, out.train_y = self.train_x[rows], self.train_y[rows]
        return out

    def describe(self) -> dict:
        return {"train_examples": self.train_examples, "train_views": self.views,
                "eval_examples": len(self.eval_y), "dims": int(self.train_x.shape[1]),
                "traces": self.traces,
                "seconds": round(self.seconds, 2)}
