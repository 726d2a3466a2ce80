"""What went wrong, in one line: the innermost cause of a failed run (TFX wraps component
errors) without TensorFlow's op decorations, named as a full disk or an unwritable output dir
when it is one. `graft run` prints error_line() as its last line, `error: ...` on stderr."""
from __future__ import annotations

import errno
import os
import shutil
import sys

_NO_SPACE = ("No space left on device", "database or disk is full")
_CANNOT_WRITE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)


def innermost(e: BaseException) -> BaseException:
    """The last exception of the __cause__ / __context__ chain."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return e


def root_message(e: BaseException) -> str:
    """The innermost cause's message (TFX wraps component errors)."""
    e = innermost(e)
    return "%s: %s" % (type(e).__name__, e)


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system of path (or of its nearest existing ancestor)."""
    while path and not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def error_line(e: BaseException, output_dir: str) -> str:
    """The one line after `error: ` for a failed run: the innermost message without
    TensorFlow's op noise, named as a full disk or an unwritable output dir when it is one
    (SQLite reports a full disk as a failed COMMIT, so a nearly full disk is mentioned too)."""
    inner = innermost(e)
    text = str(inner).strip()
    if type(inner).__module__ != "builtins" or not text:  # library errors: keep the type
        text = root_message(e)
    if "tensorflow" in sys.modules:
        from components.image_ops import tf_error_text as one_line
    else:  # not TensorFlow's error; importing it would log its start-up before the error line
        one_line = _first_line
    more = sum(1 for line in text.splitlines() if one_line(line)) > 1
    line = one_line(text) + (" (details in the summary above)" if more else "")
    free = free_bytes(output_dir)
    if (isinstance(inner, OSError) and inner.errno == errno.ENOSPC
            or any(s in line for s in _NO_SPACE)):
        return "disk full under %s: %s" % (output_dir, line)
    if isinstance(inner, OSError) and inner.errno in _CANNOT_WRITE:
        return "cannot write the output directory %s: %s" % (output_dir, line)
    if free is not None and free < (1 << 20):
        return "%s (the disk of %s is full: %d KB free)" % (line, output_dir, free // 1024)
    return line
