"""TFLite export of a trained graft model: convert, run, evaluate, push.

The TFLite model takes uint8 RGB images of the model's input size, [B, S, S, 3] (what camera
pipelines produce; B is 1 as converted, the interpreter can resize it), and returns
`probabilities` float32 [B, n]. The backbone's own preprocessing (`Backbone.preprocess`, the
function the Transform `preprocessing_fn` calls) is inside it, so an app only decodes and
resizes. Images are brought to uint8 by the Transform graph's own decode and resize
(`components.image_ops.decode_resize`: bilinear, antialiased) rounded to integers: the one
step that differs from the SavedModel, which feeds the float resize output straight on.

Formats: `float32` (plain conversion), `float16` (float16 weights, float compute),
`int8` (full-integer quantization: every op int8, calibrated on a representative dataset of
training images decoded and resized the same way; the input stays uint8 pixels, cast inside
the model, and the output is dequantized to float32 probabilities so the output contract is
the same for every format).

Pushed layout (never inside the TF Serving version directory, which TF Serving owns):
`SERVING_DIR/NAME-tflite/VERSION/{model.tflite,labels.txt}`, VERSION = the SavedModel's.
"""
from __future__ import annotations

import os
import random
import uuid

import numpy as np
import tensorflow as tf

from components import image_ops

MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
OUTPUT_NAME = "probabilities"


def to_uint8(images) -> tf.Tensor:
    """float 0..255 images (what decode_resize returns) -> uint8, rounded to nearest."""
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)


def decode_uint8(image_bytes: list, size: int, batch: int = 32) -> np.ndarray:
    """Encoded images -> uint8 [N, size, size, 3] through the Transform graph's decode+resize.
    Raises ValueError naming the index of an image that does not decode."""
    out = []
    for start in range(0, len(image_bytes), batch):
        chunk = image_bytes[start:start + batch]
        try:
            out.append(to_uint8(image_ops.decode_resize(tf.constant(chunk), size)).numpy())
        except tf.errors.InvalidArgumentError:
            for i, data in enumerate(chunk):  # find the bad one for the message
                try:
                    image_ops.decode_rgb(data)
                except tf.errors.InvalidArgumentError as e:
                    raise ValueError("image %d: %s" % (start + i, image_ops.tf_error_text(e))) \
                        from None
            raise
    return np.concatenate(out) if out else np.zeros([0, size, size, 3], np.uint8)


def classifier_fn(model):
    """image_xf -> probabilities of `model`: the exported `classify_image_xf`
    (signatures.attach_classifier) when the model carries it, else the model itself called
    in inference mode (a Keras model, or a SavedModel saved with Keras' layer traces)."""
    fn = getattr(model, "classify_image_xf", None)
    if fn is not None:
        return fn
    if not callable(model):
        raise ValueError("the SavedModel has neither classify_image_xf nor a callable "
                         "Keras model; export it with the Trainer (signatures."
                         "attach_classifier)")
    return lambda x: model(x, training=False)


def uint8_function(model, backbone, size: int):
    """tf.function: uint8 [None, S, S, 3] -> {'probabilities'}: cast, the backbone's
    preprocessing, the classifier (classifier_fn(model)) in inference mode."""
    classify = classifier_fn(model)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")])
    def serve(image):
        x = backbone.preprocess(tf.cast(image, tf.float32))
        return {OUTPUT_NAME: tf.cast(classify(x), tf.float32)}
    return serve


def convert(model, backbone, size: int, fmt: str, representative=None) -> bytes:
    """The TFLite flatbuffer of `model` in format fmt ('float32' | 'float16' | 'int8').
    representative: uint8 images [N, S, S, 3] for int8 calibration (required for int8)."""
    if fmt not in ("float32", "float16", "int8"):
        raise ValueError("unknown TFLite format %r (float32, float16 or int8)" % fmt)
    fn = uint8_function(model, backbone, size)
    # Batch 1 as converted: what a camera app runs, and fixed shapes for the int8 kernels.
    concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.uint8, name="image"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    if fmt == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("int8 needs representative images")
        images = np.asarray(representative, np.uint8)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images[i:i + 1]]
                                                    for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    return converter.convert()


