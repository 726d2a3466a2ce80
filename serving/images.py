"""Cheap per-element checks of encoded image bytes, done before the model sees a batch.

Each check reads only the header (PIL `Image.open`, no pixel decoding) plus a marker scan for
truncation, so a bad element is reported as INVALID_ARGUMENT naming its batch index instead
of failing deep inside the graph. Formats are the ones `tf.io.decode_image` decodes.
"""
from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

# PIL format name -> what we call it; MPO is a JPEG with extra pictures (many cameras).
SUPPORTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP"}
_PNG_IEND = b"IEND\xaeB`\x82"


class BadImage(ValueError):
    """An element that is not a decodable image of an acceptable size; str() says why."""


def check_image(data: bytes, index: int, max_pixels: int) -> tuple[int, int]:
    """Raise BadImage('batch element I: ...') unless `data` looks like a complete image.

    Returns (width, height) read from the header.
    """
    where = f"batch element {index}"
    if len(data) == 0:
        raise BadImage(f"{where}: empty image (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
    except UnidentifiedImageError:
        raise BadImage(f"{where}: not an image ({len(data)} bytes that no image decoder "
                       f"recognises, starting {data[:8]!r}); send raw JPEG, PNG, GIF or BMP "
                       f"file bytes") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"{where}: image is over the pixel limit ({e})") from None
    except Exception as e:  # noqa: BLE001 - any header parse failure is the client's input
        raise BadImage(f"{where}: unreadable image header ({type(e).__name__}: {e})") from None
    if fmt not in SUPPORTED_FORMATS:
        raise BadImage(f"{where}: image format {fmt} is not supported (JPEG, PNG, GIF, BMP)")
    if width <= 0 or height <= 0:
        raise BadImage(f"{where}: image has no pixels ({width}x{height})")
    pixels = width * height
    if pixels > max_pixels:
        raise BadImage(f"{where}: image is {width}x{height} = {pixels} pixels, over the server "
                       f"limit of {max_pixels} pixels (--max-image-pixels)")
    kind = SUPPORTED_FORMATS[fmt]
    if kind == "JPEG":
        # 0xFFD9 (end of image) cannot occur inside entropy-coded data (0xFF is stuffed), so a
        # complete JPEG has one after its last start-of-scan; an EXIF thumbnail's own EOI comes
        # before the main image's scans and does not count.
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.rfind(b"\xff\xd9") < last_scan:
            raise BadImage(f"{where}: truncated JPEG ({len(data)} bytes, no end-of-image marker "
                           f"after the last scan)")
    elif kind == "PNG":
        if data.rfind(_PNG_IEND) < 0:
            raise BadImage(f"{where}: truncated PNG ({len(data)} bytes, no IEND chunk)")
    return width, height
