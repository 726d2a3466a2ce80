"""Read PyTorch ``torch.save`` state dicts into NumPy arrays without importing torch.

Two on-disk formats are understood:

* the zip format (torch >= 1.6): ``<dir>/data.pkl`` plus raw storages in ``<dir>/data/<key>``;
* the legacy non-zip format (torch 0.4 - 1.5, and ``_use_new_zipfile_serialization=False``):
  four pickles in a row (magic number, protocol version, sys info, the object), a pickled
  list of storage keys, then each storage as an int64 element count followed by raw bytes.

The pre-0.4 tar format is detected and refused with a clear error.

Pickle is code, not data. The unpickler here resolves only the handful of globals a
tensor state dict needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``
and friends, ``torch.*Storage`` types mapped to NumPy dtypes); any other global raises
:class:`UnsafeWeightsError` before anything is called, e.g.
``UnsafeWeightsError: forbidden global 'posix.system' in /path/file.pth``.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import tarfile
import zipfile
from typing import Any

import numpy as np

__all__ = ["UnsafeWeightsError", "TorchFormatError", "load_state_dict", "load_object"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Storage class name -> NumPy dtype. 'bfloat16' is stored as uint16 and widened later.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("float32"),
    "DoubleStorage": np.dtype("float64"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": np.dtype("uint16"),
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
    "UntypedStorage": np.dtype("uint8"),
}


class UnsafeWeightsError(pickle.UnpicklingError):
    """The file asks the unpickler for something a plain tensor state dict never needs."""


class TorchFormatError(ValueError):
    """The file is not a readable torch.save file (truncated, unknown layout, bad tensor)."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """A flat storage whose bytes may arrive after the pickle (legacy format)."""

    def __init__(self, storage_type: _StorageType, key: str, numel: int):
        self.storage_type = storage_type
        self.key = key
        self.numel = int(numel)
        self.data: np.ndarray | None = None
        self.base: _Storage | None = None  # legacy views share a root storage
        self.view_offset = 0

    def array(self) -> np.ndarray:
        if self.base is not None:
            root = self.base.array()
            return root[self.view_offset:self.view_offset + self.numel]
        if self.data is None:
            raise TorchFormatError(f"storage {self.key!r} has no data")
        return self.data


class _LazyTensor:
    """Result of ``_rebuild_tensor_v2``; turned into an ndarray once storages are read."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        if not isinstance(storage, _Storage):
            raise TorchFormatError("tensor rebuilt from something that is not a storage")
        try:
            self.offset = int(offset)
            self.size = tuple(int(s) for s in size)
            self.stride = tuple(int(s) for s in stride)
        except (TypeError, ValueError) as e:
            raise TorchFormatError(f"bad tensor metadata: {e}") from None
        if len(self.size) != len(self.stride):
            raise TorchFormatError("tensor size and stride differ in length")
        self.storage = storage

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        size, stride, off = self.size, self.stride, self.offset
        if off < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise TorchFormatError("negative tensor offset, size or stride")
        if 0 in size:
            out = np.zeros(size, dtype=flat.dtype)
        else:
            last = off + sum((n - 1) * st for n, st in zip(size, stride))
            if last >= flat.size:
                raise TorchFormatError(
                    f"tensor runs past its storage ({last} >= {flat.size} elements)")
            view = np.lib.stride_tricks.as_strided(
                flat[off:], shape=size,
                strides=tuple(st * flat.itemsize for st in stride), writeable=False)
            out = np.array(view, copy=True, order="C")
        if self.storage.storage_type.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _LazyTensor):
        raise TorchFormatError("parameter rebuilt from something that is not a tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-state-dict globals and torch storage ids."""

    def __init__(self, file, path: str, storages: dict[str, _Storage], zip_layout: bool):
        super().__init__(file)
        self._path = path
        self._storages = storages
        self._zip = zip_layout

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeWeightsError(
                f"forbidden global '{module}.{name}' in {self._path}") from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise UnsafeWeightsError(
                f"forbidden persistent id {kind!r} in {self._path} (only tensor storages "
                "are allowed)")
        if self._zip:
            if len(pid) != 5:
                raise TorchFormatError(f"bad storage id in {self._path}: {pid!r}")
            _, stype, key, _location, numel = pid
            view = None
        else:
            if len(pid) != 6:
                raise TorchFormatError(f"bad storage id in {self._path}: {pid!r}")
            _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType):
            raise TorchFormatError(f"bad storage type in {self._path}: {stype!r}")
        key = str(key)
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(stype, key, numel)
        if view is None:
            return root
        try:
            view_key, view_offset, view_size = view
        except (TypeError, ValueError):
            raise TorchFormatError(f"bad storage view in {self._path}: {view!r}") from None
        sub = _Storage(stype, str(view_key), view_size)
        sub.base, sub.view_offset = root, int(view_offset)
        return sub


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}  # insertion order kept
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchFormatError(f"{path}: zip without exactly one data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        storages: dict[str, _Storage] = {}
        with zf.open(pkl[0]) as f:
            obj = _RestrictedUnpickler(io.BytesIO(f.read()), path, storages, True).load()
        for key, st in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise TorchFormatError(f"{path}: missing storage {member}")
            dtype = st.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
            raw = zf.read(member)
            if len(raw) < st.numel * dtype.itemsize:
                raise TorchFormatError(f"{path}: storage {key} is truncated")
            st.data = np.frombuffer(raw, dtype=dtype, count=st.numel).astype(
                dtype.newbyteorder("="))
    return _materialize(obj)


def _load_legacy(path: str) -> Any:
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        def unpickle():
            return _RestrictedUnpickler(f, path, storages, False).load()

        try:
            magic = unpickle()
            if magic != _LEGACY_MAGIC:
                raise TorchFormatError(f"{path}: not a torch.save file (bad magic number)")
            protocol = unpickle()
            if protocol != _LEGACY_PROTOCOL:
                raise TorchFormatError(f"{path}: unsupported legacy protocol {protocol!r}")
            sys_info = unpickle()
            little = bool(sys_info.get("little_endian", True)) \
                if isinstance(sys_info, dict) else True
            obj = unpickle()
            keys = unpickle()
        except (UnsafeWeightsError, TorchFormatError):
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as e:
            raise TorchFormatError(f"{path}: not a readable torch.save file ({e})") from None
        if not isinstance(keys, list):
            raise TorchFormatError(f"{path}: bad storage key list")
        order = "<" if little else ">"
        for key in keys:
            st = storages.get(str(key))
            if st is None:
                raise TorchFormatError(f"{path}: unknown storage key {key!r}")
            head = f.read(8)
            if len(head) != 8:
                raise TorchFormatError(f"{path}: truncated before storage {key}")
            (numel,) = struct.unpack(order + "q", head)
            if numel < 0 or numel != st.numel:
                raise TorchFormatError(
                    f"{path}: storage {key} holds {numel} elements, pickle says {st.numel}")
            dtype = st.storage_type.dtype.newbyteorder(order)
            raw = f.read(numel * dtype.itemsize)
            if len(raw) != numel * dtype.itemsize:
                raise TorchFormatError(f"{path}: storage {key} is truncated")
            st.data = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
    return _materialize(obj)


def load_object(path: str | os.PathLike) -> Any:
    """Load a torch.save file into Python/NumPy objects (tensors become ndarrays)."""
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    if tarfile.is_tarfile(path):
        raise TorchFormatError(
            f"{path}: pre-0.4 tar torch.save format is not supported; re-save it with a "
            "newer torch")
    return _load_legacy(path)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Return ``{parameter name: ndarray}`` from a torch state dict file.

    Accepts a bare state dict or a checkpoint dict holding one under ``'state_dict'``.
    Non-tensor entries are dropped. Raises :class:`UnsafeWeightsError` for any pickle
    content beyond tensors and :class:`TorchFormatError` for malformed files.
    """
    obj = load_object(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TorchFormatError(f"{os.fspath(path)}: top-level object is "
                               f"{type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
