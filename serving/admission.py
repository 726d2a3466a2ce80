"""Admission control for `graft serve`: how many validated requests run the model at once.

A request is admitted to run only when a run slot is free (`--max-concurrent-runs`) and the
charges of the requests already running plus its own stay within the server's budget
(`--max-pixels-in-flight`), so memory is bounded across concurrent requests, not only per
request. A request's charge is its decoded pixels (what the image decoders hold), but at least
`--pixels-per-element` per batch element (what the model's activations hold per element,
whatever the image size: about 9 MB for EfficientNet-Lite0 at 224x224, as much as 600 K
decoded pixels at Lite0's ~15 bytes per pixel). A request waits for admission at most
`--queue-timeout` seconds (and never past its own deadline, nor after its client cancelled);
otherwise it is refused with RESOURCE_EXHAUSTED. How many requests may wait at all is bounded
by gRPC itself (`maximum_concurrent_rpcs`, `--max-concurrent-requests`).

After a request that decoded many pixels, free heap memory is handed back to the system
(glibc `malloc_trim`), so one large image does not leave the server's RSS raised for good.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
import time
from typing import Callable

TRIM_AFTER_PIXELS = 2_000_000
_libc = None


M_ARENA_MAX = -8


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _libc = False
    return _libc


def release_free_memory() -> None:
    """glibc malloc_trim(0): return the free parts of the heap to the system (no-op
    elsewhere)."""
    if _glibc():
        _libc.malloc_trim(0)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas (as MALLOC_ARENA_MAX does), before the server's
    threads start: with one arena per thread, memory freed by one request stays reserved in
    its thread's arena (bench/abuse.py: about 180 MB less RSS after a flood of large
    messages). No-op where MALLOC_ARENA_MAX is already set, or without glibc."""
    import os
    if os.environ.get("MALLOC_ARENA_MAX") is None and _glibc():
        _libc.mallopt(M_ARENA_MAX, arenas)


class Refused(Exception):
    """Not admitted; `reason` is 'busy', 'cancelled' or 'deadline'."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Admission:
    """Run slots and a pixel budget shared by all requests of one server."""

    def __init__(self, max_running: int, max_pixels: int, queue_timeout: float,
                 pixels_per_element: int = 0):
        self.max_running = max(1, max_running)
        self.max_pixels = max(1, max_pixels)
        self.pixels_per_element = max(0, pixels_per_element)
        self.queue_timeout = queue_timeout
        self._running = 0
        self._pixels = 0
        self._cond = threading.Condition()

    def charge(self, pixels: int, batch: int) -> int:
        """What a request of `batch` elements decoding `pixels` pixels takes of the budget."""
        return max(pixels, batch * self.pixels_per_element)

    def _fits(self, pixels: int) -> bool:
        # A request alone may use the whole budget (its own size is limited per request).
        return self._running < self.max_running and (
            self._running == 0 or self._pixels + pixels <= self.max_pixels)

    @contextlib.contextmanager
    def slot(self, pixels: int, alive: Callable[[], bool] = lambda: True,
             time_remaining: Callable[[], float | None] = lambda: None):
        """Hold a run slot and `pixels` of the budget for the duration of the block."""
        start = time.monotonic()
        with self._cond:
            while not self._fits(pixels):
                remaining = time_remaining()
                if remaining is not None and remaining <= 0:
                    raise Refused("deadline", "the call's deadline passed while it waited "
                                              "to run")
                if not alive():
                    raise Refused("cancelled", "the call was cancelled while it waited to run")
                waited = time.monotonic() - start
                if waited >= self.queue_timeout:
                    raise Refused("busy", f"server busy: {self._running} requests running, "
                                          f"none finished within {self.queue_timeout:g} s "
                                          f"(--queue-timeout); retry later")
                step = min(0.05, self.queue_timeout - waited)
                if remaining is not None:
                    step = min(step, remaining)
                self._cond.wait(max(step, 0.001))
            self._running += 1
            self._pixels += pixels
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._pixels -= pixels
                self._cond.notify_all()
            if pixels >= TRIM_AFTER_PIXELS:
                release_free_memory()
