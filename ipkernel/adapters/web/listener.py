"""The status page's server: a ``twisted.web`` site over the controller service, listening.

:class:`StatusPage` puts the pieces together (the status document, the live feed, the
page) and listens: plain HTTP on a loopback address, HTTPS with the controller's
certificate on any other. Requests are not logged: their URLs hold the access token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from OpenSSL import crypto
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.web.server import Request, Site

from ipkernel.adapters.web.access import is_loopback, new_token, page_url
from ipkernel.adapters.web.feed import StatusFeed
from ipkernel.adapters.web.page import load_page
from ipkernel.adapters.web.resources import StatusResource
from ipkernel.adapters.web.snapshot import StatusSnapshot
from ipkernel.controller.service import ControllerService

__all__ = ["StatusPage", "tls_options"]


class StatusSite(Site):
    """A site that writes no access log (each URL carries the token)."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


def tls_options(identity: Any) -> CertificateOptions:
    """TLS 1.2+ server options with ``identity``'s certificate and key (a
    :class:`~ipkernel.security.ControllerIdentity`)."""
    return CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(identity.private_key),
        certificate=crypto.X509.from_cryptography(identity.certificate),
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


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
        self.feed = StatusFeed(self.snapshot.encode, clock, interval=interval)
        self.site = StatusSite(StatusResource(self.token, load_page(), self.snapshot, self.feed))
        self.port: Any = None
        self.url: str | None = None

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
        if tls:
            if identity is None:
                raise ValueError("an HTTPS status page needs the controller's certificate")
            self.port = reactor.listenSSL(
                port, self.site, tls_options(identity), interface=interface
            )
        else:
            self.port = reactor.listenTCP(port, self.site, interface=interface)
        self.url = page_url(tls, host or interface, self.port.getHost().port, self.token)
        return self.url

    def stop(self) -> Deferred:
        """End the open pages' feeds and stop listening; fires once the port is closed."""
        self.feed.close()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)
