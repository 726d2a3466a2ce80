"""Transform module: the `preprocessing_fn` that TFX's Transform component traces.

decode (JPEG/PNG/GIF/BMP, any channel layout) -> resize to the backbone's input size ->
the backbone's own `preprocess_input`. Transform runs with `materialize=False`: the graph
is applied inside the Trainer's input pipeline and embedded in the serving signature, so
training and serving run the very same ops and cannot drift.

Output keys: IMAGE_XF (float32 [B, S, S, 3]) and LABEL_XF (int64 [B]).
"""
from __future__ import annotations

import tensorflow as tf

from components import image_ops
from components.training_config import TrainingConfig

IMAGE_XF = "image_xf"
LABEL_XF = "label_xf"


def preprocessing_fn(inputs, custom_config):
    """tf.Transform preprocessing_fn (no analyzers: a pure per-example mapping)."""
    cfg = TrainingConfig.from_custom_config(custom_config)
    backbone = cfg.get_backbone()
    image_bytes = image_ops.to_dense_bytes(inputs[cfg.image_key])
    images = image_ops.decode_resize(image_bytes, cfg.input_size())
    outputs = {IMAGE_XF: tf.cast(backbone.preprocess(images), tf.float32)}
    label_key = cfg.label_key
    if label_key in inputs:
        label = inputs[label_key]
        if isinstance(label, tf.SparseTensor):
            label = tf.sparse.to_dense(label, default_value=-1)
        if label.shape.rank == 2:
            label = label[:, 0]
        outputs[LABEL_XF] = tf.cast(label, tf.int64)
    return outputs