class Runner:
    """A TFLite interpreter over uint8 images; predict() returns float32 probabilities."""

    def __init__(self, model_content: bytes | None = None, model_path: str | None = None,
                 num_threads: int | None = None):
        self.interpreter = tf.lite.Interpreter(model_content=model_content,
                                               model_path=model_path, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.size = int(self.input["shape"][1])

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        """uint8 [S, S, 3] -> probabilities [n]."""
        self.interpreter.set_tensor(self.input["index"],
                                    np.asarray(image, self.input["dtype"])[np.newaxis])
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero = self.output["quantization"]
        if self.output["dtype"] != np.float32 and scale:
            out = (out.astype(np.float32) - zero) * scale
        return np.asarray(out, np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> probabilities [N, n]."""
        return np.stack([self.predict_one(im) for im in images]) if len(images) else \
            np.zeros([0, self.output["shape"][-1]], np.float32)


def iter_examples(files: list, image_key: str, label_key: str, compression: str = "GZIP"):
    """(image bytes, label) of every tf.Example in TFRecord files, in file order. A record
    without the image or the label fails naming its file and index."""
    for path in files:
        for index, record in enumerate(tf.data.TFRecordDataset(path, compression_type=compression)):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            if not feature[image_key].bytes_list.value or not feature[label_key].int64_list.value:
                raise ValueError("%s record %d: no %r bytes or no %r label"
                                 % (path, index, image_key, label_key))
            yield (feature[image_key].bytes_list.value[0],
                   int(feature[label_key].int64_list.value[0]))


def sample_examples(examples, limit: int, seed: int = 0) -> list:
    """A uniform, deterministic sample of at most `limit` items (seeded reservoir sampling)."""
    rng = random.Random(seed)
    kept: list = []
    for seen, item in enumerate(examples, 1):
        if len(kept) < limit:
            kept.append(item)
        else:
            j = rng.randrange(seen)
            if j < limit:
                kept[j] = item
    return kept


def compare(model, runner: "Runner", examples, chunk: int = 32) -> dict:
    """The TFLite model and the SavedModel's `serving_default` (raw bytes in, as TF Serving
    runs it) on the same (image bytes, label) examples, streamed in chunks. model: the
    SavedModel's directory, or the SavedModel loaded already (loading costs seconds). Returns
    {'count', 'tflite_accuracy', 'savedmodel_accuracy', 'max_abs_diff'} (max_abs_diff: the
    largest probability difference between the two)."""
    if isinstance(model, str):
        model = tf.saved_model.load(model)
    serve = model.signatures["serving_default"]
    count = tfl_right = sm_right = 0
    max_diff = 0.0
    batch: list = []

    def flush():
        nonlocal count, tfl_right, sm_right, max_diff
        data, labels = [b for b, _ in batch], np.asarray([y for _, y in batch])
        tfl = runner.predict(decode_uint8(data, runner.size))
        sm = serve(image_bytes=tf.constant(data))["probabilities"].numpy()
        count += len(batch)
        tfl_right += int(np.sum(np.argmax(tfl, -1) == labels))
        sm_right += int(np.sum(np.argmax(sm, -1) == labels))
        max_diff = max(max_diff, float(np.max(np.abs(tfl - sm))))
        batch.clear()

    for item in examples:
        batch.append(item)
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    return {"count": count, "tflite_accuracy": tfl_right / count if count else 0.0,
            "savedmodel_accuracy": sm_right / count if count else 0.0,
            "max_abs_diff": max_diff}


def add_metadata(model_content: bytes, label_names) -> tuple[bytes, str]:
    """The model with TFLite image-classifier metadata (labels; normalisation mean 0, std 1:
    the input is plain uint8 pixels, the preprocessing is inside), so Android's Task Library
    `ImageClassifier` loads it as is; (the model unchanged, why) when tflite-support cannot
    be imported. tflite-support 0.4.4 installs on our pins (extra `tflite-metadata`), but its
    native module needs the system library libusb-1.0, and its top-level package clashes with
    TensorFlow's pybind types, so only the metadata writer module is imported."""
    try:
        from tensorflow_lite_support.metadata.python.metadata_writers import image_classifier
    except Exception as e:  # noqa: BLE001 - ImportError, or a native library missing
        return model_content, "no metadata: tflite-support not importable (%s)" % (
            str(e).splitlines()[0] if str(e) else type(e).__name__)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        labels = os.path.join(tmp, LABELS_FILE)
        with open(labels, "w") as f:
            f.write("".join("%s\n" % n for n in label_names))
        writer = image_classifier.MetadataWriter.create_for_inference(
            model_content, input_norm_mean=[0.0], input_norm_std=[1.0],
            label_file_paths=[labels])
        return writer.populate(), "image-classifier metadata (labels, uint8 pixels in)"


def write_model(directory: str, model_content: bytes, label_names) -> None:
    """model.tflite + labels.txt (one class name per line, index = class id) in directory."""
    tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(os.path.join(directory, MODEL_FILE), "wb") as f:
        f.write(model_content)
    with tf.io.gfile.GFile(os.path.join(directory, LABELS_FILE), "w") as f:
        f.write("".join("%s\n" % n for n in label_names))


def push(model_content: bytes, label_names, base_dir: str, version: int) -> str:
    """Writes base_dir/VERSION/{model.tflite,labels.txt} under a temporary name and renames
    it into place (an existing VERSION is replaced: the same SavedModel version). Returns
    the version directory."""
    final = os.path.join(base_dir, str(int(version)))
    tmp = os.path.join(base_dir, ".tmp-%d-%s" % (os.getpid(), uuid.uuid4().hex[:12]))
    try:
        write_model(tmp, model_content, label_names)
        if tf.io.gfile.exists(final):
            tf.io.gfile.rmtree(final)
        tf.io.gfile.rename(tmp, final, overwrite=False)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    return final


def push_decision(tflite_accuracy: float, savedmodel_accuracy: float, max_drop: float,
                  savedmodel_pushed: bool, savedmodel_reason: str = "") -> tuple[bool, str]:
    """(push?, why): only next to a SavedModel pushed in this run, and only when the TFLite
    model's accuracy is at most max_drop (0.01 = 1 point) below the SavedModel's on the same
    images."""
    drop = savedmodel_accuracy - tflite_accuracy
    if not savedmodel_pushed:
        return False, "SavedModel not pushed (%s)" % (savedmodel_reason or "no push")
    if drop > max_drop + 1e-9:
        return False, ("accuracy %.4f is %.2f points below the SavedModel's %.4f (allowed: %.2f)"
                       % (tflite_accuracy, 100 * drop, savedmodel_accuracy, 100 * max_drop))
    return True, ("accuracy %.4f within %.2f points of the SavedModel's %.4f"
                  % (tflite_accuracy, 100 * max_drop, savedmodel_accuracy))


def directory_bytes(path: str) -> int:
    return sum(tf.io.gfile.stat(os.path.join(root, n)).length
               for root, _, names in tf.io.gfile.walk(path) for n in names)
