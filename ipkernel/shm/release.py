"""Freeing segments' pages off the data's thread: a low-priority background releaser.

Whoever lets go of a segment last pays for freeing its pages (about 0.15 ms per MB).
:func:`release` hands large regions to unmap and large segments to close to a
background thread instead, so that the thread that moves the data does not wait.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["close_all", "release"]

# Regions and segments at least this large are unmapped and closed in a background
# thread: freeing their pages takes about 0.15 ms per MB.
_RELEASE_LATER = 4 * 2**20
# At most this much waits for the background thread (or one region, however large).
_RELEASE_BACKLOG = 1024 * 2**20


def close_all(fds: Sequence[int]) -> None:
    """Close ``fds``, ignoring errors."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Releaser:
    """A background thread that unmaps regions and closes descriptors.

    Freeing the pages of a large segment costs about 0.15 ms per MB, paid by the thread
    that drops the last reference. This thread pays it instead of the one that received
    or answered the data (an engine's main or reactor thread, a client's), and at the
    lowest priority (nice 19), so it uses CPU time the transfers leave idle rather than
    slowing the next one. What waits here is bounded (:data:`_RELEASE_BACKLOG` bytes,
    or one job): beyond, the caller releases at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0

    def submit(self, nbytes: int, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)``, which frees ``nbytes``, in the thread; False if the backlog
        is full or no thread can be started (then the caller runs it)."""
        if sys.is_finalizing():
            # A thread started now would never run, and starting it would wait forever
            # (a segment dropped at exit, by its __del__): free at once, or not at all.
            return False
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: a thread of its own
                pending: queue.SimpleQueue = queue.SimpleQueue()
                try:
                    threading.Thread(
                        target=self._run, args=(pending,), name="ipkernel-shm-release", daemon=True
                    ).start()
                except RuntimeError:  # interpreter shutting down
                    return False
                self._queue, self._pid, self._pending = pending, os.getpid(), 0
            if self._pending and self._pending + nbytes > _RELEASE_BACKLOG:
                return False
            self._pending += nbytes
            self._queue.put((nbytes, fn, args))
        return True

    def _run(self, pending: queue.SimpleQueue) -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            nbytes, fn, args = pending.get()
            with contextlib.suppress(Exception):
                fn(*args)
            with self._lock:
                if pending is self._queue:
                    self._pending -= nbytes


_releaser = _Releaser()


def release(nbytes: int, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)``, which frees ``nbytes``: in the background thread if that many are
    worth it (:data:`_RELEASE_LATER`) and it can take them, now otherwise."""
    if not (nbytes >= _RELEASE_LATER and _releaser.submit(nbytes, fn, *args)):
        fn(*args)
