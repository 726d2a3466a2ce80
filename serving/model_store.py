"""Versions of one model on disk, loaded and hot-swapped the way TF Serving does it.

Layout: BASE/<integer version>/saved_model.pb (+ variables/). A directory counts as a version
only if its name is all digits and it holds saved_model.pb, so the Pusher's temporary
(non-numeric) directories and half-written ones are never loaded. As with TF Serving's default
policy (`latest { num_versions: 1 }`, availability preserving), the highest `num_versions`
complete versions are served: a new version is loaded fully (and warmed up) in the poller
thread while the old one keeps answering, then swapped in atomically; the old one is unloaded
only after that. Requests hold a reference to the version they started on, so an unload never
breaks a request in flight. A version that fails to load is retried on the next polls (a few
times), and again whenever any file in its directory changes (size or mtime), so a directory
that was still being copied (`cp -r` rather than the Pusher's rename) is loaded once it is
complete; the previous version stays served meanwhile. The load error that GetModelStatus
reports names the problem without server paths; the server log has the full error.
"""
from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
import traceback
from typing import Callable

_VERSION_DIR = re.compile(r"[0-9]+")
_ABS_PATH = re.compile(r"(?<![\w.>])/[^\s'\"(),;:]+")
MAX_LOAD_ATTEMPTS = 3


def dir_fingerprint(path: str) -> tuple:
    """(relative path, size, mtime_ns) of every file under `path`, sorted: changes whenever a
    file is added, removed, grown or rewritten."""
    items = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            items.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(items)


def public_error(error: BaseException, path: str) -> str:
    """The first line of a load error, without the server's paths."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    text = text.replace(path, "<version dir>")
    return _ABS_PATH.sub("<path>", text)[:300]


def scan_versions(base_path: str) -> dict[int, str]:
    """{version: path} of the complete numeric version directories under base_path."""
    found: dict[int, str] = {}
    try:
        entries = list(os.scandir(base_path))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for entry in entries:
        if not _VERSION_DIR.fullmatch(entry.name) or not entry.is_dir():
            continue
        if not os.path.isfile(os.path.join(entry.path, "saved_model.pb")):
            continue
        version = int(entry.name)
        if version not in found or entry.name == str(version):
            found[version] = entry.path
    return found


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """dtype enum and shape (None = unknown rank, -1 = unknown dim) of a signature tensor."""
    dtype: int
    shape: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class Signature:
    """One callable signature of a loaded version."""
    name: str
    fn: Callable
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


@dataclasses.dataclass(frozen=True)
class ServedVersion:
    """A fully loaded version: the SavedModel object, its signatures and SignatureDefs."""
    version: int
    path: str
    saved_model: object
    signatures: dict[str, Signature]
    signature_defs: dict[str, object]   # name -> tensorflow.SignatureDef proto (all of them)


def _tensor_info(info) -> TensorInfo:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in
                                                              info.tensor_shape.dim)
    return TensorInfo(info.dtype, shape)


def load_version(path: str, version: int) -> ServedVersion:
    """Load one version directory; every signature becomes a concrete function to call."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    metas = [m for m in proto.meta_graphs if "serve" in m.meta_info_def.tags]
    if not metas:
        raise ValueError(f"{path}: no MetaGraph tagged 'serve'")
    signature_defs = dict(metas[0].signature_def)
    loaded = tf.saved_model.load(path, tags=["serve"])
    signatures = {}
    for name, fn in loaded.signatures.items():
        sig_def = signature_defs[name]
        signatures[name] = Signature(
            name, fn,
            {k: _tensor_info(v) for k, v in sig_def.inputs.items()},
            {k: _tensor_info(v) for k, v in sig_def.outputs.items()})
    return ServedVersion(version, path, loaded, signatures, signature_defs)


class ModelStore:
    """The served versions of one model, refreshed from its base path by `poll`."""

    def __init__(self, name: str, base_path: str, num_versions: int = 1,
                 warmup: Callable[[ServedVersion], None] | None = None,
                 log: Callable[[str], None] = print):
        self.name = name
        self.base_path = os.path.abspath(base_path)
        self.num_versions = max(1, num_versions)
        self._warmup = warmup
        self._log = log
        self._versions: dict[int, ServedVersion] = {}   # replaced, never mutated (readers
        self._states: dict[int, tuple[str, str]] = {}   # take it without a lock)
        self._failures: dict[int, tuple[int, tuple]] = {}   # version -> (attempts, content)
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- readers (request threads) -------------------------------------------------------
    def versions(self) -> dict[int, ServedVersion]:
        return self._versions

    def get(self, version: int | None = None) -> ServedVersion | None:
        """The requested version, or the highest loaded one; None if not loaded."""
        versions = self._versions
        if version is None:
            return versions[max(versions)] if versions else None
        return versions.get(version)

    def states(self) -> dict[int, tuple[str, str]]:
        """{version: (state, error message)}; state is a ModelVersionStatus.State name."""
        states = dict(self._states)
        for v in self._versions:
            states[v] = ("AVAILABLE", "")
        return states

    # -- poller ----------------------------------------------------------------------------
    def _should_try(self, version: int, path: str) -> bool:
        if version not in self._failures:
            return True
        attempts, content = self._failures[version]
        if dir_fingerprint(path) != content:
            self._failures.pop(version)
            return True
        return attempts < MAX_LOAD_ATTEMPTS

    def _load(self, version: int, path: str) -> bool:
        self._states[version] = ("LOADING", "")
        started = time.monotonic()
        content = dir_fingerprint(path)
        try:
            served = load_version(path, version)
            if self._warmup is not None:
                self._warmup(served)
        except Exception as e:  # noqa: BLE001 - keep serving what we have
            attempts = self._failures.get(version, (0, ()))[0] + 1
            self._failures[version] = (attempts, content)
            self._states[version] = ("END", f"version {version} failed to load: "
                                            f"{public_error(e, path)}")
            self._log(f"failed to load model {self.name} version {version} from {path} "
                      f"(attempt {attempts}): {type(e).__name__}: {e}")
            if os.environ.get("GRAFT_SERVE_DEBUG"):
                traceback.print_exc()
            return False
        self._failures.pop(version, None)
        new = dict(self._versions)
        new[version] = served
        self._versions = new                       # the atomic swap
        self._states.pop(version, None)
        self._log(f"loaded model {self.name} version {version} from {path} "
                  f"in {time.monotonic() - started:.1f}s")
        return True

    def poll(self) -> list[int]:
        """Load newly pushed versions, unload superseded ones; returns the versions loaded."""
        with self._poll_lock:
            present = scan_versions(self.base_path)
            aspired = sorted(present, reverse=True)[: self.num_versions]
            loaded = []
            for version in aspired:
                if version in self._versions or not self._should_try(version, present[version]):
                    continue
                if self._load(version, present[version]):
                    loaded.append(version)
            # Availability preserving: drop old versions only once an aspired one is serving.
            if any(v in self._versions for v in aspired):
                stale = [v for v in self._versions if v not in aspired]
                if stale:
                    self._versions = {v: s for v, s in self._versions.items() if v in aspired}
                    for v in stale:
                        self._states[v] = ("END", "")
                        self._log(f"unloaded model {self.name} version {v}")
            return loaded

    def start_polling(self, interval: float) -> None:
        def run():
            while not self._stop.wait(interval):
                try:
                    self.poll()
                except Exception as e:  # noqa: BLE001 - the poller must survive
                    self._log(f"error while polling {self.base_path}: {e}")

        self._thread = threading.Thread(target=run, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
