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

Small files must not cost large resources either. Every malformed or hostile file raises
:class:`TorchFormatError` (or :class:`UnsafeWeightsError`), never another exception type,
and no size read from the file is trusted before it is checked against the bytes present:

* a storage's element count must fit in the bytes the file really holds (the rest of a legacy
  file; a zip member's declared size, and the declared size must be backed by the zip's
  bytes: a stored member by its compressed size, a deflated one inflating at most
  ``MAX_INFLATE_RATIO`` times, so a small zip cannot inflate into gigabytes);
* a tensor may not have more elements than its storage (no stride-0 blow-up), views must lie
  inside their storage, and all tensors together may take at most ``MAX_OUTPUT_FACTOR`` x
  the storage bytes read (+16 MiB; overlapping views), all storages of a zip at most
  ``MAX_INFLATE_RATIO`` x its size (zip entries sharing bytes);
* the unpickler is the pure-Python one with a dict memo; memo indices must be dense (a PUT
  may only use an index up to the memo's size), dict/set keys must be scalars (no hashing of
  nested tuples), BUILD is only accepted on an OrderedDict (and its state dropped), and
  INST/OBJ/NEWOBJ/EXT opcodes are refused;
* nesting deeper than ``MAX_DEPTH`` containers and reference cycles are refused; objects
  shared through the memo are converted once (a DAG of shared lists costs linear time).
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import reprlib
import struct
import tarfile
import zipfile
from typing import Any

import numpy as np

