"""The status page's server: a ``twisted.web`` site over the controller service, listening.

:class:`StatusPage` puts the pieces together (the status document, the live feed, the
page) and listens: plain HTTP on a loopback address, HTTPS with the controller's
certificate on any other. Requests are not logged: their URLs hold the access token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory

from ipkernel.adapters.web.access import is_loopback, new_token, page_url
from ipkernel.adapters.web.snapshot import StatusSnapshot
from ipkernel.controller.service import ControllerService

__all__ = ["StatusPage"]


class _SiteOnDemand(ServerFactory):
    """Listens for the site, which ``make`` builds at the first connection: ``twisted.web``
    (about 4 MiB and 60 ms of a controller's start) is loaded only once a page is asked
    for."""

    noisy = False

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._site: Any = None

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's name
        if self._site is None:
            self._site = self._make()
            self._site.doStart()
        return self._site.buildProtocol(addr)

    def stopFactory(self) -> None:  # noqa: N802 - Twisted's name
        if self._site is not None:
            self._site.doStop()


class StatusPage:
    """The status page of ``controller``: its site, its live feed and, once
    :meth:`listen` is called, its port and URL.

    ``clock`` (an ``IReactorTime``) runs the feed's timer, every ``interval`` seconds
    while a page is open. ``token`` is the access token (by default a new random one);
    ``now`` must be the controller's wall clock.
    """

    def __init__(
        self,
        controller: ControllerService,
        clock: IReactorTime,
        *,
        token: str | None = None,
        now: Callable[[], float] = time.time,
        interval: float = 1.0,
    ) -> None:
        self.token = token or new_token()
        self.snapshot = StatusSnapshot(controller, now=now)
        self._clock = clock
        self._interval = interval
        self._feed: Any = None
        self._site: Any = None
        self.port: Any = None
        self.url: str | None = None

    @property
    def feed(self) -> Any:
        """The live feed (:class:`~ipkernel.adapters.web.feed.StatusFeed`), made on first use."""
        if self._feed is None:
            from ipkernel.adapters.web.feed import StatusFeed

            self._feed = StatusFeed(self.snapshot.encode, self._clock, interval=self._interval)
        return self._feed

    @property
    def site(self) -> Any:
        """The ``twisted.web`` site, made on first use (the first connection, when
        listening)."""
        if self._site is None:
            from ipkernel.adapters.web.page import load_page
            from ipkernel.adapters.web.resources import StatusResource
            from ipkernel.adapters.web.site import StatusSite

            resource = StatusResource(self.token, load_page(), self.snapshot, self.feed)
            self._site = StatusSite(resource)
        return self._site

    def listen(
        self,
        reactor: Any,
        interface: str,
        port: int = 0,
        *,
        host: str | None = None,
        identity: Any = None,
        tls: bool | None = None,
    ) -> str:
        """Listen on ``interface``:``port`` (0: a free port); return the page's URL.

        ``tls`` (by default: unless ``interface`` is a loopback address) serves HTTPS
        with ``identity``'s certificate. ``host`` is the host name the URL gives (by
        default ``interface``). Raises ``ValueError`` for TLS without an identity and
        ``twisted.internet.error.CannotListenError`` if the port is taken.
        """
        if tls is None:
            tls = not is_loopback(interface)
        factory = _SiteOnDemand(lambda: self.site)
        if tls:
            if identity is None:
                raise ValueError("an HTTPS status page needs the controller's certificate")
            from ipkernel.adapters.web.site import tls_options

            self.port = reactor.listenSSL(port, factory, tls_options(identity), interface=interface)
        else:
            self.port = reactor.listenTCP(port, factory, interface=interface)
        self.url = page_url(tls, host or interface, self.port.getHost().port, self.token)
        return self.url

    def stop(self) -> Deferred:
        """End the open pages' feeds and stop listening; fires once the port is closed."""
        if self._feed is not None:
            self._feed.close()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)
