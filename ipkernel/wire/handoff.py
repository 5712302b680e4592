"""Handing work between the reactor thread and another thread with fewer thread switches.

The blocking client and the engine each run the reactor in one thread and do their
other work (the user's program, the user's code) in another. Every hand-over used to
wake the other thread: ``callFromThread`` wakes the reactor, which runs the call when it
gets the CPU and the interpreter lock; a result handed back from inside a reactor
callback wakes a thread that then waits for the lock until the reactor thread goes back
to waiting for events. On a busy machine each such switch costs tens of microseconds,
several per call.

:class:`ReactorHandoff` runs the reactor (:meth:`~ReactorHandoff.run` is the reactor
thread's target) holding a lock that it lets go only while it waits for events
(around the wait of its ``epoll``). Then:

- :meth:`~ReactorHandoff.call_from_thread` from another thread runs the call *in that
  thread, at once*, when the reactor is waiting (it holds the lock meanwhile, so the
  reactor thread cannot run at the same time, and wakes the reactor afterwards only if
  the call scheduled something for it); when the reactor thread is busy it falls back
  to ``callFromThread``. The code it runs is reactor code as usual, never concurrently
  with the reactor thread.
- :meth:`~ReactorHandoff.before_block` defers a hand-over made from reactor code (waking
  a waiting thread) to the moment the reactor thread is about to wait for events, so the
  woken thread finds the interpreter lock free.

A reactor without an ``epoll`` poller (not Linux, another reactor installed by the
program) gets neither: the calls fall back to ``callFromThread`` and hand-overs happen
at once, as before.
"""

from __future__ import annotations

import _signal
import _thread
import collections
import threading
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

__all__ = ["ReactorHandoff"]

_log = Logger()
_MAIN = threading.main_thread()


class _UnlockedPoller:
    """The reactor's ``epoll``, with the handoff's lock let go around each wait."""

    def __init__(self, handoff: ReactorHandoff, poller: Any) -> None:
        self._handoff = handoff
        self.poller = poller
        self.register = poller.register
        self.modify = poller.modify
        self.unregister = poller.unregister
        self.close = poller.close
        self.fileno = poller.fileno

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list:
        handoff = self._handoff
        handoff.run_hand_overs()
        handoff.lock.release()
        try:
            return self.poller.poll(timeout, maxevents)
        finally:
            handoff.lock.acquire()


class ReactorHandoff:
    """The reactor of a thread of its own, and hand-overs to and from it (see the module).

    :param reactor: a reactor that is not running yet; :meth:`run` runs it.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        #: Held by the reactor thread except while it waits for events (or by a thread
        #: running a call in its stead).
        self.lock = _thread.allocate_lock()
        self._hand_overs: collections.deque[Callable[[], Any]] = collections.deque()
        #: True while the reactor runs with its poller wrapped.
        self.active = False

    def run(self) -> None:
        """Run the reactor (the reactor thread's target); returns when it stops."""
        reactor = self.reactor
        self.lock.acquire()
        poller = getattr(reactor, "_poller", None)
        wrapped = poller is not None and callable(getattr(poller, "poll", None))
        try:
            if wrapped:
                reactor._poller = _UnlockedPoller(self, poller)
                self.active = True
            reactor.run(installSignalHandlers=False)
        finally:
            self.active = False
            if wrapped:
                reactor._poller = poller
            self.run_hand_overs()
            self.lock.release()

    def call_from_thread(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` as reactor code: now, in this thread, if the reactor is
        waiting for events; else through ``callFromThread``.

        Calls given to ``callFromThread`` before run first, in order, so nothing is
        overtaken. In the main thread, Ctrl-C (the ``SIGINT`` handler) is held back
        until the reactor code has run: ``KeyboardInterrupt`` raised in the middle of it
        could leave a message half sent. Not from the reactor thread; ``fn`` must not
        wait for the reactor thread.
        """
        if not self.active or not self.lock.acquire(False):
            self.reactor.callFromThread(fn, *args)
            return
        reactor = self.reactor
        held = _hold_sigint()
        try:
            queued = reactor.threadCallQueue
            while queued:
                _run_logged(*queued.pop(0))
            fn(*args)
        finally:
            self.run_hand_overs()
            # The reactor thread computed how long to wait before this ran: wake it if
            # this scheduled a timed call or a call from a thread.
            wake = getattr(reactor, "_newTimedCalls", True) or reactor.threadCallQueue
            self.lock.release()
            if wake:
                reactor.wakeUp()
            if held is not None:
                held.restore()

    def before_block(self, hand_over: Callable[[], Any]) -> None:
        """Run ``hand_over()`` when the reactor next waits for events (at once if the
        handoff is not active). Call from reactor code; ``hand_over`` should only hand
        something to another thread (put in a queue, release a lock)."""
        if self.active:
            self._hand_overs.append(hand_over)
        else:
            hand_over()

    def run_hand_overs(self) -> None:
        """Run the hand-overs waiting for the reactor to block (reactor code only)."""
        hand_overs = self._hand_overs
        while hand_overs:
            hand_overs.popleft()()


def _run_logged(fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """Run a call given to ``callFromThread``; log what it raises, as the reactor does."""
    try:
        fn(*args, **kwargs)
    except Exception:
        _log.failure("while running a call from a thread")


class _HeldSigint:
    """``SIGINT`` taken by a recorder; :meth:`restore` puts the handler back and calls
    it if the signal came meanwhile."""

    __slots__ = ("frames", "handler")

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler
        self.frames: list[Any] = []

    def record(self, signum: int, frame: Any) -> None:
        self.frames.append(frame)

    def restore(self) -> None:
        _signal.signal(_signal.SIGINT, self.handler)
        if self.frames:
            self.handler(_signal.SIGINT, self.frames[0])


def _hold_sigint() -> _HeldSigint | None:
    """In the main thread, hold back a Python ``SIGINT`` handler (see
    :meth:`ReactorHandoff.call_from_thread`); None elsewhere, or with no such handler."""
    if threading.current_thread() is not _MAIN:
        return None
    # _signal, not signal: the latter's wrappers turn each handler into an enum member
    # through a lookup that fails, about 30 us a call where this takes 2.
    handler = _signal.getsignal(_signal.SIGINT)
    if not callable(handler):
        return None
    held = _HeldSigint(handler)
    _signal.signal(_signal.SIGINT, held.record)
    return held
