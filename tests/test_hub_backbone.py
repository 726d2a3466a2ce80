"""`--backbone hub:HANDLE`: handle resolution like tensorflow_hub's (URL mapping, cache, atomic
extraction; a fake fetch, never the network), and EfficientNet-Lite0 exported in TF Hub's
format (real offline weights) trained through hub:<path> against native Lite0: same features,
same phase-1 predictions, phase 2 training the module as one block, and a saved model that
loads without the module's directory."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from components import image_ops, model as model_lib, trainer
from components.backbones import get_backbone, hub
from components.training_config import TrainingConfig

from pipeline_runs import CLASSES, IMAGE_SIZE, PER_CLASS, PNG_SIZE, TWO_PHASES, graft

TFHUB = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"
KAGGLE = ("https://www.kaggle.com/models/google/mobilenet-v2/TensorFlow2/"
          "100-224-feature-vector/2")


# --- handles and the download cache -------------------------------------------------------
def test_download_url_mapping_is_tensorflow_hubs():
    assert hub.download_url(TFHUB) == TFHUB + "?tf-hub-format=compressed"
    assert hub.download_url(KAGGLE) == KAGGLE + "?tf-hub-format=compressed"
    assert hub.download_url("https://example.com/m?x=1") == \
        "https://example.com/m?x=1&tf-hub-format=compressed"
    assert hub.download_url("https://hub.tensorflow.google.cn/google/a/b/1") == \
        "https://gcs.tensorflow.google.cn/tfhub-modules/google/a/b/1.tar.gz"
    assert hub.is_remote(TFHUB) and hub.is_remote("gs://b/m.tar.gz")
    assert not hub.is_remote("gs://b/saved_model_dir") and not hub.is_remote("/tmp/m")


def test_cache_dir_is_tfhub_cache_dir_or_the_temp_default(monkeypatch, tmp_path):
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    import tempfile
    assert hub.cache_dir() == os.path.join(tempfile.gettempdir(), "tfhub_modules")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    assert hub.module_dir(TFHUB) == str(
        tmp_path / hashlib.sha1(TFHUB.encode()).hexdigest())


def _tarball(members: dict, extra=None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            tar.addfile(extra)
    return buf.getvalue()


class FakeFetch:
    def __init__(self, payload: bytes):
        self.payload, self.urls = payload, []

    def __call__(self, url):
        self.urls.append(url)
        return io.BytesIO(self.payload)


def test_download_extracts_once_then_reuses_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    fetch = FakeFetch(_tarball({"saved_model.pb": b"pb", "variables/variables.index": b"ix"}))
    path = hub.download(KAGGLE, fetch)
    assert fetch.urls == [KAGGLE + "?tf-hub-format=compressed"]
    assert path == hub.module_dir(KAGGLE)
    assert open(os.path.join(path, "variables", "variables.index"), "rb").read() == b"ix"
    assert "Module: " + KAGGLE in open(path + ".descriptor.txt").read()
    assert hub.download(KAGGLE, fetch) == path and len(fetch.urls) == 1  # cached: no fetch
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("bad", ["escape", "symlink", "truncated"])
def test_a_bad_tarball_leaves_no_module_behind(monkeypatch, tmp_path, bad):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    if bad == "escape":
        payload = _tarball({"saved_model.pb": b"pb", "../evil": b"x"})
    elif bad == "symlink":
        link = tarfile.TarInfo("variables")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        payload = _tarball({"saved_model.pb": b"pb"}, extra=link)
    else:
        payload = _tarball({"saved_model.pb": np.random.default_rng(0).bytes(100000)})[:5000]
    with pytest.raises(ValueError) as info:
        hub.download(TFHUB, FakeFetch(payload))
    assert TFHUB in str(info.value) or "tar member" in str(info.value)
    assert not (tmp_path / "evil").exists() and not os.path.exists(hub.module_dir(TFHUB))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    good = FakeFetch(_tarball({"saved_model.pb": b"pb"}))  # the next attempt starts clean
    assert os.listdir(hub.download(TFHUB, good)) == ["saved_model.pb"]


def test_resolve_errors_name_the_handle(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such SavedModel directory"):
        hub.resolve(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="neither saved_model.pb"):
        hub.resolve(str(tmp_path))
    (tmp_path / "tfhub_module.pb").write_bytes(b"")
    with pytest.raises(ValueError, match="TF1 Hub module"):
        hub.resolve(str(tmp_path))


def test_hub_names_value_range_and_preprocessing():
    with pytest.raises(ValueError, match="needs a handle"):
        get_backbone("hub:")
    with pytest.raises(ValueError, match="hub:HANDLE"):
        get_backbone("mobilenet_v9")
    for text in ("1", "a,b", "1,0"):
        with pytest.raises(ValueError, match="hub_value_range"):
            get_backbone("hub:/m", hub_value_range=text)
    bb = TrainingConfig(backbone="hub:/m", hub_value_range="-1,1").get_backbone()
    assert bb.handle == "/m" and bb.value_range == (-1.0, 1.0)
    assert TrainingConfig(backbone="hub:/m").input_size() == hub.DEFAULT_SIZE
    assert TrainingConfig(backbone="hub:/m", image_size=96).input_size() == 96
    out = TrainingConfig(backbone="hub:/m").get_backbone().preprocess([0.0, 127.5, 255.0])
    np.testing.assert_allclose(out.numpy(), [0.0, 0.5, 1.0], atol=1e-7)
    out = bb.preprocess([0.0, 255.0])
    np.testing.assert_allclose(out.numpy(), [-1.0, 1.0], atol=1e-7)


def test_any_fine_tune_fraction_above_0_unfreezes_the_single_hub_layer():
    # base.layers of a hub: base: [InputLayer, HubLayer]
    assert TrainingConfig(fine_tune_fraction=0.2).fine_tune_count(2) == 1
    assert TrainingConfig(fine_tune_fraction=1.0).fine_tune_count(2) == 2
    assert TrainingConfig(fine_tune_fraction=0.0).fine_tune_count(2) == 0


def test_fingerprint_follows_a_local_modules_content(tmp_path):
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(b"graph")
    (tmp_path / "variables" / "variables.index").write_bytes(b"checksums 1")
    name = "hub:%s" % tmp_path
    first = hub.fingerprint(name)
    assert len(first) == 16 and hub.fingerprint(name) == first
    (tmp_path / "variables" / "variables.index").write_bytes(b"checksums 2")
    assert hub.fingerprint(name) != first
    assert hub.fingerprint("hub:" + TFHUB) == "" == hub.fingerprint("efficientnet_lite0")
    assert hub.fingerprint("hub:%s" % (tmp_path / "missing")) == ""


# --- Lite0 exported in Hub format vs native Lite0 ---------------------------------------
@pytest.fixture(scope="module")
def lite0_module(tmp_path_factory):
    """Lite0's feature extractor (real offline ImageNet weights) as a TF Hub-format TF2
    SavedModel at the tests' image size."""
    path = str(tmp_path_factory.mktemp("hub") / "lite0")
    return hub.export("efficientnet_lite0", path, IMAGE_SIZE)


