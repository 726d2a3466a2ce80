"""Convert class folders of images into sharded image TFRecords (`graft make-tfrecords`).

Input: IMAGES_DIR/<class>/<files> (the layout of tf_flowers' flower_photos). Files may sit in
subfolders of a class folder. Hidden files and folders (".DS_Store", "__MACOSX", ...) are
ignored silently; loose files at the top of IMAGES_DIR (e.g. flower_photos' LICENSE.txt) are
ignored with a note.

Output, read by ImportExampleGen with input patterns `span-{SPAN}/train/*`,
`span-{SPAN}/eval/*` and `span-{SPAN}/test/*`:

    OUT_DIR/labels.txt                                 one class name per line, line i = label i
    OUT_DIR/span-N/train/data-00000-of-0000K.tfrecord  (K shards)
    OUT_DIR/span-N/eval/data-00000-of-0000K.tfrecord   early stopping, phase choice (Trainer)
    OUT_DIR/span-N/test/data-00000-of-0000K.tfrecord   the blessing gate (Evaluator); not
                                                       written with test_fraction=0

Each record is a tf.Example with `image` (bytes: the original file bytes, unchanged),
`label` (int64: index into the sorted class folder names), `label_text` (bytes: the class
folder name) and `filename` (bytes: path relative to IMAGES_DIR, '/'-separated).

Decisions:

- Validation: every file is decoded twice, by PIL (`Image.open(...).load()`: catches
  truncated/corrupt files) and by TensorFlow (`components.image_ops.decode_rgb`, the decode
  the model does: what passes here decodes later; e.g. 1-bit BMPs open in PIL but not in TF).
  Accepted extensions: .jpg .jpeg .png .gif .bmp (any case); other extensions, empty, unreadable
  or undecodable files are skipped, logged by name with a reason and counted in
  `ConversionSummary.bad_files`. A class folder left without a valid image is reported and
  dropped from the label vocabulary. With strict=True the first such problem is an error.
- Split: deterministic, no RNG. The first 8 bytes of sha256("<class>/<path within class>")
  read as a fraction f of 2**64 decide: f < eval_fraction -> eval, f < eval_fraction +
  test_fraction -> test, else train. A file's split depends on its name only (not on the
  other files, the run or the span), so a photo that is in test in one span is in test in
  every span, and test_fraction=0 writes exactly the two splits of earlier versions. One
  exception keeps the rule simple but useful: a class's files sorted by f form three blocks
  (eval, test, train); when a class has enough images (2 for train + eval, 3 for all three)
  and a split got none, the block borders move by one image, taken from the largest block,
  so each of those splits has one (e.g. no eval image: the lowest-hash image goes to eval).
  A class with a single image lands wherever its hash says. Records inside a split are
  ordered by hash (so classes interleave) and dealt round-robin into the shards: output is
  byte-for-byte reproducible.
- Default fractions (convert() and `graft make-tfrecords`): eval 0.15, test 0.15, train
  0.70 (see DEFAULT_TEST_FRACTION).
- Names and links: a file or folder whose name is not valid UTF-8 (it cannot be stored in a
  tf.Example's `filename`/`label_text`) is skipped with a reason, as is any file whose real
  path (symbolic links resolved) lies outside IMAGES_DIR and any symbolic link to a folder
  inside a class folder (not followed). Symbolic links inside IMAGES_DIR are followed.
- Duplicates: files with identical bytes (sha256) are kept but reported, per group, with
  their classes and splits: the same photo under two labels, or in train and in eval (which
  inflates the eval accuracy that gates a push), is listed in the summary and in
  span-N/conversion.json (read by the run report).
- Labels are shared by all spans of one OUT_DIR: if OUT_DIR/labels.txt exists and lists other
  classes, conversion fails (use a new OUT_DIR for a new vocabulary).
- Atomic output: the span is written to OUT_DIR/.tmp-span-N-<pid> and renamed to span-N at the
  end; labels.txt is written through a temporary file and os.replace. A failure removes the
  temporary directory, so a `span-N` directory is always complete. The temporary name starts
  with a dot on purpose: TFX's span resolution globs `span-*` and captures the span with a
  greedy `.*`, so a leftover `span-1.tmp-123` (after a SIGKILL) makes ImportExampleGen fail
  ("Cannot find span number from .../span-1.tmp-123/..."); `.tmp-span-1-123` is not matched
  (checked with tfx 1.16). An existing span-N is never overwritten. The writer holds an
  flock on .tmp-span-N-<pid>/.writer.lock while it writes; a SIGKILLed writer leaves the
  directory behind, and the next conversion into OUT_DIR removes every such temporary whose
  lock is free (or, without a lock file, whose pid is gone). `graft make-tfrecords` turns
  SIGTERM into a normal exit, so its temporary is removed at once.
- Uncompressed TFRecords. Measured on flowers-dev (1,000 JPEGs, 58.2 MB; the same 1,000
  serialized records rewritten into 2 shards per split, 2 shared cores, warm cache):
  uncompressed 58.3 MB, written in 0.05-0.14 s, read back with tf.data in 0.05 s;
  GZIP 57.6 MB (-1.2 %), written in 1.2 s, read back in 0.17 s. JPEG/PNG bytes are already
  entropy-coded, so gzip costs CPU on both sides (~10x the write, ~3x the read) for ~1 % of
  space. The whole conversion (validation decodes dominate) takes ~5 s for flowers-dev.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
SPLITS = ("train", "eval", "test")
DEFAULT_EVAL_FRACTION = 0.15
# 0.15 of the images are held out for the blessing gate alone: on flowers-dev (1,000 photos)
# 150 test images, a 95 % Wilson interval of about +-5 points at 90 % accuracy, while training
# keeps 700 images (800 with the old 80/20 split). 0 = no test split (two splits, as before).
DEFAULT_TEST_FRACTION = 0.15
LABELS_FILE = "labels.txt"
_SILENTLY_IGNORED = {"thumbs.db", "desktop.ini"}
SUMMARY_FILE = "conversion.json"  # in span-N/, outside the split folders ExampleGen reads
_WRITER_LOCK = ".writer.lock"
_TMP_SPAN = re.compile(r"^\.tmp-span-\d+-(\d+)$")
_TMP_LABELS = re.compile(r"^\." + re.escape(LABELS_FILE) + r"\.tmp-(\d+)$")


class ConversionError(Exception):
    """A conversion that cannot go on; the message says why in one line."""


@dataclass
class ConversionSummary:
    """What convert() wrote and what it skipped."""

    label_names: list[str]
    counts: dict[str, dict[str, int]]  # class -> {"train": n, "eval": n[, "test": n]}
    bad_files: list[tuple[str, str]]  # (path, reason), also unsupported extensions
    empty_classes: list[str]  # class folders without any valid image (not in label_names)
    out_dir: str
    span_dir: str
    labels_path: str
    output_files: dict[str, list[str]] = field(default_factory=dict)  # split -> shard paths
    # Groups of files with identical bytes: {"sha256", "files": [[relpath, class, split]],
    # "classes": [...], "splits": [...]}, sorted by first path.
    duplicates: list[dict] = field(default_factory=list)
    splits: tuple = ("train", "eval")  # the splits written, in SPLITS order

    def total(self, split: str | None = None) -> int:
        return sum(c[s] for c in self.counts.values() for s in self.splits
                   if split in (None, s))


@dataclass
class _Item:
    label_name: str
    relpath: str  # relative to IMAGES_DIR, '/'-separated
    path: Path
    digest: str  # sha256 of the file bytes seen during validation
    split_key: bytes  # sha256 of relpath


def printable(path) -> str:
    """A path as text that prints anywhere: bytes that are not UTF-8 shown as \\xNN."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8",
                                                                      "backslashreplace")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir decoded undecodable bytes as surrogates
        return False
    return True


