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
- :meth:`~ReactorHandoff.serve_until` lets the thread that waits for something (a
  blocking call's answer, an idle engine's next command) read its connections itself
  while it waits, the reactor no longer polling them meanwhile: what it waits for is
  handled where it is wanted, and nobody has to be woken to hand it over.

A reactor without an ``epoll`` poller (not Linux, another reactor installed by the
program) gets none of this: the calls fall back to ``callFromThread``, hand-overs happen
at once and waiting threads wait their own way, as before.
"""

from __future__ import annotations

import _signal
import _thread
import collections
import os
import select
import threading
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import main
from twisted.logger import Logger

__all__ = ["ReactorHandoff"]

_log = Logger()
_MAIN = threading.main_thread()
_CONNECTION_DONE = main.CONNECTION_DONE


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
        # The thread serving connections while it waits (serve_until), if any; the
        # thread other than the reactor's running reactor code now, if any; the
        # reactor's thread; the pipe that wakes the serving thread.
        self._server: int | None = None
        self._owner: int | None = None
        self._reactor_thread: int | None = None
        self._wake_pipe: tuple[int, int] | None = None
        #: A SIGINT handler that never raises in reactor code run by another thread,
        #: which then need not be held back (see trust_sigint_handler).
        self.trusted_sigint: Any = None

    def run(self) -> None:
        """Run the reactor (the reactor thread's target); returns when it stops."""
        reactor = self.reactor
        self.lock.acquire()
        self._reactor_thread = threading.get_ident()
        poller = getattr(reactor, "_poller", None)
        wrapped = poller is not None and callable(getattr(poller, "poll", None))
        try:
            if wrapped:
                reactor._poller = _UnlockedPoller(self, poller)
                self.active = True
            reactor.run(installSignalHandlers=False)
        finally:
            self.active = False
            self._reactor_thread = None
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
        with _Turn(self, locked=True):
            queued = self.reactor.threadCallQueue
            while queued:
                _run_logged(*queued.pop(0))
            fn(*args)

    def in_reactor_code(self) -> bool:
        """Whether this thread runs reactor code now (it is the reactor thread, or runs
        a call or a read in its stead), where waiting for the reactor would deadlock."""
        ident = threading.get_ident()
        return ident == self._owner or ident == self._reactor_thread

    def _end_turn(self, held: _HeldSigint | None) -> None:
        """End reactor code run outside the reactor thread (the lock is held)."""
        reactor = self.reactor
        try:
            self.run_hand_overs()
        finally:
            self._owner = None
            # The reactor thread computed how long to wait before this ran: wake it if
            # this scheduled a timed call or a call from a thread.
            wake = getattr(reactor, "_newTimedCalls", True) or reactor.threadCallQueue
            self.lock.release()
            if wake:
                reactor.wakeUp()
            if held is not None:
                held.restore()

    def serve_until(
        self,
        ready: Callable[[], bool],
        transports: Iterable[Any],
        first: Callable[[], Any] | None = None,
    ) -> bool:
        """Wait in this thread until ``ready()``, reading ``transports`` meanwhile.

        The thread that waits for an answer (a blocking call's caller, an idle engine's
        main thread) takes its connections out of the reactor's poll set and reads them
        itself, as reactor code (holding the lock), so the answer it waits for is
        handled where it is wanted, with no thread switch. ``ready()`` is checked as
        reactor code too, after each read; reactor code that makes it true elsewhere
        (in the reactor thread) must call :meth:`notify`. Returns True once ready;
        False at once if the handoff is not active or there is nothing to read (then the
        caller waits its own way; so does a second thread while one serves), or once
        every connection read here has ended. The
        connections go back to the reactor on return, Ctrl-C (``KeyboardInterrupt``
        from the wait) included.

        ``first``, if given, is reactor code to run before (what starts the call waited
        for, what answers the last command): as :meth:`call_from_thread` would, but in
        the same turn as the start of the wait. ``transports`` is iterated after it, in
        that turn: it may be lazy, and name only the connections the call now waits on.
        """
        if not self.active:
            if first is not None:
                self.reactor.callFromThread(first)
            return False
        reactor = self.reactor
        served: dict[int, Any] = {}
        removed: list[Any] = []
        locked = False
        if first is not None:
            locked = self.lock.acquire(False)
            if not locked:  # the reactor thread is busy: it runs ``first`` itself
                reactor.callFromThread(first)
                first = None
        try:
            with _Turn(self, locked):
                if first is not None:
                    queued = reactor.threadCallQueue
                    while queued:
                        _run_logged(*queued.pop(0))
                    first()
                self.run_hand_overs()
                if ready():
                    return True
                if self._server is not None:
                    return False  # another thread serves: one at a time (one wake pipe)
                reads = reactor.getReaders()
                for transport in transports:
                    if transport in reads and _open(transport):
                        served[transport.fileno()] = transport
                for transport in served.values():
                    reactor.removeReader(transport)
                    removed.append(transport)
                if not served:
                    return False
                wake_fd = self._wake_fds()[0]
                self._server = threading.get_ident()
            poller = select.poll()
            for fd in served:
                poller.register(fd, select.POLLIN)
            poller.register(wake_fd, select.POLLIN)
            while True:
                events = poller.poll()
                with _Turn(self):
                    for fd, event in events:
                        if fd == wake_fd:
                            _drain(fd)
                            continue
                        transport = served.get(fd)
                        if transport is None:
                            continue
                        if _open(transport):
                            self._read(transport, event)
                        if not _open(transport):
                            poller.unregister(fd)
                            del served[fd]
                    # Hand-overs first: one of them may be what ready() waits for.
                    self.run_hand_overs()
                    if ready():
                        return True
                    if not served:
                        return False
        finally:
            if removed:
                with self.lock:
                    self._server = None
                    for transport in removed:
                        if _open(transport):
                            reactor.addReader(transport)

    def _read(self, transport: Any, event: int) -> None:
        """Read ``transport`` as the reactor would after ``event`` from poll."""
        why: Any = None
        if event & (select.POLLHUP | select.POLLERR | select.POLLNVAL) and not (
            event & select.POLLIN
        ):
            why = _CONNECTION_DONE  # it was being read: a clean end, as the reactor says
        else:
            try:
                why = transport.doRead()
            except Exception as exc:
                why = exc
                _log.failure("while reading a connection")
        if why:
            self.reactor._disconnectSelectable(transport, why, True)

    def trust_sigint_handler(self, handler: Callable[..., Any] | None) -> None:
        """``handler``, while it is the ``SIGINT`` handler, never raises in reactor code
        run outside the reactor thread (the engine's, between jobs): such code then runs
        without holding the signal back (two ``sigaction`` calls saved per turn)."""
        self.trusted_sigint = handler

    def wake(self) -> None:
        """Wake the thread in :meth:`serve_until`, whatever this thread is doing (from a
        signal handler, for instance, which may run in the middle of reactor code)."""
        if self._server is not None:
            try:
                os.write(self._wake_fds()[1], b"x")
            except BlockingIOError:
                pass  # the pipe is full: the waiter has been woken already

    def notify(self) -> None:
        """Wake the thread in :meth:`serve_until`, if one waits and this is not that
        thread running reactor code (call after making its ``ready()`` true)."""
        server = self._server
        if server is None or self._owner == server == threading.get_ident():
            return
        try:
            os.write(self._wake_fds()[1], b"x")
        except BlockingIOError:
            pass  # the pipe is full: the waiter has been woken already

    def _wake_fds(self) -> tuple[int, int]:
        if self._wake_pipe is None:
            self._wake_pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        return self._wake_pipe

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


class _Turn:
    """Reactor code run by a thread other than the reactor's: the lock held, ``SIGINT``
    held back, and on the way out what :meth:`ReactorHandoff._end_turn` does."""

    __slots__ = ("_handoff", "_held", "_locked")

    def __init__(self, handoff: ReactorHandoff, locked: bool = False) -> None:
        self._handoff = handoff
        self._locked = locked  # the lock is held already
        self._held: _HeldSigint | None = None

    def __enter__(self) -> None:
        handoff = self._handoff
        if not self._locked:
            handoff.lock.acquire()
        self._held = _hold_sigint(handoff.trusted_sigint)
        handoff._owner = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        self._handoff._end_turn(self._held)


def _open(transport: Any) -> bool:
    """Whether ``transport`` is connected and not closing."""
    return bool(
        getattr(transport, "connected", False)
        and not getattr(transport, "disconnecting", False)
        and not getattr(transport, "disconnected", False)
    )


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


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


def _hold_sigint(trusted: Any = None) -> _HeldSigint | None:
    """In the main thread, hold back a Python ``SIGINT`` handler (see
    :meth:`ReactorHandoff.call_from_thread`); None elsewhere, with no such handler, or
    with the ``trusted`` one (see :meth:`ReactorHandoff.trust_sigint_handler`)."""
    if threading.current_thread() is not _MAIN:
        return None
    # _signal, not signal: the latter's wrappers turn each handler into an enum member
    # through a lookup that fails, about 30 us a call where this takes 2.
    handler = _signal.getsignal(_signal.SIGINT)
    if not callable(handler) or handler == trusted:
        return None
    held = _HeldSigint(handler)
    _signal.signal(_signal.SIGINT, held.record)
    return held