@pytest.fixture(scope="module")
def digits():
    """PNG bytes and labels of the end-to-end tests' digits (CLASSES x PER_CLASS)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:PER_CLASS] for c in range(CLASSES)])
    pixels = np.round(d.images[idx] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    pngs = [tf.io.encode_png(tf.image.resize(p, [32, 32], antialias=True).numpy()
                             .round().astype(np.uint8)).numpy() for p in pixels]
    return np.array(pngs, dtype=object), d.target[idx].astype(np.int64)


def _transformed(cfg, pngs):
    """The Transform graph's image ops: decode, resize, the backbone's preprocessing."""
    images = image_ops.decode_resize(tf.constant(list(pngs)), cfg.input_size())
    return cfg.get_backbone().preprocess(images).numpy()


def _config(backbone, **kw):
    return TrainingConfig(label_names=tuple("abc"[:CLASSES]), backbone=backbone,
                          image_size=IMAGE_SIZE, batch_size=16, **kw)


def _train(cfg, pngs, labels, callbacks=(), classifier=None):
    tf_keras.utils.set_random_seed(cfg.seed)
    x = _transformed(cfg, pngs)
    train_idx, eval_idx = np.arange(len(labels)) % 4 != 0, np.arange(len(labels)) % 4 == 0

    def ds(mask, shuffle=False):
        d = tf.data.Dataset.from_tensor_slices((x[mask], labels[mask]))
        return (d.shuffle(64, seed=cfg.seed) if shuffle else d).batch(cfg.batch_size)

    classifier = classifier or model_lib.build(cfg.get_backbone(), cfg)
    # The same head start for every backbone: building Lite0's layers consumes random state
    # that loading a SavedModel does not.
    rng = np.random.default_rng(cfg.seed)
    classifier.head.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32)
                                 for w in classifier.head.get_weights()])
    tf_keras.utils.set_random_seed(cfg.seed)
    phase1, phase2 = trainer.train(classifier, cfg, tf.distribute.get_strategy(),
                                   cfg.batch_size, ds(train_idx, True), ds(eval_idx),
                                   lambda: ds(train_idx), lambda: int(train_idx.sum()),
                                   list(callbacks))
    return classifier, x[eval_idx], labels[eval_idx], phase1, phase2


def test_hub_features_equal_native_lite0(lite0_module, digits):
    pngs, _ = digits
    native, viahub = _config("efficientnet_lite0"), _config("hub:" + lite0_module)
    extract = [model_lib.feature_extractor(model_lib.build(cfg.get_backbone(), cfg))
               for cfg in (native, viahub)]
    a = extract[0].predict(_transformed(native, pngs), batch_size=16, verbose=0)
    b = extract[1].predict(_transformed(viahub, pngs), batch_size=16, verbose=0)
    assert a.shape == b.shape == (len(pngs), 1280)
    assert np.abs(a - b).max() <= 1e-4 and np.abs(a).max() > 0.1


def test_phase1_through_hub_predicts_like_native(lite0_module, digits):
    pngs, labels = digits
    runs = [_train(_config(b, epochs=8, fine_tune_epochs=0), pngs, labels)
            for b in ("efficientnet_lite0", "hub:" + lite0_module)]
    probs = [clf.model.predict(x, batch_size=16, verbose=0) for clf, x, *_ in runs]
    y_eval = runs[0][2]
    assert np.abs(probs[0] - probs[1]).max() <= 2e-3
    acc = [float((p.argmax(1) == y_eval).mean()) for p in probs]
    assert acc[0] == acc[1] > 1.0 / CLASSES
    assert trainer.best(runs[0][3])["val_accuracy"] == pytest.approx(
        trainer.best(runs[1][3])["val_accuracy"])


class Snapshot(tf_keras.callbacks.Callback):
    """A layer's weights at the end of every fit() (the last one is phase 2's)."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.ends = layer, []
        self.before = [w.numpy().copy() for w in layer.weights]

    def on_train_end(self, logs=None):
        self.ends.append([w.numpy().copy() for w in self.layer.weights])


