"""components.dataset.augment: the crop drawn per batch or per image, the value range kept."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from components import dataset


def _ramp(batch=8, size=64):
    """The same image `batch` times: a vertical ramp 50..200, constant along each row, so a
    horizontal flip leaves it unchanged and brightness only shifts it (no clipping)."""
    column = np.linspace(50.0, 200.0, size, dtype=np.float32)
    image = np.repeat(column[:, None, None], size, axis=1).repeat(3, axis=2)
    return tf.constant(np.stack([image] * batch))


def _shapes(out: np.ndarray) -> np.ndarray:
    """Each image minus its mean: what is left once brightness is taken out (the crop)."""
    return out - out.mean(axis=(1, 2, 3), keepdims=True)


def test_per_image_crops_differ_within_a_batch_and_per_batch_crops_do_not():
    tf.random.set_seed(3)
    x = _ramp()
    per_image = dataset.augment(x, (0.0, 255.0), per_image=True).numpy()
    per_batch = dataset.augment(x, (0.0, 255.0)).numpy()
    assert per_image.shape == per_batch.shape == x.shape
    spread_image = np.abs(_shapes(per_image) - _shapes(per_image)[:1]).max()
    spread_batch = np.abs(_shapes(per_batch) - _shapes(per_batch)[:1]).max()
    assert spread_batch < 1e-3           # one crop for the whole batch
    assert spread_image > 1.0            # a crop of its own per image
    # A crop of 85-100 % of the height keeps that share of the ramp's 150 levels.
    ranges = per_image[:, -1, 0, 0] - per_image[:, 0, 0, 0]
    assert np.all(ranges >= 150.0 * 0.85 * 0.99) and np.all(ranges <= 150.0 * 1.01)


def test_augment_stays_in_the_value_range():
    tf.random.set_seed(4)
    x = tf.random.uniform([6, 32, 32, 3], -1.0, 1.0)
    for per_image in (True, False):
        out = dataset.augment(x, (-1.0, 1.0), per_image=per_image).numpy()
        assert out.min() >= -1.0 and out.max() <= 1.0 and out.shape == (6, 32, 32, 3)
