"""Cheap per-element checks of encoded image bytes, done before the model sees a batch.

Each check reads only the header (PIL `Image.open`, no pixel decoding), a block scan that
counts a GIF's frames without decompressing them, and a marker scan for truncation, so a bad
element is reported as INVALID_ARGUMENT naming its batch index instead of failing deep inside
the graph, and an element's decode cost is known before anything is decoded. Formats are the
ones `tf.io.decode_image` decodes; TensorFlow decodes *every* frame of a GIF (even with
expand_animations=False), so the cost of an image is width x height x frames.

`sniff` tells whether bytes start like an image TensorFlow would decode (the same magic
numbers `tf.io.decode_image` dispatches on), for inputs that are not declared as images,
e.g. the image feature inside a serialized tf.Example.
"""
from __future__ import annotations

import dataclasses
import io

from PIL import Image, UnidentifiedImageError

# PIL format name -> what we call it; MPO is a JPEG with extra pictures (many cameras).
SUPPORTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP"}
_PNG_IEND = b"IEND\xaeB`\x82"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BadImage(ValueError):
    """An element that is not a decodable image of an acceptable size; str() says why."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the header says: format, canvas size, frames, and decoded pixels (w x h x frames)."""
    format: str
    width: int
    height: int
    frames: int

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


def sniff(data: bytes) -> bool:
    """True if `data` starts with the magic number of a format tf.io.decode_image decodes."""
    return (data[:3] == b"\xff\xd8\xff" or data[:8] == _PNG_MAGIC
            or data[:6] in (b"GIF87a", b"GIF89a") or data[:2] == b"BM")


def gif_frames(data: bytes) -> tuple[int, int, int]:
    """(canvas width, canvas height, frames) of a GIF, by walking its blocks (no LZW decoding).

    The canvas is the logical screen of the header, which is what TensorFlow's decoder
    allocates per frame (PIL instead grows its size to the largest frame).

    A file cut inside a frame counts that frame (TensorFlow's decoder then rejects the file);
    raises BadImage for a file without any frame or a frame that lies outside the canvas
    (giflib would allocate the frame's own declared size).
    """
    n = len(data)
    pos = 13
    if n < pos:
        raise BadImage("truncated GIF (no logical screen descriptor)")
    width, height = (int.from_bytes(data[k:k + 2], "little") for k in (6, 8))
    if width == 0 or height == 0:
        raise BadImage(f"GIF canvas has no pixels ({width}x{height})")
    flags = data[10]
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    frames = 0

    def skip_sub_blocks(p: int) -> int:
        while True:
            if p >= n:
                return n
            size = data[p]
            p += 1 + size
            if size == 0:
                return p

    while True:
        if pos >= n:
            break
        block = data[pos]
        if block == 0x3B:                            # trailer
            break
        if block == 0x21:                            # extension: label, sub-blocks
            pos = skip_sub_blocks(pos + 2)
        elif block == 0x2C:                          # image descriptor
            if pos + 10 > n:
                break
            left, top, w, h = (int.from_bytes(data[pos + k:pos + k + 2], "little")
                               for k in (1, 3, 5, 7))
            if left + w > width or top + h > height:
                raise BadImage(f"GIF frame {frames} ({w}x{h} at {left},{top}) lies outside "
                               f"the {width}x{height} canvas")
            local = data[pos + 9]
            pos += 10
            if local & 0x80:
                pos += 3 << ((local & 7) + 1)
            pos = skip_sub_blocks(pos + 1)           # LZW minimum code size, then data
            frames += 1
        else:
            break                                    # giflib stops at an unknown block too
    if frames == 0:
        raise BadImage(f"GIF has no frames ({n} bytes)")
    return width, height, frames


MAX_HEADER_SEGMENTS = 1000


