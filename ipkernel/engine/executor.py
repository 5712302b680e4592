"""MainThreadExecutor: run the engine's queued commands in the process's main thread.

The reactor runs in a second thread and keeps answering the controller (properties,
interrupt, kill) while user code runs here. With a *handoff* (see
:class:`ipkernel.wire.handoff.ReactorHandoff`, given by the engine's composition root) a
job reaches this thread when the reactor thread goes back to waiting for events, and its
answer is sent from this thread while the reactor waits, so that neither hand-over
costs a thread switch on the way. User code in the main thread gets what it
would get in a plain interpreter: signals, ``KeyboardInterrupt``, libraries that must be
called from the main thread.
"""

from __future__ import annotations

import functools
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_STOP = object()


class Handoff(Protocol):
    """Hand-overs between the reactor thread and this one (``ReactorHandoff``)."""

    def call_from_thread(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` as reactor code, from another thread."""

    def before_block(self, hand_over: Callable[[], Any]) -> None:
        """Run ``hand_over()`` when the reactor thread next waits for events."""

    def serve_until(self, ready: Callable[[], bool], transports: list[Any]) -> bool:
        """Wait until ``ready()``, reading ``transports`` in this thread meanwhile."""

    def notify(self) -> None:
        """Wake the thread in ``serve_until`` (its ``ready()`` may be true now)."""

    def wake(self) -> None:
        """Wake the thread in ``serve_until``, even from a signal handler."""

    def trust_sigint_handler(self, handler: Callable[..., Any] | None) -> None:
        """``handler`` never raises in reactor code run outside the reactor thread."""


class MainThreadExecutor:
    """Jobs go in from the reactor thread; :meth:`run` executes them in the main thread.

    ``reactor`` gives ``callFromThread``; ``handoff``, when given, replaces it (see the
    module docstring), and while no job waits, the main thread reads the connections
    ``connections()`` names itself, so that the next command is received where it runs.
    """

    def __init__(
        self,
        reactor: Any,
        handoff: Handoff | None = None,
        connections: Callable[[], list[Any]] = list,
    ) -> None:
        self._call_from_thread: Callable[..., None] = (
            reactor.callFromThread if handoff is None else handoff.call_from_thread
        )
        self._before_block: Callable[[Callable[[], Any]], None] = (
            _at_once if handoff is None else handoff.before_block
        )
        self._handoff = handoff
        self._connections = connections
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        # The number of the job running (None when idle); the job that the SIGINT sent by
        # interrupt() is for (one signal in flight at a time: a signal that arrives after
        # its job has ended must neither interrupt the next job nor stop the idle engine);
        # the last job interrupt() raised KeyboardInterrupt in (once per job: a second one
        # could land while the engine reports the first, and lose the job's answer).
        self._job: int | None = None
        self._jobs_run = 0
        self._interrupting: int | None = None
        self._interrupted: int | None = None
        self._lock = threading.Lock()
        self._main_ident = threading.main_thread().ident

    def __call__(self, fn: Callable, *args: Any) -> Deferred:
        """Queue ``fn(*args)``; the Deferred fires (in the reactor thread) with its result."""
        d: Deferred = Deferred()
        self._before_block(lambda: self._put((fn, args, d)))
        return d

    def _put(self, job: Any) -> None:
        self._jobs.put(job)
        if self._handoff is not None:
            self._handoff.notify()

    def _has_job(self) -> bool:
        return not self._jobs.empty()

    def _next_job(self, answer: Callable[[], Any] | None) -> Any:
        """Send ``answer`` (the last job's, as reactor code), then take the next job;
        while there is none, serve the connections (see the class)."""
        handoff = self._handoff
        if handoff is not None and self._jobs.empty():
            # One turn of reactor code for both: the answer, and the wait.
            handoff.serve_until(self._has_job, self._connections(), answer)
        elif answer is not None:
            self._call_from_thread(answer)
        return self._jobs.get()

    @property
    def busy(self) -> bool:
        """True while a job is running."""
        return self._job is not None

    def run(self) -> None:
        """Run jobs until :meth:`stop`. Call from the main thread."""
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        if self._handoff is not None:
            # Between jobs (when reactor code runs here) it raises nothing.
            self._handoff.trust_sigint_handler(self._on_sigint)
        answer: Callable[[], Any] | None = None
        try:
            while True:
                job = self._next_job(answer)
                answer = None
                if job is _STOP:
                    return
                fn, args, d = job
                self._jobs_run += 1
                signalled = False
                try:
                    try:
                        self._job = self._jobs_run
                        result: Any = fn(*args)
                    finally:
                        # First thing after the job: no interrupt is raised from here on.
                        with self._lock:
                            self._job = None
                            signalled = self._interrupting is not None
                except BaseException:
                    result = Failure()
                if isinstance(result, Failure):
                    answer = functools.partial(d.errback, result)
                else:
                    answer = functools.partial(d.callback, result)
                if signalled:
                    self._call_from_thread(answer)
                    answer = None
                    self._settle()
        finally:
            if answer is not None:
                self._call_from_thread(answer)
            if self._handoff is not None:
                self._handoff.trust_sigint_handler(None)
            signal.signal(signal.SIGINT, previous)

    def _settle(self) -> None:
        # The signal interrupt() sent during the job that has just ended reaches
        # _on_sigint (which drops it) as soon as this thread enters the kernel, unless a
        # handler of the job's own (a task batch's, the user's) took it; then it never
        # will, and the next interrupt() must not wait for it.
        deadline = time.monotonic() + 0.05
        while self._interrupting is not None and time.monotonic() < deadline:
            time.sleep(0.001)
        self._interrupting = None

    def stop(self) -> None:
        """Make :meth:`run` return once the current job (if any) is done."""
        self._jobs.put(_STOP)
        if self._handoff is not None:
            # Maybe from the SIGINT handler, in the middle of this thread's reactor code.
            self._handoff.wake()

    def interrupt(self) -> None:
        """Raise ``KeyboardInterrupt`` in the running job, if there is one.

        At most once per job: a job that has had one (and caught it) runs on. A job that
        ends before the signal is handled is not interrupted, nor is the next one.
        """
        with self._lock:
            job = self._job
            if job is None or job == self._interrupted or self._interrupting is not None:
                return
            self._interrupting = job
            signal.pthread_kill(self._main_ident, signal.SIGINT)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        wanted = self._interrupting
        if wanted is not None:  # sent by interrupt(), for job number `wanted`
            # Not in run()'s own steps around the job either: that would lose its answer.
            if wanted == self._job and (frame is None or frame.f_code is not _RUN_CODE):
                self._interrupted = wanted
                self._interrupting = None
                raise KeyboardInterrupt
            self._interrupting = None
            return
        if self._job is not None:
            raise KeyboardInterrupt
        # Ctrl-C on an idle engine run from a terminal: stop it.
        self.stop()


def _at_once(hand_over: Callable[[], Any]) -> None:
    hand_over()


_RUN_CODE = MainThreadExecutor.run.__code__