def test_phase2_trains_the_whole_module_with_batchnorm_in_inference_mode(
        lite0_module, digits, tmp_path):
    pngs, labels = digits
    module = str(tmp_path / "module")
    shutil.copytree(lite0_module, module)
    cfg = _config("hub:" + module, epochs=4, fine_tune_epochs=1, fine_tune_fraction=0.2,
                  augment=False)
    tf_keras.utils.set_random_seed(cfg.seed)
    classifier = model_lib.build(cfg.get_backbone(), cfg)
    snap = Snapshot(classifier.base.get_layer("hub_module"))
    classifier, x_eval, _, _, phase2 = _train(cfg, pngs, labels, [snap], classifier)
    layer = snap.layer
    assert isinstance(layer, hub.HubLayer) and layer.has_training_argument
    assert phase2["trainable_base_layers"] == 1
    assert phase2["phase"] == "phase 2 (whole hub module, BatchNorm in inference mode)"
    trainable = {id(w) for w in layer.trainable_weights}
    assert len(trainable) == 147  # every conv kernel and BatchNorm scale/offset of Lite0
    moved = fixed = 0
    for w, before, after in zip(layer.weights, snap.before, snap.ends[-1]):
        if id(w) in trainable:
            moved += not np.array_equal(before, after)
        else:  # BatchNorm moving statistics: inference mode, never updated
            assert np.array_equal(before, after), w.name
            fixed += 1
    assert moved > 100 and fixed == 98

    # The saved model carries the module's variables: it loads and predicts with the
    # module's directory gone.
    expected = classifier.model.predict(x_eval, batch_size=16, verbose=0)
    saved = str(tmp_path / "saved")
    assert model_lib.needs_layer_traces(classifier.model)  # HubLayer: not built from config
    classifier.model.save(saved, save_format="tf", include_optimizer=False)
    shutil.rmtree(module)
    loaded = tf.saved_model.load(saved)
    got = loaded(tf.constant(x_eval), training=False).numpy()
    assert np.abs(got - expected).max() <= 1e-5