def _inside(path: Path, root: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def split_fraction(relpath: str) -> float:
    """Stable number in [0, 1) for a path relative to IMAGES_DIR ('<class>/<name>')."""
    key = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(key[:8], "big") / 2.0**64


def _open_writer(path: str):
    """One TFRecord shard writer (uncompressed); a seam for tests."""
    import tensorflow as tf

    return tf.io.TFRecordWriter(path)


def _validate(data: bytes) -> str | None:
    """None if both PIL and TensorFlow decode `data`, else the reason."""
    from PIL import Image, UnidentifiedImageError

    from components.image_ops import decode_rgb, tf_error_text

    if not data:
        return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except UnidentifiedImageError:
        return "not an image (PIL cannot identify it)"
    except Exception as exc:  # truncated, corrupt, decompression bomb, ...
        return f"corrupt or truncated image (PIL: {exc})"
    try:
        image = decode_rgb(data)
    except Exception as exc:
        return f"TensorFlow cannot decode it ({tf_error_text(exc)})"
    if image.shape[0] == 0 or image.shape[1] == 0:
        return "image has no pixels"
    return None


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX") or name.lower() in _SILENTLY_IGNORED


def _scan(images_dir: Path, log: Callable[[str], None],
          reject: Callable[[Path, str], None]) -> dict[str, list[str]]:
    """Class folder name -> sorted relative paths of its (non-hidden) files. Names that are
    not UTF-8 and links leaving IMAGES_DIR are rejected here (see the module doc)."""
    root_real = os.path.realpath(images_dir)
    classes: dict[str, list[str]] = {}
    for entry in sorted(images_dir.iterdir(), key=lambda p: p.name):
        if _hidden(entry.name):
            continue
        if not entry.is_dir():
            log(f"note: ignoring {printable(entry)}: not inside a class folder")
            continue
        if not _utf8(entry.name):
            reject(entry, "class folder name is not valid UTF-8 (folder skipped)")
            continue
        if "\n" in entry.name or "\r" in entry.name:
            raise ConversionError(f"class folder name {entry.name!r} contains a line break")
        if not _inside(entry, root_real):
            reject(entry, "symbolic link to a folder outside IMAGES_DIR (not followed)")
            continue
        files = []
        for root, dirs, names in os.walk(entry):
            keep = []
            for d in sorted(dirs):
                if _hidden(d):
                    continue
                if not _utf8(d):
                    reject(Path(root, d), "folder name is not valid UTF-8 (folder skipped)")
                elif os.path.islink(os.path.join(root, d)):
                    reject(Path(root, d), "symbolic link to a folder (not followed)")
                else:
                    keep.append(d)
            dirs[:] = keep
            for name in names:
                if _hidden(name):
                    continue
                path = Path(root, name)
                if not _utf8(name):
                    reject(path, "file name is not valid UTF-8")
                elif not _inside(path, root_real):
                    reject(path, "symbolic link leaving IMAGES_DIR (not followed)")
                else:
                    files.append(path.relative_to(images_dir).as_posix())
        classes[entry.name] = sorted(files)
    return classes


def _writer_alive(tmp: Path, pid: int) -> bool:
    """Whether the writer of a temporary is still running: its flock on the lock file is
    held; without a lock file (killed before taking it), whether its pid exists."""
    try:
        fd = os.open(tmp / _WRITER_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except OSError:
        return True  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases a lock taken here
    return False


def clean_stale_temporaries(out_dir: Path, log: Callable[[str], None]) -> list[str]:
    """Remove OUT_DIR's temporaries (.tmp-span-N-<pid>, .labels.txt.tmp-<pid>) whose writer
    is gone (SIGKILL, power loss); returns their paths."""
    removed = []
    for entry in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        span_tmp, labels_tmp = _TMP_SPAN.match(entry.name), _TMP_LABELS.match(entry.name)
        if span_tmp and entry.is_dir() and not entry.is_symlink():
            if _writer_alive(entry, int(span_tmp.group(1))):
                continue
            shutil.rmtree(entry, ignore_errors=True)
        elif labels_tmp and not entry.is_dir():
            try:
                os.kill(int(labels_tmp.group(1)), 0)
                continue
            except ProcessLookupError:
                entry.unlink(missing_ok=True)
            except OSError:
                continue
        else:
            continue
        removed.append(str(entry))
        log(f"removed {printable(entry)}: left behind by a conversion that was killed")
    return removed


def _read_labels(path: Path) -> list[str]:
    return [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n") if line]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_args(images_dir: Path, out_dir: Path, eval_fraction: float, test_fraction: float,
                span: int, shards: int) -> None:
    if not images_dir.is_dir():
        raise ConversionError(f"IMAGES_DIR {images_dir} is not a directory")
    if not 0.0 < eval_fraction < 1.0:
        raise ConversionError(f"eval fraction must be > 0 and < 1, got {eval_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise ConversionError(f"test fraction must be >= 0 and < 1, got {test_fraction}")
    if eval_fraction + test_fraction >= 1.0:
        raise ConversionError(f"eval fraction {eval_fraction} + test fraction {test_fraction} "
                              "must be < 1 (the rest is train)")
    if span < 0:
        raise ConversionError(f"span must be >= 0, got {span}")
    if shards < 1:
        raise ConversionError(f"shards must be >= 1, got {shards}")
    img, out = images_dir.resolve(), out_dir.resolve()
    if out == img or img in out.parents:
        raise ConversionError(f"OUT_DIR {out_dir} must not be inside IMAGES_DIR {images_dir}")
    if out.exists() and not out.is_dir():
        raise ConversionError(f"OUT_DIR {out_dir} exists and is not a directory")


def split_of(relpath: str, eval_fraction: float, test_fraction: float = 0.0) -> str:
    """The split the hash rule gives a file (before the per-class adjustment)."""
    f = split_fraction(relpath)
    return "eval" if f < eval_fraction else "test" if f < eval_fraction + test_fraction \
        else "train"


# Block order along the hash, and which splits a small class fills first.
_BLOCKS = ("eval", "test", "train")
_PRIORITY = ("train", "eval", "test")


def block_sizes(sizes: dict[str, int], splits: tuple) -> dict[str, int]:
    """One class's split sizes after the adjustment: each of the first min(n, len(splits))
    splits of _PRIORITY gets at least one image, taken from the largest block (ties: train,
    then eval, then test); a class of one image keeps its hash split."""
    sizes = dict(sizes)
    n = sum(sizes.values())
    if n < 2:
        return sizes
    required = [s for s in _PRIORITY if s in splits][:n]
    for s in required:
        if sizes[s] == 0:
            donors = [d for d in _PRIORITY if sizes[d] > (1 if d in required else 0)]
            donor = max(donors, key=lambda d: (sizes[d], -_PRIORITY.index(d)))
            sizes[donor] -= 1
            sizes[s] += 1
    return sizes


def _assign_splits(items: list[_Item], eval_fraction: float,
                   test_fraction: float = 0.0) -> dict[str, list[_Item]]:
    by_class: dict[str, list[_Item]] = {}
    for it in items:
        by_class.setdefault(it.label_name, []).append(it)
    written = tuple(s for s in SPLITS if s != "test" or test_fraction > 0)
    splits: dict[str, list[_Item]] = {s: [] for s in written}
    for members in by_class.values():
        members = sorted(members, key=lambda it: it.split_key)  # ascending fraction
        hashed = [split_of(it.relpath, eval_fraction, test_fraction) for it in members]
        sizes = block_sizes({s: hashed.count(s) for s in _BLOCKS}, written)
        start = 0
        for s in _BLOCKS:  # contiguous blocks along the hash: eval, test, train
            splits.setdefault(s, []).extend(members[start:start + sizes[s]])
            start += sizes[s]
    for s in written:  # interleave classes, deterministically
        splits[s].sort(key=lambda it: (it.split_key, it.relpath))
    return {s: splits[s] for s in written}


def _example(data: bytes, label: int, it: _Item) -> bytes:
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "label_text": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[it.label_name.encode("utf-8")])),
        "filename": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[it.relpath.encode("utf-8")])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)  # map order fixed: byte-identical output


