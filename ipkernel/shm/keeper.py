"""Holding sent segments until their receivers have opened them: :class:`SegmentKeeper`.

The sender keeps its descriptor open until the receiver says it has opened the segment,
then closes it. If either process dies the kernel closes its descriptors and unmaps its
mappings, so a segment never outlives both ends; a keeper also watches the receiver's
process (a pid file descriptor in the reactor) and closes what it kept for it when that
process exits. The only part of :mod:`ipkernel.shm` that takes a reactor.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from ipkernel.shm.segment import Segment

__all__ = ["SegmentKeeper"]


class SegmentKeeper:
    """Holds the segments this process sent until their receivers have opened them.

    :meth:`keep` a segment with the receiver's pid; :meth:`release` it by token when the
    receiver says it has opened it. When the receiver's process exits first (killed, or it
    dropped the payload unopened), the keeper closes everything it kept for it: it watches
    the process with a pid file descriptor registered with ``reactor``. Thread-safe:
    engines make segments in their main thread and release them from the reactor's.
    """

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = reactor
        self._lock = threading.Lock()
        self._segments: dict[str, tuple[Segment, int]] = {}
        self._watchers: dict[int, _ProcessWatcher] = {}

    def keep(self, segment: Segment, reader_pid: int) -> None:
        """Hold ``segment`` until :meth:`release` or until process ``reader_pid`` exits."""
        with self._lock:
            self._segments[segment.token] = (segment, reader_pid)
            watched = reader_pid in self._watchers
        if not watched and self._reactor is not None:
            self._reactor.callFromThread(self._watch, reader_pid)

    def release(self, tokens: Sequence[str]) -> int:
        """Close the segments named by ``tokens``; return how many were held."""
        closed = 0
        for token in tokens:
            with self._lock:
                entry = self._segments.pop(token, None)
            if entry is not None:
                entry[0].close()
                closed += 1
        return closed

    def close_all(self) -> None:
        """Close every segment held and stop watching processes."""
        with self._lock:
            entries = list(self._segments.values())
            self._segments.clear()
            watchers = list(self._watchers.values())
            self._watchers.clear()
        for segment, _ in entries:
            segment.close()
        for watcher in watchers:
            watcher.stop()

    def __len__(self) -> int:
        with self._lock:
            return len(self._segments)

    def _watch(self, pid: int) -> None:
        with self._lock:
            if pid in self._watchers or not any(p == pid for _, p in self._segments.values()):
                return
        try:
            watcher = _ProcessWatcher(self._reactor, pid, self._process_exited)
        except OSError:
            # Gone already (or pidfd unsupported: then segments wait for release).
            if not hasattr(os, "pidfd_open"):
                return
            self._process_exited(pid)
            return
        with self._lock:
            self._watchers[pid] = watcher

    def _process_exited(self, pid: int) -> None:
        with self._lock:
            tokens = [t for t, (_, p) in self._segments.items() if p == pid]
            watcher = self._watchers.pop(pid, None)
        self.release(tokens)
        if watcher is not None:
            watcher.stop()


class _ProcessWatcher:
    """A reactor reader on a pid file descriptor: readable once the process has exited."""

    def __init__(self, reactor: Any, pid: int, on_exit: Any) -> None:
        self._reactor = reactor
        self._pid = pid
        self._on_exit = on_exit
        self._fd: int | None = os.pidfd_open(pid)
        reactor.addReader(self)

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        self._on_exit(self._pid)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self.stop()

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return f"process-watcher-{self._pid}"

    def stop(self) -> None:
        if self._fd is not None:
            self._reactor.removeReader(self)
            fd, self._fd = self._fd, None
            os.close(fd)
