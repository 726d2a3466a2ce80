"""Class weights of the loss (`TrainingConfig.class_weight`) for imbalanced training data.

'balanced' is inverse frequency, scikit-learn's formula: class c with n_c of the n training
images weighs n / (k * n_c), so every class contributes the same total weight and the mean
weight over the training images is 1 (the loss keeps its scale). The counts come from the
training labels the Trainer reads anyway: the labels of the feature cache (every training
image, once per view: the same proportions), or one pass over the training records' label
feature when phase 1 trains on images. A class without training images gets weight 1.0 (it
never occurs in the loss). 'none' is no weighting (Keras' class_weight=None).
"""
from __future__ import annotations

import numpy as np

MODES = ("none", "balanced")


def label_counts(labels, num_classes: int) -> list[int]:
    """Images per class (index = label id) of an int label array."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    return [int(c) for c in np.bincount(labels, minlength=num_classes)[:num_classes]]


def balanced(counts) -> list[float]:
    """n / (k * n_c) per class; 1.0 for a class with no images."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    n, k = counts.sum(), int(present.sum())
    weights = np.ones_like(counts)
    weights[present] = n / (k * counts[present])
    return [float(w) for w in weights]


def for_mode(mode: str, counts) -> dict | None:
    """Keras' class_weight dict {label id: weight} for `mode`, or None for 'none'."""
    if mode not in MODES:
        raise ValueError("class_weight must be one of %s, not %r" % (MODES, mode))
    if mode == "none":
        return None
    return dict(enumerate(balanced(counts)))


def describe(mode: str, counts, label_names) -> dict:
    """What training_summary.json records: the mode, the training counts and the weights."""
    weights = for_mode(mode, counts) or {}
    names = [str(n) for n in label_names] or [str(i) for i in range(len(counts))]
    return {"mode": mode,
            "train_counts": {names[i]: int(c) for i, c in enumerate(counts)},
            "weights": {names[i]: round(w, 6) for i, w in weights.items()}}
