"""Phase 1 on cached features: the frozen base runs once per image, not once per epoch.

In phase 1 nothing below the head changes, so the Trainer runs the Transform graph and the
frozen base once over the training images (plus one fixed augmented view: the horizontal
flip) and once over the eval images, keeps the pooled features in memory, and trains the head
on them for as many epochs as early stopping wants. The cache lives only in the Trainer's
memory for the duration of one `run_fn`: a new backbone, weights, image size or data is a new
Trainer execution and recomputes it, so nothing stale can be reused.

Phase 2's input comes from the same pass. When phase 2 fine-tunes only the top of the base
and `fine_tune_input='activations'` (the default), the cache keeps the activations where the
frozen bottom ends (model.frozen_split: the one tensor the layers above take from below) for
the same views, plus `augmented_views` augmented copies of each training image (flip, crop,
brightness, drawn once from the global random state), and phase 2 trains the top on one view
of each image at random every epoch instead of running the bottom every epoch (the features
are computed from the original's and the flip's activations). Otherwise (every layer,
`fine_tune_input='images'`) the cache keeps the images the base took, decoded, resized and
through the Transform graph, as float16 (half the bytes of float32, a 2**-11 relative error:
far below the uint8 rounding of a pixel), and phase 2 augments them each epoch instead of
decoding every JPEG again (a partial fine-tune runs its frozen bottom forward on them each
step, without gradients). Either is kept only within
`PHASE2_INPUT_BUDGET_BYTES`; past it, phase 2 reads the image files.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import tensorflow as tf

from components import dataset

# At most this many bytes of phase 2's cached input (activations or images) in memory.
PHASE2_INPUT_BUDGET_BYTES = 2 << 30
IMAGE_DTYPE = np.float16  # the cached images' type
# The training images' cached activations' type: half float32's bytes (the budget reaches
# twice as many images, and the run's memory), a 2**-11 relative rounding of what phase 2
# trains on. The eval images' stay float32: phase 2's validation metrics, which pick the
# epoch and the phase, are then the exported model's own (the Keras model casts each batch).
ACTIVATION_DTYPE = np.float16


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
            bottom=None, keep_images: bool = False, budget_bytes: int = 0,
            augmented: int = 0, value_range=(0.0, 255.0),
            activation_dtype=np.float32) -> tuple:
    """Pooled features of every image of `ds` (batches of (image, label), not augmented):
    (features float32 [N, D], labels int64 [N], phase 2's input); with flip, the horizontally
    flipped images' features follow as N more rows with the same labels. forward:
    forward_fn(extractor), shared by calls that extract with the same extractor. bottom:
    forward_fn of a FrozenSplit's bottom, `forward` then that split's rest: phase 2's input is
    its activations, activation_dtype [N, views, ...] (views: the original, the flip, then
    `augmented` copies through dataset.augment, each drawn anew: activations only, no
    features); else with keep_images the images themselves, IMAGE_DTYPE [N, S, S, 3] (the
    originals: phase 2 augments them). Kept while their bytes stay within budget_bytes, else
    (and with neither) None."""
    forward = forward or forward_fn(extractor)
    views, labels, size = [], [], 0
    kept = [] if bottom is not None or keep_images else None  # while within budget_bytes
    for images, y in ds:
        images = tf.cast(images, tf.float32)
        inputs = [images, tf.image.flip_left_right(images)] if flip else [images]
        if bottom is None:
            out = [forward(x) for x in inputs]
            held = images.numpy().astype(IMAGE_DTYPE) if kept is not None else None
        else:
            acts = [bottom(x) for x in inputs]
            out = [forward(a) for a in acts]
            if kept is not None:
                acts += [bottom(dataset.augment(images, value_range))
                         for _ in range(augmented)]
            held = np.stack([a.numpy().astype(activation_dtype) for a in acts], axis=1) \
                if kept is not None else None
        if kept is not None:
            kept.append(held)
            size += held.nbytes
            if size > budget_bytes:
                kept = None  # over budget: phase 2 reads the images
        views.append([v.numpy().astype(np.float32) for v in out])
        labels.append(y.numpy().astype(np.int64))
    if not labels:
        raise ValueError("no examples to extract features from")
    n_views = len(views[0])
    features = np.concatenate([batch[v] for v in range(n_views) for batch in views])
    held = None if kept is None else np.concatenate(kept)
    return features, np.concatenate(labels * n_views), held


class Cache:
    """Features of the training (original + flipped when augmenting) and eval images, and
    phase 2's input: with a FrozenSplit the activations where its frozen bottom ends
    (train_in [N, views, ...]: original, flip, `augmented` augmented copies; eval_in
    [M, 1, ...]), else with images=True the images
    (train_in [N, S, S, 3], eval_in [M, S, S, 3], IMAGE_DTYPE); None when not asked for or
    over budget_bytes (`phase2_input` names what is held, None for nothing)."""

    def __init__(self, extractor, train_ds, eval_ds, flip: bool, split=None,
                 images: bool = False, budget_bytes: int = PHASE2_INPUT_BUDGET_BYTES,
                 augmented: int = 0, value_range=(0.0, 255.0)):
        start = time.time()
        if split is None:
            forward, bottom = forward_fn(extractor), None  # traced once for both splits, views
        else:
            forward, bottom = forward_fn(split.rest), forward_fn(split.bottom)
        keep = dict(forward=forward, bottom=bottom, keep_images=images and split is None)
        self.augmented = int(augmented) if split is not None else 0
        self.train_x, self.train_y, self.train_in = extract(
            extractor, train_ds, flip=flip, budget_bytes=budget_bytes,
            augmented=self.augmented, value_range=value_range,
            activation_dtype=ACTIVATION_DTYPE, **keep)
        left = budget_bytes - (self.train_in.nbytes if self.train_in is not None else 0)
        self.eval_x, self.eval_y, self.eval_in = extract(
            extractor, eval_ds, budget_bytes=left if self.train_in is not None else -1, **keep)
        if self.eval_in is None:
            self.train_in = None
        self.split = split if self.train_in is not None else None
        self.boundary = split.layer if split is not None else None
        self.kind = "activations" if split is not None else "images" if images else None
        self.traces = forward.experimental_get_tracing_count()
        self.views = 2 if flip else 1
        self.seconds = time.time() - start

    @property
    def phase2_input(self) -> str | None:
        """What phase 2 can train on from the cache (history.json's `phase2.input`), None
        when nothing is kept."""
        if self.train_in is None:
            return None
        return "activations of %s" % self.boundary if self.kind == "activations" \
            else "cached images"

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
        if self.train_in is not None:
            out.train_in = self.train_in[np.asarray(keep, dtype=np.int64)]
        return out

    def describe(self) -> dict:
        held = self.train_in is not None
        first_shape_axis = 2 if self.kind == "activations" else 1  # after [N, views]
        phase2 = {"shape": list(self.train_in.shape[first_shape_axis:]) if held else None,
                  "megabytes": round((self.train_in.nbytes + self.eval_in.nbytes) / 2**20, 1)
                  if held else None,
                  "kept": held}
        return {"train_examples": self.train_examples, "train_views": self.views,
                "eval_examples": len(self.eval_y), "dims": int(self.train_x.shape[1]),
                "traces": self.traces,
                "seconds": round(self.seconds, 2),
                "activations": {"layer": self.boundary, "augmented_views": self.augmented,
                                **phase2}
                if self.kind == "activations" else None,
                "images": {"dtype": np.dtype(IMAGE_DTYPE).name, **phase2}
                if self.kind == "images" else None}
