"""TF ops that turn encoded image bytes into backbone-ready tensors.

Shared by the Transform `preprocessing_fn` (and therefore by the serving signature, which
embeds the Transform graph) and by nothing else: serving never re-implements these steps.
"""
from __future__ import annotations

import tensorflow as tf


def to_dense_bytes(x) -> tf.Tensor:
    """A raw bytes feature (dense [B], [B,1], or sparse [B,None]) as a dense [B] string tensor."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x, default_value=b"")
        x = x[:, 0] if x.shape.rank == 2 else x
        return x
    if isinstance(x, tf.RaggedTensor):
        x = x.to_tensor(default_value=b"")
    if x.shape.rank == 2:
        x = x[:, 0]
    return x


def decode_resize(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP bytes [B] to float32 RGB [B, size, size, 3] in 0..255.

    Grayscale is replicated, alpha dropped (channels=3), an animated GIF keeps its first frame.
    """
    def decode_one(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        image = tf.image.resize(tf.cast(image, tf.float32), [size, size],
                                method=tf.image.ResizeMethod.BILINEAR, antialias=True)
        return tf.clip_by_value(image, 0.0, 255.0)

    return tf.map_fn(decode_one, image_bytes,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
