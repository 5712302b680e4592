"""The live feed of the status page: server-sent events, one status document a second.

Each open page holds one ``text/event-stream`` response (``/api/events``). While at least
one is open, a timer builds the status once per interval and writes the same bytes to
every page; when the last page goes, the timer stops, so a controller with no page open
does no work for it. A page that reads too slowly (its connection pauses us) misses
updates rather than piling them up: each event is the whole status, so the next one
makes up for those missed.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.server import Request
from zope.interface import implementer

__all__ = ["StatusFeed"]

#: How long (ms) a page's EventSource waits before reconnecting after a drop.
RETRY_MS = 2000


@implementer(IPushProducer)
class _Subscriber:
    """One open page: its response, and whether its connection can take more now."""

    def __init__(self, request: Request, feed: StatusFeed) -> None:
        self.request = request
        self.paused = False
        self._feed = feed

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        self.paused = False

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's name
        self._feed.drop(self)


class StatusFeed:
    """Status events to every subscribed page, every ``interval`` seconds while any is open.

    ``status`` builds the status document (JSON bytes, one line). ``clock`` (an
    ``IReactorTime``) runs the timer. At most ``limit`` pages are served at once.
    """

    def __init__(
        self,
        status: Callable[[], bytes],
        clock: IReactorTime,
        *,
        interval: float = 1.0,
        limit: int = 32,
    ) -> None:
        self._status = status
        self._clock = clock
        self.interval = interval
        self.limit = limit
        self._subscribers: dict[_Subscriber, None] = {}
        self._loop: LoopingCall | None = None

    @property
    def subscribers(self) -> int:
        """How many pages are subscribed."""
        return len(self._subscribers)

    @property
    def running(self) -> bool:
        """Whether the timer runs (it does exactly while a page is subscribed)."""
        return self._loop is not None

    def subscribe(self, request: Request) -> bool:
        """Make ``request`` an event stream and send it the status now and every interval.

        Returns False, touching nothing, when :attr:`limit` pages are subscribed already.
        The subscription ends when the request's connection is lost.
        """
        if len(self._subscribers) >= self.limit:
            return False
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        subscriber = _Subscriber(request, self)
        self._subscribers[subscriber] = None
        request.registerProducer(subscriber, True)
        request.notifyFinish().addBoth(lambda _: self.drop(subscriber))
        request.write(b"retry: %d\n" % RETRY_MS + self._event())
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=False)
        return True

    def drop(self, subscriber: _Subscriber) -> None:
        """Forget ``subscriber``; stop the timer if it was the last."""
        if subscriber not in self._subscribers:
            return
        del self._subscribers[subscriber]
        if not self._subscribers and self._loop is not None:
            loop, self._loop = self._loop, None
            loop.stop()

    def close(self) -> None:
        """End every subscription (their responses finish) and stop the timer."""
        for subscriber in list(self._subscribers):
            # Still subscribed, so still connected: a lost connection unsubscribes.
            self.drop(subscriber)
            subscriber.request.unregisterProducer()
            subscriber.request.finish()

    def _event(self) -> bytes:
        return b"data: " + self._status() + b"\n\n"

    def _tick(self) -> None:
        event = self._event()
        for subscriber in list(self._subscribers):
            if not subscriber.paused:
                subscriber.request.write(event)
