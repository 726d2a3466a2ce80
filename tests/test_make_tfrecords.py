"""Tests for pipeline.data.make_tfrecords and pipeline.data.demo_dataset (small, CPU-cheap)."""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
from PIL import Image  # noqa: E402
from span_records import splits as _splits  # noqa: E402

from pipeline.data import demo_dataset, make_tfrecords  # noqa: E402
from pipeline.data.make_tfrecords import ConversionError, convert  # noqa: E402


def _encode(mode: str, fmt: str, size=(12, 10), seed: int = 0) -> bytes:
    colour = {"L": seed * 20 % 256, "1": 1, "P": seed % 200,
              "CMYK": (seed * 20 % 256, 10, 20, 0), "RGBA": (seed * 20 % 256, 40, 90, 128)}
    image = Image.new(mode, size, colour.get(mode, (seed * 20 % 256, 100, 50)))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


# class -> (file name, bytes): every format/mode combination we accept.
def _dataset_spec() -> dict[str, list[tuple[str, bytes]]]:
    spec: dict[str, list[tuple[str, bytes]]] = {"birds": [], "cats": [], "dogs": []}
    for i in range(4):
        spec["cats"] += [(f"rgb{i}.png", _encode("RGB", "PNG", seed=i)),
                         (f"rgba{i}.PNG", _encode("RGBA", "PNG", seed=i))]
        spec["dogs"] += [(f"gray{i}.jpg", _encode("L", "JPEG", seed=i)),
                         (f"cmyk{i}.jpeg", _encode("CMYK", "JPEG", seed=i))]
        spec["birds"] += [(f"anim{i}.gif", _encode("P", "GIF", seed=i)),
                          (f"rgb{i}.bmp", _encode("RGB", "BMP", seed=i)),
                          (f"photo{i}.JPG", _encode("RGB", "JPEG", seed=i))]
    spec["cats"].append(("sub/nested.png", _encode("L", "PNG")))
    return spec


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for cls, files in _dataset_spec().items():
        for name, data in files:
            (root / cls / name).parent.mkdir(parents=True, exist_ok=True)
            (root / cls / name).write_bytes(data)
    (root / "cats" / ".DS_Store").write_bytes(b"\0junk")  # ignored silently
    (root / "LICENSE.txt").write_text("CC BY 2.0")  # loose top-level file: ignored
    return root


