"""The transfer-learning model, its loss, optimizers and the phase-2 unfreezing.

Model: preprocessed image -> backbone (include_top=False, called with training=False so
BatchNorm always runs in inference mode) -> GlobalAveragePooling2D ("pool") -> head:
Dense(head_units, relu) -> Dropout -> Dense(n, softmax, float32). The head's layers are also
wrapped in a model of their own that takes pooled features, so phase 1 can train them on
cached features (components/feature_cache.py) and the full model carries the result.

Phase 1 trains the head on the frozen base. Phase 2 unfreezes the top of the base
(`TrainingConfig.fine_tune_count`; a hub: module is one layer, unfrozen whole), keeps every
BatchNormalization layer frozen (and the depthwise convolutions with `freeze_depthwise`), and
trains
with its own optimizer and schedule (AdamW with a warm-up + cosine decay by default). Both
phases use label smoothing when configured. Phase 2 trains through `micro_batched()`: each
batch's gradient is computed in slices of `micro_batch_size` images and applied once, the very
update of the whole batch (BatchNorm is frozen, so no layer sees across images) with the
activation memory of a slice (Lite0, 224 px, 2 CPU cores: a step of 32 at once peaks at
2.7 GB, in slices of 16 at 2.0 GB, at the same images per second; slices of 8 are 1.5x slower).

With `weights='none'` the same architecture trains from scratch instead: one phase, every
layer trainable, BatchNorm in training mode with moving-average momentum 0.9 (PyTorch's
default) instead of the pretrained nets' 0.99: on a few hundred images the 0.99 averages lag the
fast-changing random-init weights so far that validation stayed at chance while training
accuracy climbed (the baseline of bench/transfer_vs_scratch.py).
"""
from __future__ import annotations

import math
import time
from typing import NamedTuple

import tensorflow as tf
import tf_keras

from components import autograph_rules
from components.backbones import hub
from components.training_config import TrainingConfig

# Every process that builds graft's models trains them without converting Keras' own code.
autograph_rules.keep_autograph_out_of_tf_keras()

SCRATCH_BN_MOMENTUM = 0.9
POOL_LAYER = "pool"
HEAD_LAYERS = ("head_dense", "head_dropout", "probabilities")  # in the order they apply


class Classifier(NamedTuple):
    model: tf_keras.Model   # image -> probabilities (what is trained in phase 2 and exported)
    base: tf_keras.Model    # the backbone
    head: tf_keras.Model    # pooled features -> probabilities, sharing the model's head layers


