"""Reactor code run a moment later at the latest, asked for from any thread: :class:`LazyWake`.

``reactor.callFromThread`` wakes the reactor thread at once; on a busy machine that
thread then takes the CPU and the interpreter lock from the caller, tens of
microseconds. Work that may wait a moment, and that the caller's next step usually does
itself (tasks a blocking client queued go out with its next call), need not wake
anyone: :meth:`LazyWake.arm` sets a timer (a Linux ``timerfd`` in the reactor's poll
set, one system call that wakes nobody) which runs the function as reactor code once the
delay is over; whoever does the work first calls :meth:`LazyWake.disarm`. Where there is
no ``timerfd`` (another system) :meth:`~LazyWake.arm` is ``callFromThread``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["LazyWake"]

_log = Logger()

# Linux's values, on every architecture.
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load() -> Any:
    # PyDLL: these calls return at once, no need to let go of the interpreter lock (which
    # another thread might take). No argtypes: they make each call several times slower;
    # the arguments are small ints and ready-made pointers.
    try:
        libc = ctypes.PyDLL(None)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.restype = ctypes.c_int
    settime.restype = ctypes.c_int
    return create, settime


_TIMERFD = _load()


class LazyWake:
    """Run ``fn()`` as reactor code ``delay`` seconds after :meth:`arm`, unless
    :meth:`disarm` came first.

    :meth:`arm` and :meth:`disarm` may be called from any thread; the caller keeps them
    in order (under one lock of its own, say), for a disarm must not undo a later arm.
    Whoever does the work, ``fn`` included, then calls :meth:`disarm` (until then
    :meth:`arm` does nothing); ``fn`` may find its work done already (the timer raced a
    disarm) and must then do nothing. :meth:`close` (reactor code) takes the timer out
    of the reactor.
    """

    def __init__(self, reactor: Any, fn: Callable[[], Any], delay: float) -> None:
        self._reactor = reactor
        self._fn = fn
        self._fd = -1
        if _TIMERFD is not None and callable(getattr(reactor, "addReader", None)):
            self._fd = _TIMERFD[0](_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        self._armed = False
        self._timeout = _Itimerspec()
        self._timeout.it_value.tv_sec = int(delay)
        self._timeout.it_value.tv_nsec = max(1, int((delay - int(delay)) * 1e9))
        self._zero = _Itimerspec()
        self._set = ctypes.c_void_p(ctypes.addressof(self._timeout))
        self._unset = ctypes.c_void_p(ctypes.addressof(self._zero))
        if self._fd >= 0:
            reactor.addReader(self)

    def arm(self) -> None:
        """Have ``fn`` run after the delay (now through ``callFromThread`` without a
        timer); nothing if armed already."""
        if self._fd < 0:
            self._reactor.callFromThread(self._fn)
        elif not self._armed:
            self._armed = True
            _TIMERFD[1](self._fd, 0, self._set, None)

    def disarm(self) -> None:
        """The work is done: the timer need not fire."""
        if self._armed:
            self._armed = False
            _TIMERFD[1](self._fd, 0, self._unset, None)

    def close(self) -> None:
        """Take the timer out of the reactor and close it (reactor code)."""
        if self._fd >= 0:
            self._reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1
            self._armed = False

    # The reactor's side (IReadDescriptor).

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "LazyWake"

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return  # disarmed after it expired: nothing to do
        try:
            self._fn()
        except Exception:
            _log.failure("in a lazily woken call")

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self._fd = -1