__all__ = ["UnsafeWeightsError", "TorchFormatError", "load_state_dict", "load_object"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
MAX_DEPTH = 32  # nesting of lists/tuples/dicts; real state dicts and checkpoints use < 8
MAX_INFLATE_RATIO = 32  # a deflated zip member may inflate to at most 32x its stored bytes
MAX_OUTPUT_FACTOR = 4  # all tensors together: at most 4x the storage bytes (+ _OUTPUT_SLACK)
_OUTPUT_SLACK = 16 << 20
_SMALL_MEMBER = 1 << 20  # members this small may inflate freely (tiny pickles, byteorder)

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
_SCALAR_KEYS = (str, int, float, bool, bytes, type(None))

_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 2, 60, 60


class UnsafeWeightsError(pickle.UnpicklingError):
    """The file asks the unpickler for something a plain tensor state dict never needs."""


class TorchFormatError(ValueError):
    """The file is not a readable torch.save file (truncated, unknown layout, bad tensor,
    sizes beyond the bytes present, nesting too deep, reference cycles)."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


def _count(value: Any, what: str) -> int:
    """A non-negative int from the pickle (bools and floats are not counts)."""
    if type(value) is not int or value < 0:
        raise TorchFormatError(f"bad {what}: {_short.repr(value)}")
    return value


class _Storage:
    """A flat storage whose bytes may arrive after the pickle (legacy format)."""

    def __init__(self, storage_type: _StorageType, key: str, numel: int):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
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
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
            raise TorchFormatError("tensor size and stride must be tuples")
        if len(size) > 32 or len(stride) > 32:
            raise TorchFormatError(f"tensor with {len(size)} dimensions")
        self.offset = _count(offset, "tensor offset")
        self.size = tuple(_count(s, "tensor size") for s in size)
        self.stride = tuple(_count(s, "tensor stride") for s in stride)
        if len(self.size) != len(self.stride):
            raise TorchFormatError("tensor size and stride differ in length")
        n = math.prod(self.size)
        if n > storage.numel:  # e.g. stride 0 over a huge size: more elements than bytes
            raise TorchFormatError(
                f"tensor of {n} elements from a storage of {storage.numel} elements")
        self.storage = storage

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        size, stride, off = self.size, self.stride, self.offset
        if math.prod(size) == 0:
            out = np.zeros(size, dtype=flat.dtype)
        else:
            last = off + sum((d - 1) * st for d, st in zip(size, stride))
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


def _check_keys(keys) -> None:
    for k in keys:
        if type(k) not in _SCALAR_KEYS:
            raise TorchFormatError(f"dict or set key of type {type(k).__name__} (only "
                                   "strings and numbers are keys in a state dict)")


def _ordered_dict(*args):
    """``collections.OrderedDict`` as the pickle may call it: empty, or from scalar-keyed
    pairs (hashing an arbitrary pickled key could take exponential time)."""
    if not args:
        return collections.OrderedDict()
    if len(args) != 1 or not isinstance(args[0], (list, tuple)):
        raise TorchFormatError("OrderedDict rebuilt from unexpected arguments")
    pairs = args[0]
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise TorchFormatError("OrderedDict rebuilt from something that is not pairs")
    _check_keys(p[0] for p in pairs)
    return collections.OrderedDict(pairs)


_ALLOWED = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle._Unpickler):
    """Unpickler that resolves only tensor-state-dict globals and torch storage ids.

    Built on the pure-Python unpickler: its memo is a dict (the C one allocates an array as
    long as the largest memo index), and its opcodes can be checked one by one.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: str, storages: dict[str, _Storage], zip_layout: bool,
                 max_bytes: int):
        super().__init__(file)
        self._path = path
        self._storages = storages
        self._zip = zip_layout
        self._max_bytes = max_bytes  # no storage may hold more bytes than the file has

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeWeightsError(
                f"forbidden global '{module}.{name}' in {self._path}") from None

    # --- opcodes, checked -------------------------------------------------------------
    def _put(self, index: int) -> None:
        if index > len(self.memo):
            raise TorchFormatError(f"memo index {index} with only {len(self.memo)} entries "
                                   "(a pickler assigns memo indices in order)")
        self.memo[index] = self.stack[-1]

    def _load_put(self):
        self._put(_count(int(self.readline()[:-1]), "memo index"))

    def _load_binput(self):
        self._put(self.read(1)[0])

    def _load_long_binput(self):
        self._put(struct.unpack("<I", self.read(4))[0])

    def _load_setitem(self):
        _check_keys([self.stack[-2]])
        pickle._Unpickler.load_setitem(self)

    def _load_setitems(self):
        _check_keys(self.stack[0::2])  # the items since the MARK: key, value, key, ...
        pickle._Unpickler.load_setitems(self)

    def _load_dict(self):
        _check_keys(self.stack[0::2])
        pickle._Unpickler.load_dict(self)

    def _load_additems(self):  # set elements get hashed too
        _check_keys(self.stack)
        pickle._Unpickler.load_additems(self)

    def _load_frozenset(self):
        _check_keys(self.stack)
        pickle._Unpickler.load_frozenset(self)

    def _load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if type(inst) is not collections.OrderedDict:
            raise UnsafeWeightsError(f"BUILD on a {type(inst).__name__} in {self._path} "
                                     "(only an OrderedDict's attributes may be set)")
        if state is not None and not isinstance(state, (dict, tuple)):
            raise TorchFormatError("bad OrderedDict state")
        self.stack.pop()  # the state (torch's `_metadata`) is not needed: dropped

    def _refused(self):
        raise UnsafeWeightsError(f"pickle opcode not allowed in a state dict in {self._path}")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            kind = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
            raise UnsafeWeightsError(
                f"forbidden persistent id {_short.repr(kind)} in {self._path} (only tensor "
                "storages are allowed)")
        if self._zip:
            if len(pid) != 5:
                raise TorchFormatError(f"bad storage id in {self._path}: {_short.repr(pid)}")
            _, stype, key, _location, numel = pid
            view = None
        else:
            if len(pid) != 6:
                raise TorchFormatError(f"bad storage id in {self._path}: {_short.repr(pid)}")
            _, stype, key, _location, numel, view = pid
        if not isinstance(stype, _StorageType):
            raise TorchFormatError(f"bad storage type in {self._path}: {_short.repr(stype)}")
        if not isinstance(key, str):
            raise TorchFormatError(f"bad storage key in {self._path}: {_short.repr(key)}")
        numel = _count(numel, "storage size")
        if numel * stype.dtype.itemsize > self._max_bytes:
            raise TorchFormatError(
                f"{self._path}: storage {key!r} of {numel} elements needs "
                f"{numel * stype.dtype.itemsize} bytes, the file has {self._max_bytes}")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _Storage(stype, key, numel)
        elif root.storage_type is not stype or root.numel != numel:
            raise TorchFormatError(f"{self._path}: storage {key!r} declared twice differently")
        if view is None:
            return root
        if not isinstance(view, tuple) or len(view) != 3:
            raise TorchFormatError(f"bad storage view in {self._path}: {_short.repr(view)}")
        view_key, view_offset, view_size = view
        if not isinstance(view_key, str):
            raise TorchFormatError(f"bad storage view key in {self._path}")
        view_offset = _count(view_offset, "storage view offset")
        view_size = _count(view_size, "storage view size")
        if view_offset + view_size > numel:
            raise TorchFormatError(
                f"{self._path}: storage view [{view_offset}, {view_offset + view_size}) "
                f"outside its storage of {numel} elements")
        sub = _Storage(stype, view_key, view_size)
        sub.base, sub.view_offset = root, view_offset
        return sub



