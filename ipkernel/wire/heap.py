"""Giving freed heap memory back once the transfers are over: :class:`IdleTrim`.

A relaying process keeps freed chunk buffers in its heap
(:func:`~ipkernel.wire.buffers.tune_allocator`), so that chunk after chunk reuses them
instead of faulting in new pages. Once the transfers are over that memory stays with the
process: a controller that had relayed a few hundred MB held about 30 MB more than when
idle. :class:`IdleTrim` looks every second: when no stream is open and the heap holds at
least :data:`TRIM_FROM` more freed bytes than after its last trim, it hands its free pages
back to the kernel (glibc's ``malloc_trim``; the freed bytes still count as free heap
afterwards, without pages behind them). Where glibc's ``mallinfo2`` or ``malloc_trim`` is
missing it does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from ipkernel.wire.stream_table import stream_stats

__all__ = ["TRIM_FROM", "IdleTrim", "free_heap_bytes", "trim_heap"]

#: Newly freed heap bytes worth giving back when idle.
TRIM_FROM = 4 * 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _load() -> Any:
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load()


def free_heap_bytes() -> int:
    """Bytes freed but kept in the heap (glibc's ``fordblks``); 0 where unknown."""
    return 0 if _libc is None else int(_libc.mallinfo2().fordblks)


def trim_heap() -> None:
    """Give the heap's free pages back to the kernel (``malloc_trim(0)``), where possible."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _streams_open() -> bool:
    stats = stream_stats()
    return bool(stats["incoming"] or stats["outgoing"])


class IdleTrim(Service):
    """Every ``interval`` seconds of ``clock``: if no stream is open (``busy()`` is false)
    and ``free_bytes()`` has grown by :data:`TRIM_FROM` or more since the last trim (or
    since the lowest it has been since), call ``trim()``."""

    def __init__(
        self,
        clock: Any,
        interval: float = 1.0,
        busy: Callable[[], bool] = _streams_open,
        free_bytes: Callable[[], int] = free_heap_bytes,
        trim: Callable[[], None] = trim_heap,
    ) -> None:
        self._busy = busy
        self._free_bytes = free_bytes
        self._trim = trim
        self._interval = interval
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        #: How many times the heap was trimmed.
        self.trims = 0
        self._mark = 0

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        if _libc is not None or self._trim is not trim_heap:
            self._loop.start(self._interval, now=False)

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        free = self._free_bytes()
        if free < self._mark:
            self._mark = free  # freed memory reused since: count from here
        elif free - self._mark >= TRIM_FROM and not self._busy():
            self._trim()
            self.trims += 1
            self._mark = self._free_bytes()
