"""Pages made present ahead of arriving data, by a helper thread.

A large part of a payload received over a stream is an anonymous mapping whose pages the
kernel provides when they are first written (:mod:`ipkernel.wire.buffers`). Providing them
costs about a third of what decrypting the data costs (about 0.3 ms per MB here); one
``MADV_POPULATE_WRITE`` call per few MiB is cheaper than a fault per page, and made by this
module's thread, with the GIL released, it runs beside the thread that decrypts. The
receiver asks for a part's pages as soon as the part exists (:func:`prefault`) and never
waits for them: data that overtakes the helper faults its pages in as usual. The helper
holds a part only while it works on it, so a part dropped meanwhile (an aborted stream)
is freed at once.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import sys
import threading
import weakref
from typing import Any

__all__ = ["STEP", "prefault"]

#: Pages are made present this many bytes at a time, in order.
STEP = 8 * 1024 * 1024

_MADV_POPULATE_WRITE = 23  # Linux 5.14


class _Helper:
    """The thread and its queue of ``(part, start, end)`` (a weak reference to the part)."""

    def __init__(self) -> None:
        # MADV_POPULATE_WRITE is Linux's; elsewhere pages come as they are written.
        self.works = sys.platform.startswith("linux")
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[weakref.ref, int, int]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._madvise: Any = None

    def request(self, part: mmap.mmap, start: int, end: int) -> None:
        with self._cond:
            self._queue.append((weakref.ref(part), start, end))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ipkernel-prefault", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                ref, start, end = self._queue.popleft()
            part = ref()
            if part is None or not self.works:
                continue
            step_end = min(end, start + STEP)
            self._populate(part, start, step_end)
            if step_end < end:
                with self._cond:
                    # The rest of this part before anything queued later: the data fills
                    # parts in order, and this one is being filled now.
                    self._queue.appendleft((ref, step_end, end))
            del part

    def _populate(self, part: mmap.mmap, start: int, end: int) -> None:
        if self._madvise is None:
            libc = ctypes.CDLL(None, use_errno=True)
            self._madvise = libc.madvise
            self._madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        try:
            # An exported view keeps the mapping in place while the call runs.
            anchor = ctypes.c_char.from_buffer(part)
        except (TypeError, ValueError, BufferError):
            return  # closed meanwhile
        try:
            start -= start % mmap.PAGESIZE
            if self._madvise(ctypes.addressof(anchor) + start, end - start, _MADV_POPULATE_WRITE):
                self.works = False  # an older kernel: pages come as they are written
        finally:
            del anchor

    def after_fork(self) -> None:
        # The thread did not survive the fork; the child starts its own if it needs one.
        self._cond = threading.Condition()
        self._queue = collections.deque()
        self._thread = None


_helper = _Helper()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_helper.after_fork)


def prefault(part: Any) -> None:
    """Have ``part``'s pages made present soon, in order, by the helper thread (a hint:
    nothing waits for it; buffers that are not anonymous mappings are left alone)."""
    if _helper.works and isinstance(part, mmap.mmap) and len(part):
        _helper.request(part, 0, len(part))