def build(backbone, cfg: TrainingConfig) -> Classifier:
    """The classifier with the base frozen (phase 1), or all of it trainable from scratch."""
    scratch = cfg.from_scratch
    image_size = cfg.input_size()
    base = backbone.build_base(weights=None if scratch else cfg.weights, image_size=image_size)
    base.trainable = scratch
    if scratch:
        for layer in base.layers:
            if isinstance(layer, tf_keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
    dense, dropout, probabilities = HEAD_LAYERS
    head_layers = [
        tf_keras.layers.Dense(cfg.head_units, activation="relu", name=dense),
        tf_keras.layers.Dropout(cfg.dropout, name=dropout),
        tf_keras.layers.Dense(cfg.num_classes, activation="softmax", dtype="float32",
                              name=probabilities),
    ]

    def apply_head(x):
        for layer in head_layers:
            x = layer(x)
        return x

    inputs = tf_keras.Input((image_size, image_size, 3), name="image_xf")
    # Pretrained: BatchNorm always in inference mode. From scratch: BatchNorm learns its
    # statistics (training follows the Keras learning phase).
    x = base(inputs) if scratch else base(inputs, training=False)
    # A hub: image feature vector is pooled already ([B, D]); the other bases give [B, h, w, D].
    pooled = tf_keras.layers.GlobalAveragePooling2D(name=POOL_LAYER)(x) if len(x.shape) == 4 \
        else tf_keras.layers.Identity(name=POOL_LAYER)(x)
    model = tf_keras.Model(inputs, apply_head(pooled), name="graft_classifier")
    features = tf_keras.Input((pooled.shape[-1],), name="features")
    head = tf_keras.Model(features, apply_head(features), name="graft_head")
    return Classifier(model, base, head)


class MicroBatchModel(tf_keras.Model):
    """A functional model whose train_step sums the gradients of `micro_batch_size`-image
    slices of the batch and applies the sum once. Each slice's loss is weighted by its share
    of the batch, so the update, the loss and the metrics equal the whole batch's (Keras
    reduces a loss by the number of examples, class weights included). Only for models whose
    layers do not look across examples (BatchNorm frozen), as in phase 2."""

    def __init__(self, *args, micro_batch_size: int = 16, **kwargs):
        super().__init__(*args, **kwargs)
        self.micro_batch_size = int(micro_batch_size)

    def train_step(self, data):
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        size = tf.shape(y)[0]
        total = tf.cast(size, tf.float32)
        step = self.micro_batch_size
        scaling = isinstance(self.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

        def micro_step(start, grads):
            end = tf.minimum(size, start + step)
            xs, ys = x[start:end], y[start:end]
            ws = None if sample_weight is None else sample_weight[start:end]
            with tf.GradientTape() as tape:
                pred = self(xs, training=True)
                loss = self.compute_loss(xs, ys, pred, ws) \
                    * tf.cast(end - start, tf.float32) / total
                if scaling:
                    loss = self.optimizer.get_scaled_loss(loss)
            part = tape.gradient(loss, variables)
            if scaling:
                part = self.optimizer.get_unscaled_gradients(part)
            self.compute_metrics(xs, ys, pred, ws)
            return start + step, [g if p is None else g + p for g, p in zip(grads, part)]

        # An explicit loop, not AutoGraph's (components/autograph_rules.py keeps AutoGraph out of
        # Keras' code, which calls this), one slice at a time: slices run in parallel would
        # hold all their activations.
        _, grads = tf.while_loop(lambda start, _: start < size, micro_step,
                                 [tf.constant(0), [tf.zeros_like(v) for v in variables]],
                                 parallel_iterations=1)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self.get_metrics_result()


def micro_batched(model: tf_keras.Model, micro_batch_size: int, batch_size: int):
    """`model` itself, or (when 0 < micro_batch_size < batch_size) a MicroBatchModel over the
    same layers: training it trains `model`, which stays a plain Model for export."""
    if not 0 < int(micro_batch_size) < int(batch_size):
        return model
    return MicroBatchModel(model.inputs, model.outputs, name=model.name + "_micro",
                           micro_batch_size=micro_batch_size)


def feature_extractor(classifier: Classifier) -> tf_keras.Model:
    """image -> pooled features: the part of the model that phase 1 leaves frozen."""
    model = classifier.model
    return tf_keras.Model(model.input, model.get_layer(POOL_LAYER).output, name="graft_features")


class FrozenSplit(NamedTuple):
    """The base cut where phase 2's frozen bottom ends: `bottom` (image -> the one tensor
    every layer above needs from below), `rest` (that tensor -> pooled features, through
    the base's top layers, shared with the model) and the name of the layer that ends the
    bottom."""
    bottom: tf_keras.Model
    rest: tf_keras.Model
    layer: str


def frozen_boundary(base, num_trainable_top: int) -> int:
    """Where phase 2's frozen bottom can end: a layer index j <= the first unfrozen layer such
    that the base's layers from j on take exactly one tensor from below, the output of layer
    j - 1 (no residual connection crosses it). Of those at the highest one's resolution, the
    one with the smallest output (the memory the cache needs; not an expanded tensor inside a
    block), the highest among equals (the least work left above it): in practice the last
    block output below the unfrozen layers. 0 when there is none above the input (every
    layer fine-tuned, a hub: module, or a graph it cannot read)."""
    layers = base.layers
    index = {id(layer): i for i, layer in enumerate(layers)}
    sources = []
    for layer in layers:
        # The first call is the base's own graph (a FrozenSplit's models call layers again).
        nodes = layer._inbound_nodes
        inbound = nodes[0].inbound_layers if nodes else []
        inbound = inbound if isinstance(inbound, (list, tuple)) else [inbound]
        if any(id(src) not in index for src in inbound):
            return 0
        sources.append([index[id(src)] for src in inbound])
    cutoff = len(layers) - int(num_trainable_top)
    cuts = []  # (j, output shape) from the top down
    for j in range(min(cutoff, len(layers) - 1), 1, -1):
        crossing = {s for i in range(j, len(layers)) for s in sources[i] if s < j}
        output = layers[j - 1].output
        if crossing == {j - 1} and not isinstance(output, (list, tuple)):
            cuts.append((j, tuple(output.shape[1:])))
    if not cuts:
        return 0
    # At the highest cut's resolution only: a smaller tensor further down saves memory but
    # would add a whole stage of work to every epoch.
    spatial = cuts[0][1][:-1]
    same = [(math.prod(d or 1 for d in shape), -j) for j, shape in cuts if shape[:-1] == spatial]
    return -min(same)[1]


def frozen_split(classifier: Classifier, num_trainable_top: int):
    """FrozenSplit of the classifier's base for phase 2 unfreezing its top
    `num_trainable_top` layers, or None when the frozen part is only the input. The models
    share the base's layers, so rest(bottom(x)) is the pooled output of the model itself and
    training through `rest` trains the model."""
    base, model = classifier.base, classifier.model
    j = frozen_boundary(base, num_trainable_top)
    if j <= 1:
        return None
    boundary = base.layers[j - 1]
    bottom = tf_keras.Model(base.input, boundary.output, name="graft_frozen_bottom")
    top = tf_keras.Model(boundary.output, base.output, name="graft_base_top")
    activations = tf_keras.Input(boundary.output.shape[1:], name="activations")
    pooled = model.get_layer(POOL_LAYER)(top(activations, training=False))
    rest = tf_keras.Model(activations, pooled, name="graft_rest")
    return FrozenSplit(bottom, rest, boundary.name)


class RandomView(tf_keras.layers.Layer):
    """[B, views, ...] -> [B, ...]: in training a random view per example (the cached
    original or flip of each image, as a random flip picks), else view 0 (the original)."""

    def call(self, views, training=None):
        if not training:
            return views[:, 0]
        pick = tf.random.uniform(tf.shape(views)[:1], 0, tf.shape(views)[1], dtype=tf.int32)
        return tf.gather(views, pick, axis=1, batch_dims=1)


def on_activations(classifier: Classifier, split: FrozenSplit) -> tf_keras.Model:
    """The classifier from the cached activations of its frozen bottom ([B, views, ...], any
    number of views) to probabilities: phase 2 trains it instead of the model, which shares
    its layers."""
    shape = split.rest.input_shape[1:]
    inputs = tf_keras.Input((None,) + tuple(shape), name="activation_views")
    x = split.rest(RandomView(name="random_view")(inputs))
    for name in HEAD_LAYERS:
        x = classifier.model.get_layer(name)(x)
    return tf_keras.Model(inputs, x, name="graft_classifier_on_activations")


def needs_layer_traces(model) -> bool:
    """Whether a Keras SavedModel of `model` must carry each layer's traced call functions
    (`save_traces`): only when some layer is not a built-in Keras class (a hub: module's
    HubLayer), since Keras rebuilds built-in layers from their configs on load. Without
    them the Lite0 classifier saves in 1.7 s instead of 10 and loads 2-3x faster (Evaluator,
    TFLiteExport); the serving signatures are traced either way. Ask before attaching
    other layers as attributes (signatures.make_signatures' tft_layer): they count too."""
    def custom(layer) -> bool:
        if not type(layer).__module__.startswith("tf_keras."):
            return True
        return any(custom(sub) for sub in getattr(layer, "layers", []))
    return custom(model)


def save_for_serving(model, path: str, signatures=None, layer_traces=None) -> bool:
    """Save `model` as a SavedModel to serve: no optimizer state, a plain loss (loadable
    without graft's), Keras' layer traces only where needs_layer_traces(model) says so
    (pass `layer_traces` when asked before layers were attached as attributes). Returns
    whether the traces were saved."""
    if layer_traces is None:
        layer_traces = needs_layer_traces(model)
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(path, save_format="tf", signatures=signatures, include_optimizer=False,
               save_traces=layer_traces)
    return layer_traces


def smoothed_loss(num_classes: int, label_smoothing: float):
    """Cross-entropy of integer labels against softmax probabilities, with label smoothing
    (tf_keras' sparse cross-entropy has none): the one-hot target becomes
    (1 - s) * onehot + s / n."""
    smoothing = float(label_smoothing)

    def loss(y_true, y_pred):
        # Per-example losses: Keras applies sample (class) weights and reduces them itself. A
        # loss reduced here to a scalar would silently ignore the weights.
        labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
        return tf_keras.losses.categorical_crossentropy(
            tf.one_hot(labels, num_classes), y_pred, label_smoothing=smoothing)

    loss.__name__ = "smoothed_crossentropy"
    return loss


def learning_rate(cfg: TrainingConfig, steps_per_epoch: int):
    """Phase 2's learning rate: constant, or linear warm-up then cosine decay to 0."""
    peak = cfg.fine_tune_learning_rate
    if cfg.fine_tune_schedule == "constant":
        return peak
    total = max(1, cfg.fine_tune_epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    return tf_keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak, decay_steps=total - warmup,
        warmup_target=peak if warmup else None, warmup_steps=warmup)


def optimizer(name: str, rate, weight_decay: float = 0.0):
    if name == "adamw":
        return tf_keras.optimizers.AdamW(learning_rate=rate, weight_decay=weight_decay)
    return tf_keras.optimizers.Adam(rate)


def compile_for(model, opt, cfg: TrainingConfig | None = None) -> None:
    """Compile with an optimizer (or a learning rate for Adam); the loss is cross-entropy of
    integer labels, label-smoothed when `cfg` asks for it."""
    if isinstance(opt, (int, float)):
        opt = tf_keras.optimizers.Adam(opt)
    loss = smoothed_loss(cfg.num_classes, cfg.label_smoothing) \
        if cfg is not None and cfg.label_smoothing else "sparse_categorical_crossentropy"
    model.compile(optimizer=opt, loss=loss,
                  metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def unfreeze_top(base, num_layers: int, freeze_depthwise: bool = False) -> int:
    """Phase 2: top `num_layers` layers trainable, BatchNorm always frozen, and with
    `freeze_depthwise` the DepthwiseConv2D layers too. Returns how many layers hold trainable
    weights afterwards."""
    base.trainable = True
    cutoff = max(0, len(base.layers) - int(num_layers))
    frozen = (tf_keras.layers.BatchNormalization,) + \
        ((tf_keras.layers.DepthwiseConv2D,) if freeze_depthwise else ())
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cutoff and not isinstance(layer, frozen)
    return sum(1 for layer in base.layers if layer.trainable and layer.trainable_weights)


def phase2_label(base) -> str:
    """What phase 2 trains of `base`, for the log and the run summary: a hub: module is one
    block, fine-tuned whole (BatchNorm in inference mode when the module has a `training`
    argument, since graft calls the base with training=False)."""
    modules = [layer for layer in base.layers
               if isinstance(layer, hub.HubLayer) and layer.trainable]
    if not modules:
        return "phase 2"
    bn = "BatchNorm in inference mode" if modules[0].has_training_argument else \
        "module has no training argument"
    return "phase 2 (whole hub module, %s)" % bn


def steps(examples: int, batch_size: int) -> int:
    return max(1, math.ceil(examples / batch_size))


class EpochClock(tf_keras.callbacks.Callback):
    """Seconds since the start of fit() at the end of every epoch (time to an accuracy)."""

    def on_train_begin(self, logs=None):
        self.start = time.time()
        self.seconds = []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.time() - self.start, 2))


def early_stopping(patience: int, monitor_from: int = 0):
    """Stop after `patience` epochs without a lower val_loss and restore the best weights,
    judging only epochs from index `monitor_from` on (earlier ones neither count as best
    nor use up patience)."""
    return tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(patience),
                                            restore_best_weights=True,
                                            start_from_epoch=int(monitor_from))


def warmup_epochs_unjudged(cfg: TrainingConfig) -> int:
    """Phase 2's epochs that early stopping does not judge: the learning-rate warm-up's
    (rounded up; none with a constant rate), and always at least the last epoch judged. The
    warm-up is a transition from phase 1's weights (which phase 2 is compared with anyway) to
    fine-tuning at the peak rate; judged, a warm-up epoch that happens to score best uses up
    the patience before the peak-rate epochs have done their work (measured: a mri-dev
    cross-validation fold restored epoch 1 and stopped after 4 of 10; in the early-stopping
    replay of bench/finetune_recipes.py 5 of 65 fold runs restored the warm-up epoch)."""
    if cfg.fine_tune_schedule != "cosine" or cfg.fine_tune_epochs <= 1:
        return 0
    return min(math.ceil(cfg.warmup_epochs), cfg.fine_tune_epochs - 1)
