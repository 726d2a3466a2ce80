"""A tiny SavedModel with graft's serving contract, for tests and the serving benchmark.

A test fixture, kept out of the shipped `serving` package (`import toy_model` in tests,
`from tests import toy_model` in bench/serving_load.py).

`serving_default`: `image_bytes` DT_STRING [None] -> `probabilities` float32 [None, 3],
`class_index` int64 [None], `class_name` string [None], `class_names` string [None, n]. Each
element is decoded with components.image_ops.decode_rgb, resized to 16x16, and a fixed linear
layer over the mean colour (scaled to 0..1) gives softmax probabilities over red/green/blue.
Variant 1 maps red->red, variant 2 permutes the classes (red->green...), so a hot swap is
observable. Two more signatures take serialized tf.Examples (feature 'image'), as graft's
models do: `serve_tf_examples` -> `probabilities`, `transform_features` -> the decoded, resized
`image_xf` (float32 [None, 16, 16, 3]). `busy_steps` > 0 makes every call of
`serving_default` also chain that many 512 x 512 matrix products seeded by the request (a
model that takes long to run, whatever the request: for the deadline tests; the outputs are
unchanged).
"""
from __future__ import annotations

import os
import uuid

CLASS_NAMES = ("red", "green", "blue")


def _weights(variant: int):
    import numpy as np
    eye = np.eye(3, dtype=np.float32) * 6.0
    w = eye if variant == 1 else np.roll(eye, variant - 1, axis=1)
    bias = np.array([0.1, 0.0, -0.1], dtype=np.float32) * variant
    return w, bias


def build(export_dir: str, variant: int = 1, busy_steps: int = 0) -> str:
    """Write the toy SavedModel to export_dir (which must not exist)."""
    import tensorflow as tf

    from components.image_ops import decode_rgb

    w, b = _weights(variant)

    class Toy(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(w, name="w")
            self.b = tf.Variable(b, name="b")
            self.names = tf.constant(list(CLASS_NAMES))

        def _pixels(self, image_bytes):
            def decode(data):
                image = decode_rgb(data)
                image.set_shape([None, None, 3])
                return tf.image.resize(tf.cast(image, tf.float32), [16, 16])

            return tf.map_fn(decode, image_bytes,
                             fn_output_signature=tf.TensorSpec([16, 16, 3], tf.float32))

        def _probs(self, image_bytes):
            pixels = self._pixels(image_bytes)
            mean = tf.reduce_mean(pixels, axis=[1, 2]) / 255.0
            return tf.nn.softmax(tf.matmul(mean, self.w) + self.b)

        def _busy(self, image_bytes):
            """0.0, after busy_steps matrix products that depend on the request (so that
            nothing folds them away)."""
            seed = tf.cast(tf.strings.length(image_bytes[0]), tf.float32) * 1e-9
            x0 = tf.fill([512, 512], seed) + tf.eye(512)
            _, x = tf.while_loop(lambda i, x: i < busy_steps,
                                 lambda i, x: (i + 1, tf.tanh(tf.matmul(x, x0))),
                                 (tf.constant(0), x0))
            return 0.0 * tf.reduce_min(x)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            probs = self._probs(image_bytes)
            if busy_steps:
                probs += self._busy(image_bytes)
            index = tf.argmax(probs, axis=-1)
            return {"probabilities": probs, "class_index": index,
                    "class_name": tf.gather(self.names, index),
                    "class_names": tf.tile(self.names[tf.newaxis], [tf.shape(probs)[0], 1])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, serialized):
            parsed = tf.io.parse_example(serialized,
                                         {"image": tf.io.FixedLenFeature([], tf.string)})
            return {"probabilities": self._probs(parsed["image"])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def transform_features(self, serialized):
            parsed = tf.io.parse_example(serialized,
                                         {"image": tf.io.FixedLenFeature([], tf.string)})
            return {"image_xf": self._pixels(parsed["image"])}

    module = Toy()
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve.get_concrete_function(),
        "serve_tf_examples": module.serve_examples.get_concrete_function(),
        "transform_features": module.transform_features.get_concrete_function()})
    return export_dir


def push(base_path: str, version: int, variant: int | None = None,
         busy_steps: int = 0) -> str:
    """Build into a non-numeric temp dir under base_path, then rename it to <version>."""
    os.makedirs(base_path, exist_ok=True)
    tmp = os.path.join(base_path, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    build(tmp, variant if variant is not None else version, busy_steps)
    final = os.path.join(base_path, str(version))
    os.rename(tmp, final)
    return final