def _prescan(data: bytes) -> None:
    """Bound the header work: PIL walks a JPEG's markers before the first scan and a PNG's
    chunks before the first IDAT one by one in Python, so 8 MB of 4-byte markers cost seconds
    of CPU. Real files have tens of them; more than MAX_HEADER_SEGMENTS is refused."""
    n = len(data)
    if data[:3] == b"\xff\xd8\xff":
        pos, seen = 2, 0
        while pos + 4 <= n and seen <= MAX_HEADER_SEGMENTS:
            if data[pos] != 0xFF:
                return                                  # not a marker: PIL will say so
            marker = data[pos + 1]
            if marker == 0xFF:                          # fill byte
                pos += 1
                continue
            if marker == 0xDA or 0xD0 <= marker <= 0xD9 or marker == 0x01:
                return                                  # start of scan (or standalone)
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            seen += 1
        if seen > MAX_HEADER_SEGMENTS:
            raise BadImage(f"malformed JPEG: more than {MAX_HEADER_SEGMENTS} header segments")
    elif data[:8] == _PNG_MAGIC:
        pos, seen = 8, 0
        while pos + 8 <= n and seen <= MAX_HEADER_SEGMENTS:
            if data[pos + 4:pos + 8] == b"IDAT":
                return
            pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
            seen += 1
        if seen > MAX_HEADER_SEGMENTS:
            raise BadImage(f"malformed PNG: more than {MAX_HEADER_SEGMENTS} chunks before the "
                           f"image data")


def inspect(data: bytes) -> ImageInfo:
    """The header facts of one encoded image; BadImage (message without an index) if unusable."""
    if len(data) == 0:
        raise BadImage("empty image (0 bytes)")
    _prescan(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
    except UnidentifiedImageError:
        raise BadImage(f"not an image ({len(data)} bytes that no image decoder recognises, "
                       f"starting {data[:8]!r}); send raw JPEG, PNG, GIF or BMP file "
                       f"bytes") from None
    except Image.DecompressionBombError:
        raise BadImage("image is over the pixel limit") from None
    except Exception:  # noqa: BLE001 - any header parse failure is the client's input
        raise BadImage(f"unreadable image header ({len(data)} bytes)") from None
    if fmt not in SUPPORTED_FORMATS:
        raise BadImage(f"image format {fmt} is not supported (JPEG, PNG, GIF, BMP)")
    if width <= 0 or height <= 0:
        raise BadImage(f"image has no pixels ({width}x{height})")
    kind = SUPPORTED_FORMATS[fmt]
    frames = 1
    if kind == "GIF":
        width, height, frames = gif_frames(data)
    return ImageInfo(kind, width, height, frames)


def _size_text(info: ImageInfo) -> str:
    frames = f" x {info.frames} frames" if info.frames > 1 else ""
    return f"{info.width}x{info.height}{frames} = {info.pixels} pixels"


def check_image(data: bytes, index: int, max_pixels: int, where: str | None = None
                ) -> ImageInfo:
    """Raise BadImage('batch element I: ...') unless `data` looks like a complete image of at
    most `max_pixels` decoded pixels (width x height x frames). Returns its ImageInfo."""
    where = where or f"batch element {index}"
    try:
        info = inspect(data)
    except BadImage as e:
        raise BadImage(f"{where}: {e}") from None
    if info.pixels > max_pixels:
        raise BadImage(f"{where}: image is {_size_text(info)}, over the server limit of "
                       f"{max_pixels} pixels (--max-image-pixels)")
    if info.format == "JPEG":
        # 0xFFD9 (end of image) cannot occur inside entropy-coded data (0xFF is stuffed), so a
        # complete JPEG has one after its last start-of-scan; an EXIF thumbnail's own EOI comes
        # before the main image's scans and does not count.
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.rfind(b"\xff\xd9") < last_scan:
            raise BadImage(f"{where}: truncated JPEG ({len(data)} bytes, no end-of-image marker "
                           f"after the last scan)")
    elif info.format == "PNG":
        if data.rfind(_PNG_IEND) < 0:
            raise BadImage(f"{where}: truncated PNG ({len(data)} bytes, no IEND chunk)")
    return info
