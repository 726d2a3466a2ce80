"""The Keras choice: tf.keras is Keras 2 (tf-keras) in graft processes, and a model built,
saved and loaded with tf_keras keeps its predictions."""
from __future__ import annotations

import subprocess
import sys

import numpy as np


def test_tf_keras_is_keras2_in_a_fresh_graft_process():
    code = ("import pipeline.cli, tensorflow as tf, tensorflow_transform, tf_keras;"
            "print(tf.keras.__name__, tf_keras.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0].startswith("tf_keras") and out[1].startswith("2."), out


def test_components_use_tf_keras_not_tf_keras_attribute():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "components"
    offenders = [str(p) for p in root.rglob("*.py") if "tf.keras." in p.read_text()]
    assert not offenders, offenders


def test_saved_model_roundtrip_with_tf_keras(tmp_path):
    import tensorflow as tf
    import tf_keras

    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(
        tf_keras.layers.BatchNormalization()(inputs)))
    x = np.random.RandomState(0).rand(5, 4).astype("float32")
    expected = model(x).numpy()
    model.save(str(tmp_path / "m"), save_format="tf")
    loaded = tf_keras.models.load_model(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded(x).numpy(), expected, atol=1e-6)
    sig = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]
    out = list(sig(tf.constant(x)).values())[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
