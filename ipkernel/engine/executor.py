"""MainThreadExecutor: run the engine's queued commands in the process's main thread.

The reactor runs in a second thread and keeps answering the controller (properties,
interrupt, kill) while user code runs here. User code in the main thread gets what it
would get in a plain interpreter: signals, ``KeyboardInterrupt``, libraries that must be
called from the main thread.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_STOP = object()


class MainThreadExecutor:
    """Jobs go in from the reactor thread; :meth:`run` executes them in the main thread."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._busy = False
        self._interrupt_requested = False
        self._main_ident = threading.main_thread().ident

    def __call__(self, fn: Callable, *args: Any) -> Deferred:
        """Queue ``fn(*args)``; the Deferred fires (in the reactor thread) with its result."""
        d: Deferred = Deferred()
        self._jobs.put((fn, args, d))
        return d

    @property
    def busy(self) -> bool:
        """True while a job is running."""
        return self._busy

    def run(self) -> None:
        """Run jobs until :meth:`stop`. Call from the main thread."""
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                fn, args, d = job
                self._busy = True
                try:
                    result: Any = fn(*args)
                except BaseException:
                    result = Failure()
                finally:
                    self._busy = False
                    self._interrupt_requested = False
                if isinstance(result, Failure):
                    self._reactor.callFromThread(d.errback, result)
                else:
                    self._reactor.callFromThread(d.callback, result)
        finally:
            signal.signal(signal.SIGINT, previous)

    def stop(self) -> None:
        """Make :meth:`run` return once the current job (if any) is done."""
        self._jobs.put(_STOP)

    def interrupt(self) -> None:
        """Raise ``KeyboardInterrupt`` in the running job, if there is one."""
        if self._busy:
            self._interrupt_requested = True
            signal.pthread_kill(self._main_ident, signal.SIGINT)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._busy:
            raise KeyboardInterrupt
        # Ctrl-C on an idle engine run from a terminal: stop it.
        self.stop()
