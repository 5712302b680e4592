"""The bridge between synchronous callers and the reactor, which runs in a daemon thread.

The synchronous clients are thin: their methods forward to the asynchronous client
through :func:`forward`, the one forwarding mechanism (the few they write themselves,
such as ``TaskClient.run``, call the asynchronous client's public methods through
:class:`ReactorBridge`, or directly where those are safe from any thread). A blocking
call starts its work as reactor code and waits for the answer; Ctrl-C while it
waits raises ``KeyboardInterrupt`` at once, cancels the call's Deferred (its late answer
is dropped) and leaves the client usable. A non-blocking call returns a
:class:`~ipkernel.client.results.PendingResult` over a ``concurrent.futures.Future``. The
forwarders of waits that may last take ``progress=`` and show a bar when they do
(:mod:`ipkernel.client.progress`, through :meth:`ReactorBridge.start`).

The reactor thread runs under a :class:`~ipkernel.wire.handoff.ReactorHandoff`: a
blocking call starts in the caller's own thread when the reactor is waiting for events
(no thread switch to start it), and its answer is handed back through one lock (a
:class:`_Waiter`) released when the reactor thread is about to wait again, so the
caller wakes to a free interpreter lock.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import functools
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from ipkernel.client.progress import waiting_call
from ipkernel.client.results import PendingResult
from ipkernel.errors import ClientUnusable
from ipkernel.wire.handoff import ReactorHandoff

_lock = threading.Lock()
_bridge: ReactorBridge | None = None


class ReactorBridge:
    """The reactor, running in a daemon thread of this process."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self._pid = os.getpid()
        self.handoff = ReactorHandoff(reactor)
        # The blocking clients' brokers, whose connections a waiting caller reads itself.
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.thread = threading.Thread(
            target=self.handoff.run,
            name="ipkernel-reactor",
            daemon=True,
        )
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        self.thread.start()
        if not started.wait(30):
            raise ClientUnusable("the Twisted reactor did not start")

    def check_usable(self) -> None:
        """Raise :class:`ClientUnusable` where a blocking call would hang or deadlock."""
        if os.getpid() != self._pid:
            raise ClientUnusable(
                "this client was created before os.fork(); the reactor thread does not exist "
                "in the child process: create clients after forking"
            )
        if threading.current_thread() is self.thread or self.handoff.in_reactor_code():
            raise ClientUnusable(
                "a blocking ipkernel call was made from reactor code (the reactor thread, or "
                "a callback run while another call waited), where it would deadlock; use the "
                "asynchronous client (ipkernel.client.AsyncMultiEngineClient)"
            )

    def serve(self, broker: Any) -> None:
        """Let callers waiting for an answer read ``broker``'s connection themselves,
        rather than be woken by the reactor thread."""
        self._connections.add(broker)

    def _transports(self) -> Iterator[Any]:
        """The connections a waiting caller reads: those that owe an answer. Lazy: read
        once the call has started, so that its own connection is among them; the
        others stay with the reactor (taking each out of its poll set and back costs
        two system calls per call)."""
        for broker in list(self._connections):
            if broker.transport is not None and broker.waitingForAnswers:
                yield broker.transport

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` in the reactor thread and wait for its (Deferred) result."""
        self.check_usable()
        waiter = _Waiter(self.handoff)
        try:
            result = waiter.run(fn, args, kwargs, self._transports)
        except KeyboardInterrupt:
            self.reactor.callFromThread(waiter.cancel)
            raise
        if isinstance(result, Failure):
            exc = result.value
            if isinstance(exc, Exception):
                # The frames of the reactor thread and Twisted's plumbing say nothing about
                # the user's error; the traceback starts at the user's call instead.
                raise exc.with_traceback(None) from exc.__cause__
            result.raiseException()
        return result

    def submit(
        self, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        """Start ``fn`` in the reactor thread; return a Future of its result at once."""
        self.check_usable()
        future: concurrent.futures.Future = concurrent.futures.Future()

        def start() -> None:
            d = maybeDeferred(fn, *args, **kwargs)
            d.addCallbacks(future.set_result, lambda f: future.set_exception(f.value))

        self.reactor.callFromThread(start)
        return future

    def start(
        self, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[concurrent.futures.Future, Callable[[], None]]:
        """Start ``fn`` in the reactor thread, for a caller that waits its own way
        (:mod:`ipkernel.client.progress`): a Future of its result, and a function that
        cancels the call's Deferred, as Ctrl-C in :meth:`call` does."""
        self.check_usable()
        future: concurrent.futures.Future = concurrent.futures.Future()
        started: list[Deferred] = []

        def begin() -> None:
            d = maybeDeferred(fn, *args, **kwargs)
            started.append(d)
            d.addCallbacks(future.set_result, lambda f: future.set_exception(f.value))

        def cancel() -> None:
            self.reactor.callFromThread(lambda: started and started[0].cancel())

        self.reactor.callFromThread(begin)
        return future, cancel


class _Waiter:
    """One blocking call: started as reactor code, waited for by the caller."""

    __slots__ = ("_deferred", "_finished", "_handoff", "_lock", "_result")

    def __init__(self, handoff: ReactorHandoff) -> None:
        self._handoff = handoff
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._result: Any = None
        self._finished = False
        self._deferred: Deferred | None = None

    def start(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        """Call ``fn`` (reactor code); its result, or its Deferred's, is the answer."""
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            self._done(Failure())
            return
        if isinstance(result, Deferred):
            self._deferred = result
            result.addBoth(self._done)
        else:
            self._done(result)

    def _done(self, result: Any) -> None:
        self._result = result
        self._finished = True
        self._handoff.before_block(self._release)

    def _release(self) -> None:
        self._lock.release()
        self._handoff.notify()

    def is_finished(self) -> bool:
        return self._finished

    def run(
        self,
        fn: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        transports: Callable[[], Iterable[Any]],
    ) -> Any:
        """Start the call and wait for its answer (a value or a Failure); Ctrl-C
        interrupts the wait.

        The call starts in this thread when the reactor waits for events, and while it
        waits this thread reads ``transports()`` itself when it can (see
        :meth:`ReactorHandoff.serve_until`), so an answer arriving there is handled here.
        """
        start = functools.partial(self.start, fn, args, kwargs)
        if not self._handoff.serve_until(self.is_finished, transports(), start):
            self._lock.acquire()
        return self._result

    def cancel(self) -> None:
        """Cancel the call's Deferred (reactor code): its late answer is dropped."""
        if self._deferred is not None:
            self._deferred.cancel()


def get_bridge() -> ReactorBridge:
    """The process's bridge, started on first use."""
    global _bridge
    with _lock:
        if _bridge is None or not _bridge.thread.is_alive():
            _bridge = ReactorBridge()
        return _bridge


def forward(
    name: str, *, targeted: bool = False, blockable: bool = False, wait: bool = False
) -> Callable[..., Any]:
    """A synchronous method that forwards to the asynchronous client's method ``name``.

    With ``targeted`` the method takes a ``targets=`` keyword whose default is the
    instance's ``targets`` attribute. With ``blockable`` (implied by ``targeted``) it takes
    a ``block=`` keyword whose default is the instance's ``block`` attribute, and a
    non-blocking call returns a :class:`PendingResult`. Otherwise the call always blocks.
    With ``wait`` it also takes ``progress=`` (default true): a blocking call that lasts
    shows a bar (:mod:`ipkernel.client.progress`).
    """
    blockable = blockable or targeted

    def method(self, *args: Any, **kwargs: Any) -> Any:
        target = getattr(self._async, name)
        call = self._bridge.call
        if wait:
            call = waiting_call(self._bridge, name, kwargs.pop("progress", True))
        if targeted and kwargs.get("targets") is None:
            kwargs["targets"] = self.targets
        block = kwargs.pop("block", None) if blockable else True
        if self.block if block is None else block:
            return call(target, *args, **kwargs)
        pending = PendingResult(self._bridge.submit(target, *args, **kwargs), self)
        self._pending.add(pending)
        return pending

    method.__name__ = name
    return method


def forwarded(
    async_cls: type,
    *,
    targeted: tuple[str, ...] = (),
    blockable: tuple[str, ...] = (),
    blocking: tuple[str, ...] = (),
    waits: tuple[str, ...] = (),
) -> Callable[[type], type]:
    """Class decorator: add forwarding methods with the asynchronous methods' docs.

    ``targeted`` names take ``targets=`` and ``block=``, ``blockable`` names ``block=``
    only, ``blocking`` names neither (they always block); those also named in ``waits``
    take ``progress=`` and show a bar when a blocking call lasts. See :func:`forward`.
    """

    def decorate(cls: type) -> type:
        for names, options in (
            (targeted, {"targeted": True}),
            (blockable, {"blockable": True}),
            (blocking, {}),
        ):
            for name in names:
                method = forward(name, wait=name in waits, **options)
                functools.update_wrapper(method, getattr(async_cls, name), updated=())
                setattr(cls, name, method)
        return cls

    return decorate