_D = _RestrictedUnpickler.dispatch
_D[pickle.PUT[0]] = _RestrictedUnpickler._load_put
_D[pickle.BINPUT[0]] = _RestrictedUnpickler._load_binput
_D[pickle.LONG_BINPUT[0]] = _RestrictedUnpickler._load_long_binput
_D[pickle.SETITEM[0]] = _RestrictedUnpickler._load_setitem
_D[pickle.SETITEMS[0]] = _RestrictedUnpickler._load_setitems
_D[pickle.DICT[0]] = _RestrictedUnpickler._load_dict
_D[pickle.ADDITEMS[0]] = _RestrictedUnpickler._load_additems
_D[pickle.FROZENSET[0]] = _RestrictedUnpickler._load_frozenset
_D[pickle.BUILD[0]] = _RestrictedUnpickler._load_build
for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2,
            pickle.EXT4):
    _D[_op[0]] = _RestrictedUnpickler._refused
del _D, _op


class _Materializer:
    """Turns lazy tensors into ndarrays: shared objects once, depth and total size bounded."""

    def __init__(self, path: str, budget: int):
        self.path = path
        self.budget = budget  # bytes all tensors together may still take
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()

    def __call__(self, obj, depth: int = 0):
        if isinstance(obj, _LazyTensor):
            if id(obj) not in self.done:
                need = math.prod(obj.size) * obj.storage.storage_type.dtype.itemsize
                if need > self.budget:
                    raise TorchFormatError(
                        f"{self.path}: tensors take more than {MAX_OUTPUT_FACTOR}x the bytes "
                        "of their storages (overlapping views of one storage?)")
                self.budget -= need
                self.done[id(obj)] = (obj, obj.materialize())
            return self.done[id(obj)][1]
        if not isinstance(obj, (dict, list, tuple)):
            return obj
        if id(obj) in self.done:
            return self.done[id(obj)][1]
        if id(obj) in self.active:
            raise TorchFormatError(f"{self.path}: reference cycle in the pickled object")
        if depth >= MAX_DEPTH:
            raise TorchFormatError(f"{self.path}: objects nested deeper than {MAX_DEPTH}")
        self.active.add(id(obj))
        if isinstance(obj, dict):
            out: Any = {k: self(v, depth + 1) for k, v in obj.items()}  # insertion order kept
        else:
            out = type(obj)(self(v, depth + 1) for v in obj)
        self.active.discard(id(obj))
        self.done[id(obj)] = (obj, out)  # keeps obj alive, so its id stays unique
        return out


def _unpickle(data, path, storages, zip_layout: bool, max_bytes: int) -> Any:
    return _RestrictedUnpickler(data, path, storages, zip_layout, max_bytes).load()


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, need: int, zip_size: int,
                 path: str) -> bytes:
    """``need`` bytes of a zip member, after checking its declared sizes against the zip."""
    if info.file_size < need:
        raise TorchFormatError(f"{path}: {info.filename} holds {info.file_size} bytes, "
                               f"{need} expected (truncated)")
    if info.compress_size > zip_size or info.header_offset + info.compress_size > zip_size:
        raise TorchFormatError(f"{path}: {info.filename} claims {info.compress_size} bytes, "
                               f"the zip has {zip_size}")
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size < need:
            raise TorchFormatError(f"{path}: {info.filename} is truncated")
    elif need > _SMALL_MEMBER and need > MAX_INFLATE_RATIO * info.compress_size:
        raise TorchFormatError(
            f"{path}: {info.filename} inflates {info.compress_size} bytes to {need} "
            f"(more than {MAX_INFLATE_RATIO}x: a zip bomb?)")
    with zf.open(info) as f:
        raw = f.read(need)
    if len(raw) != need:
        raise TorchFormatError(f"{path}: {info.filename} is truncated")
    return raw