def test_convert_counts_layout_and_roundtrip(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    logs: list[str] = []
    summary = convert(images, out, shards=2, log=logs.append)
    spec = _dataset_spec()
    assert summary.label_names == ["birds", "cats", "dogs"]
    assert (out / "labels.txt").read_text() == "birds\ncats\ndogs\n"
    assert summary.bad_files == [] and summary.empty_classes == []
    assert any("LICENSE.txt" in m for m in logs)
    for split in ("train", "eval", "test"):
        assert sorted(os.listdir(out / "span-1" / split)) == [
            "data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord"]
    assert sorted(os.listdir(out)) == ["labels.txt", "span-1"]  # no temporary left

    records = _splits(out)
    seen = {}
    for split, recs in records.items():
        for r in recs:
            name = r["filename"].decode()
            cls = r["label_text"].decode()
            assert name.split("/")[0] == cls
            assert summary.label_names[r["label"]] == cls
            assert r["image"] == (images / name).read_bytes()  # bytes unchanged
            image = tf.io.decode_image(r["image"], channels=3, expand_animations=False)
            assert image.shape[-1] == 3 and image.shape[0] > 0
            seen[name] = split
    expected = {f"{c}/{n}" for c, files in spec.items() for n, _ in files}
    assert set(seen) == expected and len(seen) == sum(len(v) for v in records.values())
    for cls, files in spec.items():
        got = {s: sum(1 for n, sp in seen.items() if n.startswith(cls + "/") and sp == s)
               for s in ("train", "eval", "test")}
        assert got == summary.counts[cls]
        assert min(got.values()) >= 1  # every class has >= 3 images: one in each split
        assert sum(got.values()) == len(files)


def test_split_is_deterministic(images: Path, tmp_path: Path):
    convert(images, tmp_path / "a", log=lambda m: None)
    convert(images, tmp_path / "b", log=lambda m: None)
    for split in ("train", "eval", "test"):
        for name in os.listdir(tmp_path / "a" / "span-1" / split):
            a = (tmp_path / "a" / "span-1" / split / name).read_bytes()
            assert a == (tmp_path / "b" / "span-1" / split / name).read_bytes()
    # The split of a file depends on its name only: the hash rule, within [0, 1).
    fractions = [make_tfrecords.split_fraction(f"cats/x{i}.png") for i in range(200)]
    assert all(0 <= f < 1 for f in fractions)
    assert 20 < sum(f < 0.2 for f in fractions) < 60


def test_bad_files_are_skipped_named_and_counted(images: Path, tmp_path: Path):
    jpeg = _encode("RGB", "JPEG", size=(64, 64))
    bad = {
        "cats/empty.jpg": b"",
        "dogs/truncated.jpg": jpeg[: len(jpeg) // 2],
        "dogs/text.jpg": b"this is not an image\n",
        "birds/notes.txt": b"hello",
        "birds/onebit.bmp": _encode("1", "BMP"),  # PIL reads it, TensorFlow cannot
    }
    for rel, data in bad.items():
        (images / rel).write_bytes(data)
    summary = convert(images, tmp_path / "out", log=lambda m: None)
    reasons = {Path(p).relative_to(images).as_posix(): r for p, r in summary.bad_files}
    assert set(reasons) == set(bad)
    assert "empty" in reasons["cats/empty.jpg"]
    assert "truncated" in reasons["dogs/truncated.jpg"]
    assert "not an image" in reasons["dogs/text.jpg"]
    assert "unsupported extension '.txt'" in reasons["birds/notes.txt"]
    assert "TensorFlow" in reasons["birds/onebit.bmp"]
    spec = _dataset_spec()
    assert {c: sum(v.values()) for c, v in summary.counts.items()} == {
        c: len(f) for c, f in spec.items()}
    names = {r["filename"].decode() for recs in _splits(tmp_path / "out").values() for r in recs}
    assert not names & set(bad)


def test_strict_fails_on_first_bad_file(images: Path, tmp_path: Path):
    (images / "dogs" / "text.jpg").write_bytes(b"not an image")
    with pytest.raises(ConversionError, match=r"text\.jpg.*not an image.*--strict"):
        convert(images, tmp_path / "out", strict=True, log=lambda m: None)
    assert not (tmp_path / "out" / "span-1").exists()


def test_empty_class_folder(images: Path, tmp_path: Path):
    (images / "empty").mkdir()
    summary = convert(images, tmp_path / "out", log=lambda m: None)
    assert summary.empty_classes == ["empty"] and "empty" not in summary.label_names
    with pytest.raises(ConversionError, match="empty.*is empty"):
        convert(images, tmp_path / "out2", strict=True, log=lambda m: None)


def test_need_two_classes(tmp_path: Path):
    root = tmp_path / "images"
    (root / "only").mkdir(parents=True)
    (root / "only" / "a.png").write_bytes(_encode("RGB", "PNG"))
    with pytest.raises(ConversionError, match="at least 2 class"):
        convert(root, tmp_path / "out", log=lambda m: None)
    (root / "junk").mkdir()
    (root / "junk" / "x.txt").write_text("x")  # a second folder but no valid image
    with pytest.raises(ConversionError, match="at least 2 classes with valid images"):
        convert(root, tmp_path / "out", log=lambda m: None)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConversionError, match="found 0"):
        convert(tmp_path / "nothing", tmp_path / "out2", log=lambda m: None)  # no classes


def test_existing_span_refused_and_labels_shared(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    convert(images, out, log=lambda m: None)
    with pytest.raises(ConversionError, match="span-1 already exists"):
        convert(images, out, log=lambda m: None)
    convert(images, out, span=2, log=lambda m: None)
    assert (out / "span-2" / "train").is_dir()
    (images / "zebras").mkdir()
    (images / "zebras" / "z.png").write_bytes(_encode("RGB", "PNG"))
    with pytest.raises(ConversionError, match="new: \\['zebras'\\]"):
        convert(images, out, span=3, log=lambda m: None)
    assert not (out / "span-3").exists()


def test_crash_midway_leaves_no_span(images: Path, tmp_path: Path, monkeypatch):
    real = make_tfrecords._open_writer
    written = []

    class Flaky:
        def __init__(self, path):
            self.inner = real(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def write(self, record):
            if len(written) >= 3:
                raise RuntimeError("disk on fire")
            written.append(record)
            self.inner.write(record)

    monkeypatch.setattr(make_tfrecords, "_open_writer", Flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert(images, out, log=lambda m: None)
    assert len(written) == 3
    assert os.listdir(out) == []  # no span-1, no temporary dir, no labels.txt


def test_main_prints_table_or_one_line_error(images: Path, tmp_path: Path, capsys):
    def ns(**kw):
        base = dict(images_dir=str(images), out_dir=str(tmp_path / "out"), eval_fraction=0.2,
                    span=1, shards=1, strict=False)
        return argparse.Namespace(**{**base, **kw})

    (images / "birds" / "bad.gif").write_bytes(b"GIF89a broken")
    assert make_tfrecords.main(ns()) == 0
    out = capsys.readouterr().out
    assert "birds" in out and "total" in out and "bad files skipped: 1" in out and "bad.gif" in out
    assert make_tfrecords.main(ns()) == 1  # span exists
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "already exists" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert make_tfrecords.main(ns(span=5, eval_fraction=1.5)) == 1


def test_flowers_dev(tmp_path: Path, shared_data: Path):
    flowers = shared_data / "flowers-dev"
    t0 = time.monotonic()
    summary = convert(flowers, tmp_path / "out", shards=2, log=lambda m: None)
    elapsed = time.monotonic() - t0
    assert summary.label_names == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert summary.bad_files == [] and summary.total() == 1000
    for cls, c in summary.counts.items():
        assert c["train"] + c["eval"] + c["test"] == 200
        assert 0.09 <= c["eval"] / 200 <= 0.21 and 0.09 <= c["test"] / 200 <= 0.21, (cls, c)
    assert elapsed < 60, f"flowers-dev conversion took {elapsed:.1f} s"


def test_demo_dataset_builds_and_is_reused(tmp_path: Path):
    logs: list[str] = []
    tfr = demo_dataset.build(tmp_path / "demo", per_class=6, image_size=32, log=logs.append)
    labels = (Path(tfr) / "labels.txt").read_text().split()
    assert labels == sorted(demo_dataset.DIGIT_NAMES) and len(labels) == 10
    records = _splits(Path(tfr))
    assert sum(len(v) for v in records.values()) == 60
    assert all(len(v) > 0 for v in records.values())
    image = tf.io.decode_image(records["train"][0]["image"])
    assert tuple(image.shape) == (32, 32, 1)
    first = sorted(p.read_bytes() for p in (tmp_path / "demo" / "images").rglob("*.png"))
    n_logs = len(logs)
    assert demo_dataset.build(tmp_path / "demo", per_class=6, image_size=32,
                              log=logs.append) == tfr
    assert len(logs) == n_logs  # reused, nothing rebuilt
    demo_dataset.build(tmp_path / "demo", per_class=4, image_size=32, log=logs.append)
    assert sum(len(v) for v in _splits(Path(tfr)).values()) == 40
    again = demo_dataset.build(tmp_path / "demo2", per_class=6, image_size=32, log=lambda m: None)
    assert sorted(p.read_bytes() for p in (tmp_path / "demo2" / "images").rglob("*.png")) == first
    assert again.endswith("tfrecords")


def test_cifar10_sample_reads_with_our_feature_types(shared_data: Path):
    sample = shared_data / "cifar10-sample"
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64),
            "id": tf.io.FixedLenFeature([], tf.string)}
    for name in ("cifar10_train.tfrecord", "cifar10_test.tfrecord"):
        ds = tf.data.TFRecordDataset(str(sample / name)).map(
            lambda r: tf.io.parse_single_example(r, spec))
        n = 0
        for ex in ds:
            image = tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
            assert tuple(image.shape) == (32, 32, 3)
            assert 0 <= int(ex["label"]) < 10
            n += 1
        assert n == 128


# --- hostile inputs: odd names, links, duplicates, killed writers ---------------------------
def test_non_utf8_names_are_skipped_with_a_reason(images: Path, tmp_path: Path, capsys):
    # Names that are not UTF-8 (e.g. Latin-1 from an old archive) aborted the whole conversion
    # with "UnicodeEncodeError ... surrogates not allowed", naming no file.
    root = os.fsencode(images)
    with open(root + b"/cats/caf\xe9.png", "wb") as f:
        f.write(_encode("RGB", "PNG", seed=7))
    os.mkdir(root + b"/l\xe9zards")
    with open(root + b"/l\xe9zards/a.png", "wb") as f:
        f.write(_encode("RGB", "PNG", seed=8))
    os.mkdir(root + b"/dogs/\xff")
    with open(root + b"/dogs/\xff/b.png", "wb") as f:
        f.write(_encode("RGB", "PNG", seed=9))
    summary = convert(images, tmp_path / "out", log=lambda m: None)
    reasons = dict(summary.bad_files)
    assert reasons == {
        f"{images}/cats/caf\\xe9.png": "file name is not valid UTF-8",
        f"{images}/l\\xe9zards": "class folder name is not valid UTF-8 (folder skipped)",
        f"{images}/dogs/\\xff": "folder name is not valid UTF-8 (folder skipped)"}
    assert summary.label_names == ["birds", "cats", "dogs"]
    assert summary.total() == sum(len(f) for f in _dataset_spec().values())
    make_tfrecords.format_summary(summary).encode("utf-8")  # prints anywhere
    with pytest.raises(ConversionError, match=r"caf\\xe9\.png: file name is not valid UTF-8"):
        convert(images, tmp_path / "strict", strict=True, log=lambda m: None)
    args = argparse.Namespace(images_dir=str(images), out_dir=str(tmp_path / "cli"),
                              eval_fraction=0.2, span=1, shards=1, strict=False)
    assert make_tfrecords.main(args) == 0
    assert "caf\\xe9.png: file name is not valid UTF-8" in capsys.readouterr().out


def test_symlinks_leaving_images_dir_are_skipped(images: Path, tmp_path: Path):
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "private.png").write_bytes(_encode("RGB", "PNG", seed=11))
    (images / "cats" / "escape.png").symlink_to(secret / "private.png")
    (images / "remote").symlink_to(secret, target_is_directory=True)  # a class folder link
    (images / "dogs" / "linkdir").symlink_to(secret, target_is_directory=True)
    summary = convert(images, tmp_path / "out", log=lambda m: None)
    reasons = {Path(p).relative_to(images).as_posix(): r for p, r in summary.bad_files}
    assert reasons == {
        "cats/escape.png": "symbolic link leaving IMAGES_DIR (not followed)",
        "remote": "symbolic link to a folder outside IMAGES_DIR (not followed)",
        "dogs/linkdir": "symbolic link to a folder (not followed)"}
    assert summary.label_names == ["birds", "cats", "dogs"]
    images_written = {r["image"] for recs in _splits(tmp_path / "out").values() for r in recs}
    assert (secret / "private.png").read_bytes() not in images_written


def _name_in(split: str, cls: str, stem: str) -> str:
    """A file name whose hash puts '<cls>/<name>' into `split` (eval 0.2, no test split)."""
    for i in range(1000):
        name = f"{stem}{i}.png"
        if make_tfrecords.split_of(f"{cls}/{name}", 0.2) == split:
            return name
    raise AssertionError("no name found")


def test_duplicates_across_classes_and_splits_are_reported(images: Path, tmp_path: Path):
    photo = _encode("RGB", "PNG", seed=42)
    train_name, eval_name = _name_in("train", "cats", "dup"), _name_in("eval", "cats", "dup")
    (images / "cats" / train_name).write_bytes(photo)
    (images / "cats" / eval_name).write_bytes(photo)  # the same photo in train and in eval
    (images / "dogs" / "also-a-cat.png").symlink_to(images / "cats" / train_name)
    logs: list[str] = []
    summary = convert(images, tmp_path / "out", log=logs.append, eval_fraction=0.2,
                      test_fraction=0)  # two splits, as before the test split
    assert summary.bad_files == []  # a link inside IMAGES_DIR is followed
    # The fixture's four GIFs are identical too (one class): two groups.
    assert [g["files"][0][0] for g in summary.duplicates] == ["birds/anim0.gif",
                                                              f"cats/{min(train_name, eval_name)}"]
    gifs, group = summary.duplicates
    assert len(gifs["files"]) == 4 and gifs["classes"] == ["birds"]
    assert group["classes"] == ["cats", "dogs"] and group["splits"] == ["train", "eval"]
    assert {f for f, _, _ in group["files"]} == {
        f"cats/{train_name}", f"cats/{eval_name}", "dogs/also-a-cat.png"}
    assert any(m.startswith("warning: identical images under cats and dogs") for m in logs)
    text = make_tfrecords.format_summary(summary)
    gif_splits = len(gifs["splits"]) - 1
    assert (f"duplicate images (identical bytes): 2 groups, 7 files; across classes: 1, "
            f"across train/eval: {1 + gif_splits}") in text
    line = next(x for x in text.splitlines() if "also-a-cat" in x)
    for part in (f"cats/{train_name} (cats, train)", f"cats/{eval_name} (cats, eval)",
                 "dogs/also-a-cat.png (dogs, train)"):
        assert part in line
    record = json.loads((tmp_path / "out" / "span-1" / "conversion.json").read_text())
    assert record["duplicates"]["across_splits"] == 1 + gif_splits
    assert record["duplicates"]["examples"][1]["sha256"] == group["sha256"]
    assert sorted(os.listdir(tmp_path / "out" / "span-1")) == ["conversion.json", "eval",
                                                               "train"]


_KILLED_WRITER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from pipeline.data import make_tfrecords
sig = getattr(signal, sys.argv[4])

class Dies:
    def __init__(self, path): pass
    def __enter__(self): return self
    def __exit__(self, *exc): pass
    def write(self, record): os.kill(os.getpid(), sig)

make_tfrecords._open_writer = Dies
import argparse
args = argparse.Namespace(images_dir=sys.argv[2], out_dir=sys.argv[3], eval_fraction=0.2,
                          span=1, shards=1, strict=False)
sys.exit(make_tfrecords.main(args))
"""


def _run_writer_that_dies(images: Path, out: Path, sig: str):
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    return subprocess.run([sys.executable, "-c", _KILLED_WRITER, root, str(images), str(out),
                           sig], capture_output=True, text=True, timeout=120)


def test_sigkilled_writer_temporary_is_cleaned_by_the_next_run(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = _run_writer_that_dies(images, out, "SIGKILL")
    assert proc.returncode == -9, proc.stderr[-2000:]
    leftovers = [n for n in os.listdir(out) if n.startswith(".tmp-span-1-")]
    assert len(leftovers) == 1  # SIGKILL: nothing can clean up
    logs: list[str] = []
    convert(images, out, log=logs.append)
    assert sorted(os.listdir(out)) == ["labels.txt", "span-1"]
    assert any(m.startswith(f"removed {out / leftovers[0]}") for m in logs)


def test_sigterm_removes_the_temporary_at_once(images: Path, tmp_path: Path):
    out = tmp_path / "out"
    proc = _run_writer_that_dies(images, out, "SIGTERM")
    assert proc.returncode == 128 + 15, proc.stderr[-2000:]
    assert os.listdir(out) == []


def test_only_temporaries_of_dead_writers_are_removed(tmp_path: Path):
    import fcntl
    import subprocess
    import sys

    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    live_locked = out / f".tmp-span-1-{dead_pid}"  # pid reused or not: the lock decides
    (live_locked / "train").mkdir(parents=True)
    fd = os.open(live_locked / ".writer.lock", os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    stale_locked = out / ".tmp-span-2-1"  # lock file nobody holds
    stale_locked.mkdir()
    (stale_locked / ".writer.lock").write_bytes(b"")
    stale_unlocked = out / f".tmp-span-3-{dead_pid}"  # killed before taking the lock
    stale_unlocked.mkdir()
    alive_unlocked = out / f".tmp-span-4-{os.getpid()}"
    alive_unlocked.mkdir()
    (out / f".labels.txt.tmp-{dead_pid}").write_text("x\n")
    (out / "span-1").mkdir()
    try:
        removed = make_tfrecords.clean_stale_temporaries(out, log=lambda m: None)
    finally:
        os.close(fd)
    assert sorted(removed) == sorted(str(p) for p in (
        stale_locked, stale_unlocked, out / f".labels.txt.tmp-{dead_pid}"))
    assert sorted(os.listdir(out)) == sorted([live_locked.name, alive_unlocked.name, "span-1"])
    assert make_tfrecords.clean_stale_temporaries(out, log=lambda m: None) == [
        str(live_locked)]  # its writer let go of the lock


# The three-way split (train / eval / test).

def _many(root: Path, per_class: dict[str, int]) -> Path:
    png = _encode("RGB", "PNG")
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"img{i:03d}.png").write_bytes(png)
    return root


def _names(out: Path) -> dict[str, set]:
    return {s: {r["filename"].decode() for r in recs} for s, recs in _splits(out).items()}


def test_three_way_split_counts_no_overlap_and_hash_rule(tmp_path: Path):
    images = _many(tmp_path / "images", {"a": 120, "b": 90, "c": 3, "d": 2})
    summary = convert(images, tmp_path / "out", log=lambda m: None)
    assert summary.splits == ("train", "eval", "test")
    names = _names(tmp_path / "out")
    assert set(names) == {"train", "eval", "test"}
    assert not names["train"] & names["eval"] and not names["train"] & names["test"] \
        and not names["eval"] & names["test"]  # no file in two splits
    assert sum(map(len, names.values())) == 215  # every file in one split
    for cls, n in (("a", 120), ("b", 90)):
        c = summary.counts[cls]
        assert sum(c.values()) == n
        for split, fraction in (("eval", 0.15), ("test", 0.15), ("train", 0.70)):
            assert abs(c[split] / n - fraction) < 0.08, (cls, c)
        # Big classes: the hash rule alone, file by file.
        for name in (f"{cls}/img{i:03d}.png" for i in range(n)):
            split = make_tfrecords.split_of(name, 0.15, 0.15)
            assert name in names[split], (name, split)
    assert summary.counts["c"] == {"train": 1, "eval": 1, "test": 1}  # 3 images: one each
    assert summary.counts["d"] == {"train": 1, "eval": 1, "test": 0}  # 2: train and eval
    text = make_tfrecords.format_summary(summary)
    assert text.splitlines()[0].split() == ["label", "class", "train", "eval", "test", "total"]
    assert "/{train,eval,test} (2 shards each)" in text
    record = json.loads((tmp_path / "out" / "span-1" / "conversion.json").read_text())
    assert record["splits"] == ["train", "eval", "test"]


def test_a_files_split_does_not_depend_on_the_other_files(tmp_path: Path):
    """Span 2 with more photos: the photos span 1 had keep their split (test stays test)."""
    small = _many(tmp_path / "small", {"a": 60, "b": 60})
    big = _many(tmp_path / "big", {"a": 100, "b": 100})
    convert(small, tmp_path / "out", span=1, log=lambda m: None)
    convert(big, tmp_path / "out", span=2, log=lambda m: None)
    one, two = _names(tmp_path / "out"), _splits(tmp_path / "out", span=2)
    two = {s: {r["filename"].decode() for r in recs} for s, recs in two.items()}
    for split in ("train", "eval", "test"):
        assert one[split] <= two[split], split


def test_test_fraction_zero_writes_the_two_splits_of_before(tmp_path: Path):
    images = _many(tmp_path / "images", {"a": 40, "b": 40})
    summary = convert(images, tmp_path / "out", eval_fraction=0.2, test_fraction=0,
                      log=lambda m: None)
    assert summary.splits == ("train", "eval")
    assert sorted(os.listdir(tmp_path / "out" / "span-1")) == ["conversion.json", "eval",
                                                               "train"]
    names = _names(tmp_path / "out")
    expected_eval = {f"{c}/img{i:03d}.png" for c in "ab" for i in range(40)
                     if make_tfrecords.split_fraction(f"{c}/img{i:03d}.png") < 0.2}
    assert names["eval"] == expected_eval
    # The same eval fraction with a test split: eval is the same files, test comes from train.
    convert(images, tmp_path / "out3", eval_fraction=0.2, test_fraction=0.2, log=lambda m: None)
    three = _names(tmp_path / "out3")
    assert three["eval"] == expected_eval and three["test"] <= names["train"]


def test_block_sizes_fill_small_classes_train_eval_test_in_that_order():
    sizes = make_tfrecords.block_sizes
    three = ("train", "eval", "test")
    assert sizes({"eval": 0, "test": 0, "train": 1}, three) == {"eval": 0, "test": 0, "train": 1}
    assert sizes({"eval": 2, "test": 0, "train": 0}, three) == {"eval": 1, "test": 0, "train": 1}
    assert sizes({"eval": 0, "test": 0, "train": 5}, three) == {"eval": 1, "test": 1, "train": 3}
    assert sizes({"eval": 3, "test": 0, "train": 2}, three) == {"eval": 2, "test": 1, "train": 2}
    assert sizes({"eval": 0, "test": 0, "train": 5}, ("train", "eval")) == {
        "eval": 1, "test": 0, "train": 4}


@pytest.mark.parametrize("eval_fraction,test_fraction,message", [
    (0.5, 0.5, "must be < 1"), (0.2, -0.1, "test fraction must be >= 0"),
    (0.0, 0.2, "eval fraction must be > 0")])
def test_bad_fractions_are_one_line_errors(images: Path, tmp_path: Path, eval_fraction,
                                           test_fraction, message):
    with pytest.raises(ConversionError, match=message):
        convert(images, tmp_path / "out", eval_fraction=eval_fraction,
                test_fraction=test_fraction, log=lambda m: None)


def test_cli_test_fraction_flag(images: Path, tmp_path: Path, capsys):
    from pipeline import cli

    assert cli.main(["make-tfrecords", str(images), str(tmp_path / "two"),
                     "--test-fraction", "0"]) == 0
    assert not (tmp_path / "two" / "span-1" / "test").exists()
    assert cli.main(["make-tfrecords", str(images), str(tmp_path / "three")]) == 0
    assert sorted(os.listdir(tmp_path / "three" / "span-1" / "test")) == [
        "data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord"]
    assert "eval" in capsys.readouterr().out