def test_a_size_the_module_does_not_take_is_a_clear_error(lite0_module):
    with pytest.raises(ValueError, match="--image-size"):
        get_backbone("hub:" + lite0_module).build_base(image_size=IMAGE_SIZE + 16)
    with pytest.raises(ValueError, match="own weights"):
        model_lib.build(get_backbone("hub:" + lite0_module),
                        _config("hub:" + lite0_module, weights="none"))


@pytest.mark.e2e
def test_graft_run_with_a_hub_backbone_pushes_a_model_that_needs_no_module(
        lite0_module, tmp_path):
    import json

    from pipeline.data import demo_dataset

    module = tmp_path / "module"
    shutil.copytree(lite0_module, module)
    data = demo_dataset.build(tmp_path / "data", per_class=PER_CLASS, image_size=PNG_SIZE,
                              classes=CLASSES, log=lambda *_: None)
    out = tmp_path / "out"
    proc = graft("run", "--data", data, "--output", out, "--backbone", "hub:%s" % module,
                 *TWO_PHASES, "--min-accuracy", 0)
    assert "phase 2 (whole hub module, BatchNorm in inference mode)" in proc.stdout
    summary = next(out.glob("pipeline_root/Trainer/model_run/*/training_summary.json"))
    facts = json.loads(summary.read_text())
    assert facts["backbone"] == "hub:%s" % module and facts["image_size"] == IMAGE_SIZE
    assert facts["layer_traces"] is True  # the HubLayer is not rebuilt from a config
    # The module is one layer, fine-tuned whole: no frozen bottom, so phase 2 trained on the
    # images the feature cache kept (decoded and through the Transform graph, float16).
    history = json.loads(summary.with_name("history.json").read_text())
    assert history["phase2"]["input"] == "cached images"
    cache = facts["feature_cache"]
    images = cache["train_examples"] + cache["eval_examples"]
    assert cache["images"] == {
        "dtype": "float16", "shape": [IMAGE_SIZE, IMAGE_SIZE, 3], "kept": True,
        "megabytes": round(images * IMAGE_SIZE * IMAGE_SIZE * 3 * 2 / 2**20, 1)}
    pushed = next(p for p in (out / "serving" / "digits").iterdir() if p.name.isdigit())
    shutil.rmtree(module)
    served = tf.saved_model.load(str(pushed))
    pngs = sorted((tmp_path / "data" / "images").rglob("*.png"))
    result = served.signatures["serving_default"](
        image_bytes=tf.constant([p.read_bytes() for p in pngs]))
    probs = result["probabilities"].numpy()
    assert probs.shape == (len(pngs), CLASSES) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    # The served model (its Transform graph and the module's saved variables) recognises the
    # digits it was trained on, without the module's directory.
    names = np.array([p.parent.name for p in pngs])
    predicted = np.array([n.decode() for n in result["class_name"].numpy()])
    assert (predicted == names).mean() > 0.4
