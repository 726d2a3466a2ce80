"""The transfer-learning model and its two training phases.

Model: preprocessed image -> backbone (include_top=False, called with training=False so
BatchNorm always runs in inference mode) -> GlobalAveragePooling2D -> Dense(head_units,
relu) -> Dropout -> Dense(n, softmax, float32).

Phase 1 trains the head on the frozen base. Phase 2 unfreezes the top `fine_tune_layers`
layers of the base, keeps every BatchNormalization layer frozen, and trains with a learning
rate 10-100x lower. Both phases stop early on validation loss and restore the best weights.

With `weights='none'` the same architecture trains from scratch instead: one phase, every
layer trainable, BatchNorm in training mode with moving-average momentum 0.9 (PyTorch's
default) instead of the pretrained nets' 0.99: on a few hundred images the 0.99 averages lag the
fast-changing random-init weights so far that validation stayed at chance while training
accuracy climbed (the baseline of bench/transfer_vs_scratch.py).
"""
from __future__ import annotations

import time

import tf_keras

from components.training_config import TrainingConfig


SCRATCH_BN_MOMENTUM = 0.9


def build(backbone, cfg: TrainingConfig):
    """Returns (model, base): the base frozen (phase 1), or all of it trainable from scratch."""
    scratch = cfg.from_scratch
    image_size = cfg.input_size()
    base = backbone.build_base(weights=None if scratch else cfg.weights, image_size=image_size)
    base.trainable = scratch
    if scratch:
        for layer in base.layers:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    inputs = tf_keras.Input((image_size, image_size, 3), name="image_xf")
    # Pretrained: BatchNorm always in inference mode. From scratch: BatchNorm learns its
    # statistics (training follows the Keras learning phase).
    x = base(inputs) if scratch else base(inputs, training=False)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = tf_keras.layers.Dense(cfg.head_units, activation="relu", name="head_dense")(x)
    x = tf_keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    outputs = tf_keras.layers.Dense(cfg.num_classes, activation="softmax",
                                    dtype="float32", name="probabilities")(x)
    return tf_keras.Model(inputs, outputs, name="graft_classifier"), base


def compile_for(model, learning_rate: float) -> None:
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def unfreeze_top(base, num_layers: int) -> int:
    """Phase 2: top `num_layers` layers trainable, BatchNorm always frozen. Returns how many
    layers hold trainable weights afterwards."""
    base.trainable = True
    cutoff = max(0, len(base.layers) - int(num_layers))
    for i, layer in enumerate(base.layers):
        trainable = i >= cutoff and not isinstance(layer, tf_keras.layers.BatchNormalization)
        layer.trainable = trainable
    return sum(1 for layer in base.layers if layer.trainable and layer.trainable_weights)


class EpochClock(tf_keras.callbacks.Callback):
    """Seconds since the start of fit() at the end of every epoch (time to an accuracy)."""

    def on_train_begin(self, logs=None):
        self.start = time.time()
        self.seconds = []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.time() - self.start, 2))


def early_stopping(patience: int):
    return tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(patience),
                                            restore_best_weights=True)