def _load_zip(path: str) -> Any:
    zip_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchFormatError(f"{path}: zip without exactly one data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in infos:
            info = infos[prefix + "byteorder"]
            raw = _read_member(zf, info, min(info.file_size, 16), zip_size, path)
            byteorder = raw.decode("ascii", "replace").strip()
        storages: dict[str, _Storage] = {}
        pkl_info = infos[pkl[0]]
        raw = _read_member(zf, pkl_info, pkl_info.file_size, zip_size, path)
        max_bytes = max((i.file_size for n, i in infos.items()
                         if n.startswith(prefix + "data/")), default=0)
        obj = _unpickle(io.BytesIO(raw), path, storages, True, max_bytes)
        del raw
        # Members may share bytes (overlapping entries): bound the total read, too.
        left = MAX_INFLATE_RATIO * zip_size + _SMALL_MEMBER
        loaded = 0
        for key, st in storages.items():
            member = f"{prefix}data/{key}"
            if member not in infos:
                raise TorchFormatError(f"{path}: missing storage {member}")
            dtype = st.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
            need = st.numel * dtype.itemsize
            if need > left - loaded:
                raise TorchFormatError(f"{path}: storages add up to more than "
                                       f"{MAX_INFLATE_RATIO}x the zip's size")
            raw = _read_member(zf, infos[member], need, zip_size, path)
            loaded += need
            st.data = np.frombuffer(raw, dtype=dtype, count=st.numel).astype(
                dtype.newbyteorder("="), copy=False)
    return _Materializer(path, MAX_OUTPUT_FACTOR * loaded + _OUTPUT_SLACK)(obj)


def _load_legacy(path: str) -> Any:
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        data = f.read()  # the file's real size bounds every count below
    buf = io.BytesIO(data)

    def unpickle():
        return _unpickle(buf, path, storages, False, len(data))

    magic = unpickle()
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise TorchFormatError(f"{path}: not a torch.save file (bad magic number)")
    protocol = unpickle()
    if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
        raise TorchFormatError(
            f"{path}: unsupported legacy protocol {_short.repr(protocol)}")
    sys_info = unpickle()
    little = sys_info.get("little_endian", True) is not False \
        if isinstance(sys_info, dict) else True
    obj = unpickle()
    keys = unpickle()
    if not isinstance(keys, list):
        raise TorchFormatError(f"{path}: bad storage key list")
    order = "<" if little else ">"
    pos = buf.tell()
    for key in keys:
        st = storages.get(key) if isinstance(key, str) else None
        if st is None:
            raise TorchFormatError(f"{path}: unknown storage key {_short.repr(key)}")
        if pos + 8 > len(data):
            raise TorchFormatError(f"{path}: truncated before storage {key}")
        (numel,) = struct.unpack_from(order + "q", data, pos)
        pos += 8
        if numel < 0 or numel != st.numel:
            raise TorchFormatError(
                f"{path}: storage {key} holds {numel} elements, pickle says {st.numel}")
        dtype = st.storage_type.dtype.newbyteorder(order)
        nbytes = numel * dtype.itemsize
        if pos + nbytes > len(data):
            raise TorchFormatError(f"{path}: storage {key} is truncated")
        st.data = np.frombuffer(data, dtype=dtype, count=numel, offset=pos).astype(
            dtype.newbyteorder("="), copy=False)
        pos += nbytes
    return _Materializer(path, MAX_OUTPUT_FACTOR * pos + _OUTPUT_SLACK)(obj)


def _guarded(path: str, load):
    """Run ``load()``; any failure other than ours or running out of memory becomes a
    :class:`TorchFormatError` naming the file."""
    try:
        return load()
    except (UnsafeWeightsError, MemoryError):
        raise
    except TorchFormatError as e:
        if path in str(e):
            raise
        raise TorchFormatError(f"{path}: {e}") from None
    except RecursionError:
        raise TorchFormatError(f"{path}: objects nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - struct, zipfile, zlib, numpy, pickle internals
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise TorchFormatError(f"{path}: not a readable torch.save file "
                               f"({type(e).__name__}: {msg})") from None


def load_object(path: str | os.PathLike) -> Any:
    """Load a torch.save file into Python/NumPy objects (tensors become ndarrays).

    Raises :class:`UnsafeWeightsError` for pickle content beyond tensors and
    :class:`TorchFormatError` for every other malformed file (see the module doc)."""
    path = os.fspath(path)

    def load():
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        if tarfile.is_tarfile(path):
            raise TorchFormatError(
                f"{path}: pre-0.4 tar torch.save format is not supported; re-save it with a "
                "newer torch")
        return _load_legacy(path)

    return _guarded(path, load)


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
    return _guarded(os.fspath(path), lambda: {
        str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)})
