"""Phase 1 on cached features: the frozen base runs once per image, not once per epoch.

In phase 1 nothing below the head changes, so the Trainer runs the Transform graph and the
frozen base once over the training images (plus one fixed augmented view: the horizontal
flip) and once over the eval images, keeps the pooled features in memory, and trains the head
on them for as many epochs as early stopping wants. The cache lives only in the Trainer's
memory for the duration of one `run_fn`: a new backbone, weights, image size or data is a new
Trainer execution and recomputes it, so nothing stale can be reused.

When phase 2 fine-tunes only the top of the base, its bottom stays frozen too: the cache then
also keeps the activations where the frozen bottom ends (model.frozen_split: the one tensor
the layers above take from below) for the same views, and phase 2 trains the top on them
instead of running the whole base over the images every epoch. The features are computed
from those activations (the same pass). Activations are kept only within
`ACTIVATIONS_BUDGET_BYTES`; past it they are dropped and phase 2 reads the images.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import tensorflow as tf

# At most this many bytes of the frozen bottom's activations in memory (phase 2's input).
ACTIVATIONS_BUDGET_BYTES = 2 << 30


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


def extract(extractor, ds: tf.data.Dataset, flip: bool = False, forward=None,
            bottom=None, budget_bytes: int = 0) -> tuple:
    """Pooled features of every image of `ds` (batches of (image, label), not augmented):
    (features float32 [N, D], labels int64 [N], activations); with flip, the horizontally
    flipped images' features follow as N more rows with the same labels. forward:
    forward_fn(extractor), shared by calls that extract with the same extractor. bottom:
    forward_fn of a FrozenSplit's bottom, `forward` then that split's rest: activations are
    float32 [N, views, ...] while their bytes stay within budget_bytes, else None (without
    bottom: None)."""
    forward = forward or forward_fn(extractor)
    views, labels, size = [], [], 0
    kept = None if bottom is None else []  # activations while within budget_bytes
    for images, y in ds:
        images = tf.cast(images, tf.float32)
        inputs = [images, tf.image.flip_left_right(images)] if flip else [images]
        if bottom is None:
            out = [forward(x) for x in inputs]
        else:
            acts = [bottom(x) for x in inputs]
            out = [forward(a) for a in acts]
            if kept is not None:
                kept.append(np.stack([a.numpy().astype(np.float32) for a in acts], axis=1))
                size += kept[-1].nbytes
                if size > budget_bytes:
                    kept = None  # over budget: phase 2 reads the images
        views.append([v.numpy().astype(np.float32) for v in out])
        labels.append(y.numpy().astype(np.int64))
    if not labels:
        raise ValueError("no examples to extract features from")
    n_views = len(views[0])
    features = np.concatenate([batch[v] for v in range(n_views) for batch in views])
    activations = None if kept is None else np.concatenate(kept)
    return features, np.concatenate(labels * n_views), activations


class Cache:
    """Features of the training (original + flipped when augmenting) and eval images; with a
    FrozenSplit also the activations where its frozen bottom ends (train_a [N, views, ...],
    eval_a [M, 1, ...]; None when they would not fit ACTIVATIONS_BUDGET_BYTES)."""

    def __init__(self, extractor, train_ds, eval_ds, flip: bool, split=None,
                 budget_bytes: int = ACTIVATIONS_BUDGET_BYTES):
        start = time.time()
        if split is None:
            forward, bottom = forward_fn(extractor), None  # traced once for both splits, views
        else:
            forward, bottom = forward_fn(split.rest), forward_fn(split.bottom)
        self.train_x, self.train_y, self.train_a = extract(
            extractor, train_ds, flip=flip, forward=forward, bottom=bottom,
            budget_bytes=budget_bytes)
        left = budget_bytes - (self.train_a.nbytes if self.train_a is not None else 0)
        self.eval_x, self.eval_y, self.eval_a = extract(
            extractor, eval_ds, forward=forward, bottom=bottom,
            budget_bytes=left if self.train_a is not None else -1)
        if self.eval_a is None:
            self.train_a = None
        self.split = split if self.train_a is not None else None
        self.boundary = split.layer if split is not None else None
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
        if self.train_a is not None:
            out.train_a = self.train_a[np.asarray(keep, dtype=np.int64)]
        return out

    def describe(self) -> dict:
        return {"train_examples": self.train_examples, "train_views": self.views,
                "eval_examples": len(self.eval_y), "dims": int(self.train_x.shape[1]),
                "traces": self.traces,
                "seconds": round(self.seconds, 2),
                "activations": None if self.boundary is None else {
                    "layer": self.boundary,
                    "shape": None if self.train_a is None else list(self.train_a.shape[2:]),
                    "megabytes": None if self.train_a is None else round(
                        (self.train_a.nbytes + self.eval_a.nbytes) / 2**20, 1),
                    "kept": self.train_a is not None}}
