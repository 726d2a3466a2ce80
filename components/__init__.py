"""Code that runs inside TFX components (Transform, Trainer, custom components).

The Keras choice lives here, in one place: TFX 1.16 and tf.Transform are built on tf-keras
(Keras 2). Component code imports `tf_keras` explicitly; on top of that this package sets
TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported by graft, so that `tf.keras` is
Keras 2 as well in every graft process (tensorflow_transform sets it only when unset, and too
late once TensorFlow is already loaded, which would leave `tf.keras` as Keras 3).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
