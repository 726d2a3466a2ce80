"""Decoding inside the Transform graph: every format and channel layout becomes RGB."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components import image_ops


def _encode(mode, fmt, size=(20, 12)):
    color = {"L": 128, "RGB": (200, 30, 10), "RGBA": (200, 30, 10, 80),
             "CMYK": (0, 200, 220, 30), "P": 5}[mode]
    img = Image.new(mode, size, color)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"),
                                      ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"),
                                      ("P", "GIF"), ("RGB", "BMP")])
def test_decode_resize_gives_rgb_of_the_right_size(mode, fmt):
    import tensorflow as tf

    data = _encode(mode, fmt)
    out = image_ops.decode_resize(tf.constant([data, data]), 16).numpy()
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 255.0
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32).mean((0, 1))
    # CMYK JPEG conversions differ between libjpeg and PIL by a few levels; others match.
    np.testing.assert_allclose(out[0].mean((0, 1)), expected, atol=12 if mode == "CMYK" else 2)


def test_dense_bytes_accepts_rank2_and_sparse():
    import tensorflow as tf

    dense = tf.constant([[b"a"], [b"b"]])
    assert image_ops.to_dense_bytes(dense).numpy().tolist() == [b"a", b"b"]
    sparse = tf.sparse.from_dense(dense)
    assert image_ops.to_dense_bytes(sparse).numpy().tolist() == [b"a", b"b"]


def test_decode_rgb_replicates_gray_drops_alpha_and_keeps_first_gif_frame():
    gray = image_ops.decode_rgb(_encode("L", "PNG")).numpy()
    assert gray.shape == (12, 20, 3) and (gray == 128).all()
    rgba = image_ops.decode_rgb(_encode("RGBA", "PNG")).numpy()
    assert rgba.shape == (12, 20, 3) and rgba[0, 0].tolist() == [200, 30, 10]
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    gif = image_ops.decode_rgb(buf.getvalue()).numpy()
    assert gif.shape == (4, 4, 3) and gif[0, 0, 0] > 200 and gif[0, 0, 2] < 50


def test_tf_error_text_is_one_line_without_tf_decorations():
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        image_ops.decode_rgb(b"not an image")
    text = image_ops.tf_error_text(info.value)
    assert text.startswith("Unknown image file format") and "\n" not in text
    assert "{{" not in text and "[Op:" not in text
    message = ("{{function_node __wrapped__X_device_/job:localhost}} bad input [Op:X]\n"
               "more detail")
    assert image_ops.tf_error_text(message) == "bad input"
    assert image_ops.tf_error_text("\n  \nsecond line") == "second line"
    assert image_ops.tf_error_text(ValueError()) == "ValueError"
