"""TF ops that turn encoded image bytes into backbone-ready tensors, and the one image decode.

`decode_resize` is used by the Transform `preprocessing_fn` (and therefore by the serving
signature, which embeds the Transform graph): serving never re-implements these steps.
`decode_rgb` is the single decode every check of "does this image decode like the model will"
goes through (ImageCheck, `graft make-tfrecords`, the serving dev server's diagnosis, the
Trainer's input pipeline), and `tf_error_text` the one-line form of TensorFlow's errors.
"""
from __future__ import annotations

import re

import tensorflow as tf

# Decorations TensorFlow adds to eager op errors: a leading "{{function_node ...}}" and a
# trailing " [Op:DecodeImage]".
_TF_ERROR_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]")


def decode_rgb(data) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar string) -> uint8 RGB [H, W, 3].

    Grayscale is replicated to 3 channels, alpha is dropped, an animated GIF gives its first
    frame (channels=3, expand_animations=False). Raises tf.errors.InvalidArgumentError
    eagerly (fails the op in a graph) when the bytes do not decode.
    """
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def tf_error_text(error) -> str:
    """One line for a TensorFlow error (an exception or its message string).

    The first non-empty line of the message without the `{{function_node ...}}` and
    ` [Op:...]` decorations; the exception's type name when nothing is left.
    """
    if isinstance(error, str):
        message, fallback = error, ""
    else:
        message = getattr(error, "message", None) or str(error)
        fallback = type(error).__name__
    for line in _TF_ERROR_NOISE.sub("", message).splitlines():
        if line.strip():
            return line.strip()
    return fallback


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
        image = decode_rgb(data)
        image.set_shape([None, None, 3])
        image = tf.image.resize(tf.cast(image, tf.float32), [size, size],
                                method=tf.image.ResizeMethod.BILINEAR, antialias=True)
        return tf.clip_by_value(image, 0.0, 255.0)

    return tf.map_fn(decode_one, image_bytes,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
