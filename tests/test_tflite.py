"""TFLite export (components/custom/tflite.py, tflite_export.py) and `graft predict --tflite`.

One small real model for the module: EfficientNet-Lite0 with its offline ImageNet weights at
48 px, the head trained (frozen base) on generated red/green/blue images, saved like the
Trainer saves (Keras SavedModel, no optimizer) with a `serving_default` that runs the
Transform module's own `preprocessing_fn` on raw bytes. Examples are written like ImageCheck
writes them (Split-<name>/*.gz, GZIP TFRecords of tf.Example) at 64 px, so the export path
decodes and resizes.
"""
from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest

SIZE = 48
LABELS = ("red", "green", "blue")


def _image(rng, label: int, size: int) -> np.ndarray:
    """A noisy image whose dominant channel is the label, with a random darker square."""
    img = rng.integers(0, 90, size=(size, size, 3))
    img[..., label] += rng.integers(110, 166)
    x, y, s = rng.integers(0, size // 2, size=3)
    img[y:y + s + 4, x:x + s + 4] //= 2
    return np.clip(img, 0, 255).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _write_split(directory, split: str, items) -> None:
    import tensorflow as tf
    d = directory / ("Split-" + split)
    d.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(d / "data.gz"), options="GZIP") as w:
        for data, label in items:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
                .SerializeToString())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(SavedModel dir, examples dir, TrainingConfig, [48 px uint8 images], their labels)."""
    import tensorflow as tf
    import tf_keras

    from components import image_ops, model as model_lib, signatures, transform
    from components.backbones import registry
    from components.training_config import TrainingConfig

    root = tmp_path_factory.mktemp("tflite")
    cfg = TrainingConfig(label_names=LABELS, image_size=SIZE, fine_tune_epochs=0)
    backbone = registry.get_backbone(cfg.backbone)
    rng = np.random.default_rng(0)
    train = [(_png(_image(rng, i % 3, 64)), i % 3) for i in range(90)]
    evals = [(_png(_image(rng, i % 3, 64)), i % 3) for i in range(45)]
    examples = root / "examples"
    _write_split(examples, "train", train)
    _write_split(examples, "eval", evals)

    tf_keras.utils.set_random_seed(0)
    classifier = model_lib.build(backbone, cfg)
    model = classifier.model
    x = backbone.preprocess(image_ops.decode_resize(tf.constant([b for b, _ in train]), SIZE))
    y = np.array([label for _, label in train])
    model.compile(optimizer=tf_keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=30, verbose=0)
    custom_config = cfg.to_custom_config()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        xf = transform.preprocessing_fn({"image": image_bytes}, custom_config)
        return {"probabilities": model(xf[transform.IMAGE_XF], training=False)}

    model_dir = str(root / "model")
    # Saved as the Trainer saves it: no per-layer traces (tf.saved_model.load cannot call
    # it), the classifier attached as classify_image_xf (what the conversion uses).
    signatures.attach_classifier(model)
    assert not model_lib.save_for_serving(
        model, model_dir, {"serving_default": serve.get_concrete_function()})
    images = [_image(rng, i % 3, SIZE) for i in range(12)]
    return model_dir, examples, cfg, images, [i % 3 for i in range(12)]


@pytest.fixture(scope="module")
def float32_model(trained):
    import tensorflow as tf

    from components.backbones import registry
    from components.custom import tflite
    model_dir, _, cfg, _, _ = trained
    return tflite.convert(tf.saved_model.load(model_dir), registry.get_backbone(cfg.backbone),
                          SIZE, "float32")


def test_float32_predictions_equal_the_savedmodel(trained, float32_model):
    """Same images (lossless PNGs at the model's size, so decode + resize change nothing):
    the TFLite model on uint8 pixels vs serving_default on the bytes."""
    import tensorflow as tf

    from components.custom import tflite
    model_dir, _, _, images, labels = trained
    runner = tflite.Runner(model_content=float32_model)
    assert runner.input["dtype"] == np.uint8 and list(runner.input["shape"]) == [1, SIZE, SIZE, 3]
    got = runner.predict(np.stack(images))
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    want = serve(image_bytes=tf.constant([_png(im) for im in images]))["probabilities"].numpy()
    assert got.shape == want.shape == (12, 3)
    assert np.max(np.abs(got - want)) <= 1e-4
    assert np.mean(np.argmax(want, -1) == labels) >= 0.9  # a model that learned something


def test_compare_streams_the_gating_split(trained, float32_model):
    """compare(): both models on the same examples; a float32 model agrees with the
    SavedModel up to the uint8 rounding of the resized pixels."""
    from components.custom import tflite
    model_dir, examples, cfg, _, _ = trained
    files = [str(examples / "Split-eval" / "data.gz")]
    scores = tflite.compare(model_dir, tflite.Runner(model_content=float32_model),
                            tflite.iter_examples(files, "image", "label"), chunk=16)
    assert scores["count"] == 45
    assert scores["savedmodel_accuracy"] >= 0.9
    assert abs(scores["tflite_accuracy"] - scores["savedmodel_accuracy"]) <= 1 / 45 + 1e-9
    assert 0 < scores["max_abs_diff"] < 0.1  # rounding to uint8 moves probabilities a little


def test_int8_is_full_integer_small_and_accurate(trained, tmp_path, float32_model):
    from components.custom import tflite, tflite_export
    model_dir, examples, cfg, images, labels = trained
    result = tflite_export.export(model_dir, str(examples), ["train", "eval"], cfg, "int8",
                                  str(tmp_path))
    assert result["split"] == "eval" and result["count"] == 45
    assert result["representative_examples"] == min(90, tflite_export.REPRESENTATIVE_COUNT)
    content = (tmp_path / tflite.MODEL_FILE).read_bytes()
    assert result["size_bytes"] == len(content)
    assert len(content) <= len(float32_model) / 3
    runner = tflite.Runner(model_content=content)
    assert runner.input["dtype"] == np.uint8 and runner.output["dtype"] == np.float32
    details = runner.interpreter.get_tensor_details()
    int8 = sum(1 for d in details if d["dtype"] == np.int8)
    floats = [d["name"] for d in details if d["dtype"] == np.float32]
    assert int8 > 100 and len(floats) <= 3, floats  # only the dequantized output side
    assert result["savedmodel_accuracy"] >= 0.9
    assert result["drop"] <= 0.05, result
    probs = runner.predict(np.stack(images))
    assert np.allclose(probs.sum(-1), 1.0, atol=0.02)
    assert np.mean(np.argmax(probs, -1) == labels) >= 0.9
    assert (tmp_path / tflite.LABELS_FILE).read_text() == "red\ngreen\nblue\n"


def test_gating_split_prefers_test():
    from components.custom.tflite_export import gating_split
    assert gating_split(["train", "eval", "test"]) == "test"
    assert gating_split(["train", "eval"]) == "eval"


@pytest.fixture(scope="module")
def float16_export(trained, tmp_path_factory):
    """export() of the float16 model: (result, artifact dir)."""
    from components.custom import tflite_export
    model_dir, examples, cfg, _, _ = trained
    out = tmp_path_factory.mktemp("float16")
    return tflite_export.export(model_dir, str(examples), ["train", "eval"], cfg, "float16",
                                str(out)), out


@pytest.mark.parametrize("case", ["within", "forced_fail", "not_pushed"])
def test_push_rule(trained, float16_export, tmp_path, case):
    """Pushed next to the SavedModel's version only within max_drop; a max_drop no model can
    meet (-1: it would have to beat the SavedModel by 100 points) and a SavedModel that was
    not pushed both leave the serving dir without a TFLite version."""
    from components.custom import tflite_export
    cfg = trained[2]
    serving = tmp_path / "serving"
    max_drop = -1.0 if case == "forced_fail" else 0.01
    savedmodel_push = ({"pushed": 0, "version": 0, "reason": "model not blessed by the Evaluator"}
                       if case == "not_pushed" else
                       {"pushed": 1, "version": 1234, "reason": "pushed as version 1234"})
    exported, exported_dir = float16_export
    out = tmp_path / "artifact"
    shutil.copytree(exported_dir, out)
    assert exported["format"] == "float16" and exported["drop"] <= 0.01, exported
    result = tflite_export.apply_push(exported, str(out), cfg.label_names, max_drop,
                                      savedmodel_push, str(serving), "flowers")
    assert json.loads((out / tflite_export.RESULT_FILE).read_text()) == result
    version_dir = serving / "flowers-tflite" / "1234"
    if case == "within":
        assert result["pushed"] and result["pushed_version"] == 1234
        assert result["pushed_destination"] == str(version_dir)
        assert sorted(os.listdir(version_dir)) == ["labels.txt", "model.tflite"]
        assert (version_dir / "model.tflite").read_bytes() == (out / "model.tflite").read_bytes()
        assert (version_dir / "labels.txt").read_text() == "red\ngreen\nblue\n"
        assert not (serving / "flowers").exists()  # never inside TF Serving's directory
    else:
        assert not result["pushed"] and result["pushed_version"] == 0
        assert not (serving / "flowers-tflite").exists()
        assert ("points below" if case == "forced_fail" else "not blessed") in \
            result["push_reason"]


def test_predict_tflite_output_contract(trained, float32_model, tmp_path, capsys):
    """`graft predict --tflite`: the gRPC client's lines and JSON, names from labels.txt,
    probabilities the interpreter's, a bad file named on stderr with exit status 1."""
    from components.custom import tflite
    from pipeline import cli
    _, _, _, images, labels = trained
    tflite.write_model(str(tmp_path / "m"), float32_model, LABELS)
    model = str(tmp_path / "m" / "model.tflite")
    paths = []
    for i in (0, 1):
        paths.append(str(tmp_path / ("img%d.png" % i)))
        with open(paths[-1], "wb") as f:
            f.write(_png(images[i]))
    want = tflite.Runner(model_path=model).predict(np.stack(images[:2]))

    assert cli.main(["predict", "--tflite", model, *paths, "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 6 and out[0] == paths[0] and out[3] == paths[1]
    for row, block in ((0, out[1:3]), (1, out[4:6])):
        order = np.argsort(-want[row])[:2]
        assert [line.split()[0] for line in block] == [LABELS[i] for i in order]
        assert [float(line.split()[1]) for line in block] == pytest.approx(
            want[row][order], abs=1e-6)
        assert block[0].startswith("  " + LABELS[labels[row]] + " ")

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert cli.main(["predict", "--tflite", model, paths[0], str(bad), "--json"]) == 1
    captured = capsys.readouterr()
    line = json.loads(captured.out.strip())
    assert line["file"] == paths[0]
    assert [p["class"] for p in line["predictions"]] == [LABELS[i] for i in np.argsort(-want[0])]
    assert [p["index"] for p in line["predictions"]] == list(np.argsort(-want[0]))
    assert captured.err.startswith("error: %s: " % bad)


def test_predict_needs_model_or_tflite(capsys):
    from pipeline import cli
    assert cli.main(["predict", "x.jpg"]) == 2
    assert "--model is required" in capsys.readouterr().err


def test_metadata_for_the_task_library(float32_model):
    """With tflite-support importable (extra `tflite-metadata` + the system's libusb-1.0):
    image-classifier metadata with the labels, uint8 pixels in, and the model still runs."""
    try:
        from tensorflow_lite_support.metadata.python import metadata
    except Exception as e:  # noqa: BLE001 - ImportError or a missing native library
        pytest.skip("tflite-support not importable: %s" % e)
    from components.custom import tflite
    content, note = tflite.add_metadata(float32_model, LABELS)
    assert note.startswith("image-classifier metadata"), note
    displayer = metadata.MetadataDisplayer.with_model_buffer(content)
    assert displayer.get_packed_associated_file_list() == ["labels.txt"]
    assert displayer.get_associated_file_buffer("labels.txt").decode().split() == list(LABELS)
    meta = json.loads(displayer.get_metadata_json())
    process = meta["subgraph_metadata"][0]["input_tensor_metadata"][0]["process_units"][0]
    assert process["options"] == {"mean": [0.0], "std": [1.0]}
    image = np.zeros([SIZE, SIZE, 3], np.uint8)
    assert np.allclose(tflite.Runner(model_content=content).predict_one(image),
                       tflite.Runner(model_content=float32_model).predict_one(image))


def test_metadata_reason_without_tflite_support(float32_model, monkeypatch):
    """Without tflite-support the model is kept as it is and the reason is stated."""
    import builtins

    from components.custom import tflite
    real_import = builtins.__import__

    def no_support(name, *args, **kwargs):
        if name.startswith("tensorflow_lite_support"):
            raise ImportError("libusb-1.0.so.0: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_support)
    content, note = tflite.add_metadata(float32_model, LABELS)
    assert content == float32_model
    assert note == ("no metadata: tflite-support not importable (libusb-1.0.so.0: cannot open "
                    "shared object file)")


def test_a_savedmodel_without_a_classifier_is_a_clear_error(tmp_path):
    import tensorflow as tf

    from components.custom import tflite
    tf.saved_model.save(tf.Module(), str(tmp_path / "m"))
    with pytest.raises(ValueError, match="classify_image_xf"):
        tflite.classifier_fn(tf.saved_model.load(str(tmp_path / "m")))
