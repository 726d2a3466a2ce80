"""The Trainer's input pipeline: raw image tf.Examples -> Transform graph -> (image, label).

Transform runs with `materialize=False`, so the Trainer reads the raw ExampleGen output
and maps the Transform graph (tft_layer) over batches. Records whose image does not decode
are dropped (and counted in the log) instead of failing training halfway.
Augmentation (flip, small crop, brightness) applies to the training split only, after
the Transform graph, scaled to the backbone's value range. `from_arrays` serves phase 2 from
images the feature cache already decoded and transformed, with the same shuffle and
augmentation.

tf.data's autotuning is off (`finish()`): with it on, TF 2.16 made every iterator's teardown
wait for the autotuner's sleeping thread, which Keras does at the end of every epoch and of
every fit(): 5-6 s more per phase-2 epoch and 15-40 s more per fit on 2 CPU cores (measured:
a 3-epoch fine-tune of 711 images took 124 s with it, 82.6 s without; same per-step speed).
AUTOTUNE parallelism then means one thread per core.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from components import image_ops, transform
from components.training_config import TrainingConfig

AUTOTUNE = tf.data.AUTOTUNE


def _files(patterns) -> list[str]:
    files = []
    for pattern in patterns:
        files.extend(sorted(tf.io.gfile.glob(pattern)))
    if not files:
        raise ValueError("no example files match %s" % list(patterns))
    return files


def raw_spec(tf_transform_output, cfg: TrainingConfig) -> dict:
    """The raw feature spec of the image and label features only."""
    spec = tf_transform_output.raw_feature_spec()
    keys = [cfg.image_key, cfg.label_key]
    missing = [k for k in keys if k not in spec]
    if missing:
        raise ValueError("features %s are not in the schema (present: %s); set image_key/"
                         "label_key to match your TFRecords" % (missing, sorted(spec)))
    return {k: spec[k] for k in keys}


def _decodes(image_bytes: tf.Tensor) -> tf.Tensor:
    """Raises inside tf.data (so ignore_errors drops the record) if the image is bad."""
    return tf.shape(image_ops.decode_rgb(image_bytes))[0]


def make_dataset(file_patterns, tf_transform_output, cfg: TrainingConfig, batch_size: int,
                 training: bool, value_range=(0.0, 255.0),
                 cache: bool = True) -> tf.data.Dataset:
    """Batches of (transformed image float32 [B,S,S,3], label int64 [B])."""
    spec = raw_spec(tf_transform_output, cfg)
    image_key, label_key = cfg.image_key, cfg.label_key
    num_classes = cfg.num_classes
    ds = tf.data.TFRecordDataset(_files(file_patterns), compression_type="GZIP",
                                 num_parallel_reads=AUTOTUNE)
    ds = ds.map(lambda s: tf.io.parse_single_example(s, spec), num_parallel_calls=AUTOTUNE)

    def check(features):
        img = tf.reshape(features[image_key], [-1])[0]
        tf.debugging.assert_positive(_decodes(img), message="image does not decode")
        label = tf.reshape(features[label_key], [-1])[0]
        tf.debugging.assert_non_negative(label, message="label < 0")
        tf.debugging.assert_less(label, tf.cast(num_classes, label.dtype),
                                 message="label outside the vocabulary")
        return features

    ds = ds.map(check, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)
    if cache:
        ds = ds.cache()  # raw bytes only: small, and the decode check runs once
    if training:
        ds = ds.shuffle(2048, seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    tft_layer = tf_transform_output.transform_features_layer()

    def apply_transform(features):
        out = tft_layer(features)
        return out[transform.IMAGE_XF], tf.reshape(features[label_key], [-1])

    ds = ds.map(apply_transform, num_parallel_calls=AUTOTUNE)
    return finish(augmented(ds, training, cfg, value_range))


def gathered(array: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
             seed: int) -> tf.data.Dataset:
    """Batches (rows of `array` as float32, labels) of a numpy array of any float dtype
    ([N, ...]: the feature cache's images or activations), shuffled every epoch when asked.
    The array stays where it is: each batch gathers its rows from it (no copy of it into a
    tensor or the dataset, no shuffle buffer of rows), and a float16 array is cast a batch at
    a time."""
    labels = np.asarray(labels, np.int64)
    n, dtype = len(labels), tf.as_dtype(array.dtype)
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)

    def gather(rows):
        batch = tf.numpy_function(lambda r: array[r], [rows], dtype, stateful=False)
        batch.set_shape((None,) + array.shape[1:])
        return tf.cast(batch, tf.float32), tf.gather(labels, rows)

    return ds.batch(batch_size).map(gather, num_parallel_calls=AUTOTUNE)


def from_arrays(images: np.ndarray, labels: np.ndarray, batch_size: int, training: bool,
                cfg: TrainingConfig, value_range=(0.0, 255.0)) -> tf.data.Dataset:
    """make_dataset's batches from images already through the Transform graph (the feature
    cache's numpy array, any float dtype [N, S, S, 3]) and their labels [N]: float32 images
    (`gathered`), shuffled every epoch and augmented when training."""
    ds = gathered(images, labels, batch_size, training, cfg.seed)
    return finish(augmented(ds, training, cfg, value_range))


def augmented(ds: tf.data.Dataset, training: bool, cfg: TrainingConfig,
              value_range=(0.0, 255.0)) -> tf.data.Dataset:
    """Batches of (image, label) with `augment` applied to the images when training with
    cfg.augment; otherwise `ds` itself."""
    if not (training and cfg.augment):
        return ds
    return ds.map(lambda x, y: (augment(x, value_range), y),
                  num_parallel_calls=AUTOTUNE)


def finish(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Prefetch, and tf.data's autotuner off (see the module docstring)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(AUTOTUNE).with_options(options)


def augment(images: tf.Tensor, value_range=(0.0, 255.0), per_image: bool = False) -> tf.Tensor:
    """Random horizontal flip, crop of 85-100 % resized back, brightness +-10 % of the range.
    The crop's size and offset are drawn once per batch, or per image with `per_image`
    (tf.image.crop_and_resize: bilinear, as tf.image.resize). The draws come from TensorFlow's
    global random state, which tf_keras.utils.set_random_seed(cfg.seed) fixes when training
    starts."""
    lo, hi = float(value_range[0]), float(value_range[1])
    size = tf.shape(images)[1:3]
    batch = tf.shape(images)[0]
    images = tf.image.random_flip_left_right(images)
    if per_image:
        frac = tf.random.uniform([batch], 0.85, 1.0)
        top = tf.random.uniform([batch]) * (1.0 - frac)
        left = tf.random.uniform([batch]) * (1.0 - frac)
        boxes = tf.stack([top, left, top + frac, left + frac], axis=1)
        images = tf.image.crop_and_resize(images, boxes, tf.range(batch), size)
    else:
        frac = tf.random.uniform([], 0.85, 1.0)
        crop = tf.cast(tf.cast(size, tf.float32) * frac, tf.int32)
        images = tf.image.random_crop(images, tf.concat([[batch], crop, [3]], axis=0))
        images = tf.image.resize(images, size)
    delta = tf.random.uniform([batch, 1, 1, 1], -0.1, 0.1) * (hi - lo)
    return tf.clip_by_value(images + delta, lo, hi)


def count_examples(file_patterns) -> int:
    """Records in the (GZIP) example files: the length of an epoch, for the schedule."""
    return sum(1 for _ in tf.data.TFRecordDataset(_files(file_patterns),
                                                  compression_type="GZIP"))


def count_labels(file_patterns, label_key: str, num_classes: int,
                 compression_type: str = "GZIP") -> list[int]:
    """Training records per class (index = label id) from the label feature alone (no image
    decoding): the counts behind --class-weight balanced when there is no feature cache.
    Labels outside 0..num_classes-1 are not counted (make_dataset drops those records)."""
    counts = [0] * num_classes
    spec = {label_key: tf.io.VarLenFeature(tf.int64)}
    ds = tf.data.TFRecordDataset(_files(file_patterns), compression_type=compression_type)
    for batch in ds.batch(1024).map(lambda s: tf.io.parse_example(s, spec)[label_key]):
        values = tf.sparse.to_dense(batch, default_value=-1)[:, 0].numpy()
        for value in values:
            if 0 <= value < num_classes:
                counts[int(value)] += 1
    return counts