def convert(images_dir, out_dir, eval_fraction: float = DEFAULT_EVAL_FRACTION, span: int = 1,
            shards: int = 2, strict: bool = False, log: Callable[[str], None] = print,
            test_fraction: float = DEFAULT_TEST_FRACTION) -> ConversionSummary:
    """Validate IMAGES_DIR/<class>/<files> and write OUT_DIR/span-<span> (see module doc).

    Raises ConversionError with a one-line message on anything that stops the conversion.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    _check_args(images_dir, out_dir, eval_fraction, test_fraction, span, shards)
    span_dir = out_dir / f"span-{span}"
    labels_path = out_dir / LABELS_FILE
    if span_dir.exists():
        raise ConversionError(f"{span_dir} already exists; spans are never overwritten: "
                              "use another --span or remove it")

    clean_stale_temporaries(out_dir, log)
    bad: list[tuple[str, str]] = []

    def reject(path: Path, reason: str) -> None:
        if strict:
            raise ConversionError(f"{printable(path)}: {reason} (--strict)")
        bad.append((printable(path), reason))
        log(f"skipped {printable(path)}: {reason}")

    classes = _scan(images_dir, log, reject)
    if len(classes) < 2:
        raise ConversionError(f"need at least 2 class folders in {images_dir}, found "
                              f"{len(classes)}{': ' + ', '.join(classes) if classes else ''}")

    items: list[_Item] = []
    n_files = sum(len(v) for v in classes.values())
    done, t0 = 0, time.monotonic()
    for label_name, relpaths in classes.items():
        for rel in relpaths:
            path = images_dir / rel
            done += 1
            if done % 500 == 0:
                log(f"validated {done}/{n_files} files ({time.monotonic() - t0:.1f} s)")
            if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
                reject(path, f"unsupported extension {Path(rel).suffix or '(none)'!r} "
                             f"(accepted: {' '.join(IMAGE_EXTENSIONS)})")
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                reject(path, f"cannot read it ({exc.strerror or exc})")
                continue
            reason = _validate(data)
            if reason:
                reject(path, reason)
                continue
            items.append(_Item(label_name, rel, path, hashlib.sha256(data).hexdigest(),
                               hashlib.sha256(rel.encode("utf-8")).digest()))

    present = {it.label_name for it in items}
    empty_classes = [c for c in classes if c not in present]
    for c in empty_classes:
        what = "is empty" if not classes[c] else "has no valid image"
        if strict:
            raise ConversionError(f"class folder {images_dir / c} {what} (--strict)")
        log(f"skipped class {c!r}: folder {images_dir / c} {what}")
    label_names = sorted(present)
    if len(label_names) < 2:
        found = f"{len(label_names)}{': ' + ', '.join(label_names) if label_names else ''}"
        raise ConversionError(f"need at least 2 classes with valid images, found {found}")
    if labels_path.exists():
        previous = _read_labels(labels_path)
        if previous != label_names:
            missing = sorted(set(previous) - set(label_names))
            new = sorted(set(label_names) - set(previous))
            raise ConversionError(
                f"{labels_path} lists classes {previous} but {images_dir} has {label_names}"
                f" (missing: {missing or 'none'}, new: {new or 'none'}); all spans of an "
                "OUT_DIR share one label vocabulary: use a new OUT_DIR")
    label_of = {name: i for i, name in enumerate(label_names)}

    splits = _assign_splits(items, eval_fraction, test_fraction)
    written = tuple(splits)
    duplicates = _duplicates(splits)
    for group in duplicates:
        if len(group["classes"]) > 1 or len(group["splits"]) > 1:
            log(f"warning: identical images under {' and '.join(group['classes'])} in "
                f"{' and '.join(group['splits'])}: "
                f"{', '.join(f for f, _, _ in group['files'])}")
    counts = {name: {s: 0 for s in written} for name in label_names}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir / f".tmp-span-{span}-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    outputs: dict[str, list[str]] = {}
    lock_fd = -1
    try:
        tmp_dir.mkdir()
        lock_fd = os.open(tmp_dir / _WRITER_LOCK, os.O_WRONLY | os.O_CREAT, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # held until the end: "this writer is alive"
        for split in written:
            (tmp_dir / split).mkdir(parents=True)
            names = [f"data-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
            outputs[split] = [str(span_dir / split / n) for n in names]
            with ExitStack() as stack:
                writers = [stack.enter_context(_open_writer(str(tmp_dir / split / n)))
                           for n in names]
                for i, it in enumerate(splits[split]):
                    data = it.path.read_bytes()
                    if hashlib.sha256(data).hexdigest() != it.digest:
                        raise ConversionError(f"{it.path} changed while converting")
                    writers[i % shards].write(_example(data, label_of[it.label_name], it))
                    counts[it.label_name][split] += 1
        summary = ConversionSummary(label_names=label_names, counts=counts, bad_files=bad,
                                    empty_classes=empty_classes, out_dir=str(out_dir),
                                    span_dir=str(span_dir), labels_path=str(labels_path),
                                    output_files=outputs, duplicates=duplicates,
                                    splits=written)
        (tmp_dir / SUMMARY_FILE).write_text(json.dumps(_summary_record(summary), indent=1),
                                            encoding="utf-8")
        if span_dir.exists():
            raise ConversionError(f"{span_dir} appeared while converting; not overwritten")
        if not labels_path.exists():
            _write_atomic(labels_path, "".join(n + "\n" for n in label_names))
        (tmp_dir / _WRITER_LOCK).unlink()  # the flock stays held on the open file
        try:
            os.rename(tmp_dir, span_dir)
        except OSError as exc:
            raise ConversionError(f"cannot rename {tmp_dir} to {span_dir}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
    return summary


def _duplicates(splits: dict[str, list[_Item]]) -> list[dict]:
    """Groups of two or more files with identical bytes, with their classes and splits."""
    by_digest: dict[str, list[tuple[str, str, str]]] = {}
    for split in splits:
        for it in splits[split]:
            by_digest.setdefault(it.digest, []).append((it.relpath, it.label_name, split))
    groups = []
    for digest, files in by_digest.items():
        if len(files) > 1:
            files.sort()
            groups.append({"sha256": digest, "files": [list(f) for f in files],
                           "classes": sorted({c for _, c, _ in files}),
                           "splits": [s for s in splits if any(f[2] == s for f in files)]})
    return sorted(groups, key=lambda g: g["files"][0][0])


def duplicate_counts(duplicates: list[dict]) -> dict[str, int]:
    """{"groups", "files", "across_classes", "across_splits"} for a list of groups."""
    return {"groups": len(duplicates), "files": sum(len(g["files"]) for g in duplicates),
            "across_classes": sum(len(g["classes"]) > 1 for g in duplicates),
            "across_splits": sum(len(g["splits"]) > 1 for g in duplicates)}


def _summary_record(summary: ConversionSummary) -> dict:
    """span-N/conversion.json: what the run report shows about the conversion."""
    return {"label_names": summary.label_names, "splits": list(summary.splits),
            "counts": summary.counts, "bad_files": len(summary.bad_files),
            "duplicates": dict(duplicate_counts(summary.duplicates),
                               examples=summary.duplicates[:100])}


def format_summary(summary: ConversionSummary) -> str:
    """The per-class train/eval/test table printed by `graft make-tfrecords`."""
    width = max([len("class"), len("total")] + [len(n) for n in summary.label_names])
    splits = summary.splits
    lines = [f"{'label':>5}  {'class':<{width}}  " + "".join(f"{s:>7}  " for s in splits)
             + f"{'total':>7}"]
    for i, name in enumerate(summary.label_names):
        c = summary.counts[name]
        lines.append(f"{i:>5}  {name:<{width}}  " + "".join(f"{c[s]:>7}  " for s in splits)
                     + f"{sum(c[s] for s in splits):>7}")
    lines.append(f"{'':>5}  {'total':<{width}}  "
                 + "".join(f"{summary.total(s):>7}  " for s in splits) + f"{summary.total():>7}")
    lines.append(f"bad files skipped: {len(summary.bad_files)}")
    for path, reason in summary.bad_files:
        lines.append(f"  {path}: {reason}")
    if summary.empty_classes:
        lines.append(f"class folders without valid images (not labels): "
                     f"{', '.join(summary.empty_classes)}")
    if summary.duplicates:
        n = duplicate_counts(summary.duplicates)
        lines.append(f"duplicate images (identical bytes): {n['groups']} groups, {n['files']} "
                     f"files; across classes: {n['across_classes']}, across {'/'.join(splits)}: "
                     f"{n['across_splits']}")
        for g in summary.duplicates[:20]:
            lines.append("  " + ", ".join(f"{f} ({c}, {s})" for f, c, s in g["files"]))
        if len(summary.duplicates) > 20:
            lines.append(f"  ... and {len(summary.duplicates) - 20} more groups (see "
                         f"{summary.span_dir}/{SUMMARY_FILE})")
    else:
        lines.append("duplicate images (identical bytes): none")
    shards = len(summary.output_files.get("train", []))
    lines.append(f"wrote {printable(summary.span_dir)}/{{{','.join(splits)}}} ({shards} shards "
                 "each), "
                 f"labels in {printable(summary.labels_path)}")
    return "\n".join(lines)


def main(args) -> int:
    """`graft make-tfrecords`: 0 on success (bad files skipped are listed), 1 on failure."""
    import signal
    import sys

    def terminated(signum, _frame):
        raise SystemExit(128 + signum)  # unwinds: the temporary span is removed

    previous = signal.signal(signal.SIGTERM, terminated)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.monotonic()
    try:
        summary = convert(args.images_dir, args.out_dir, eval_fraction=args.eval_fraction,
                          test_fraction=getattr(args, "test_fraction", DEFAULT_TEST_FRACTION),
                          span=args.span, shards=args.shards, strict=args.strict,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line, no traceback
        print(f"error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_summary(summary))
    print(f"done in {time.monotonic() - t0:.1f} s")
    return 0
