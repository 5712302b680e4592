"""A MultiEngine client's direct links to engines (see :mod:`ipkernel.wire.direct`).

The client opens a link to an engine the first time a large payload is to go to it
over the network, or it asks that engine for something that may be large (``pull``,
``apply``): it makes its certificate (once per client), asks the controller to introduce
it (``introduce``, answered by the engine with its data listener's address and its
certificate fingerprint), and dials. A link that cannot be made within
:data:`CONNECT_TIMEOUT` (the engine's data port is unreachable: a firewall, NAT, the
engine takes none) is given up for :data:`RETRY_AFTER` seconds, and the data goes through
the controller meanwhile. Links close with the client's connection to the controller.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from ipkernel.security.peer_identity import PeerIdentity
from ipkernel.serialization import deserialize, deserialize_failure
from ipkernel.wire.direct import LinkBroker, dial_link
from ipkernel.wire.keepalive import DEFAULT_PEER_TIMEOUT
from ipkernel.wire.tls import client_context

__all__ = ["CONNECT_TIMEOUT", "RETRY_AFTER", "DirectLinks"]

#: Seconds to connect to an engine's data port (TCP and TLS) before using the relay.
CONNECT_TIMEOUT = 2.0

#: Seconds before a client tries again to link to an engine it could not link to.
RETRY_AFTER = 60.0

_log = Logger()


class DirectLinks:
    """The links of one MultiEngine client, by engine id.

    :param avatar: the client's logged-in avatar (introductions go through it).
    :param reactor: dials, and times the attempts.
    """

    def __init__(self, avatar: pb.RemoteReference, reactor: Any) -> None:
        self._avatar = avatar
        self._reactor = reactor
        self._identity: PeerIdentity | None = None
        self._context: ssl.SSLContext | None = None
        self._links: dict[int, LinkBroker] = {}
        self._opening: dict[int, Deferred] = {}
        self._given_up: dict[int, float] = {}
        self._digest = b""
        self.closed = False

    @property
    def digest(self) -> bytes:
        """This client's certificate digest (what ``options['direct']`` carries)."""
        self._identity_now()
        return self._digest

    @property
    def any_open(self) -> bool:
        """Whether this client has at least one link open."""
        return any(link.open for link in self._links.values())

    def link(self, engine_id: int) -> LinkBroker | None:
        """The open link to ``engine_id``, if any."""
        link = self._links.get(engine_id)
        return link if link is not None and link.open else None

    def open(self, ids: Iterable[int]) -> Deferred:
        """Fires with None once each of ``ids`` has a link or is known to have none for
        now (never fails; at once when nothing needs opening)."""
        if self.closed:
            return succeed(None)
        now = self._reactor.seconds()
        wanted = []
        for engine_id in dict.fromkeys(ids):
            if self.link(engine_id) is not None or now < self._given_up.get(engine_id, 0):
                continue
            if engine_id not in self._opening:
                wanted.append(engine_id)
        if wanted:
            self._introduce(wanted)
        waits = [self._opening[i] for i in dict.fromkeys(ids) if i in self._opening]
        if not waits:
            return succeed(None)
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def close(self) -> None:
        """Close every link; open no more."""
        self.closed = True
        links, self._links = self._links, {}
        for link in links.values():
            link.close()

    def _identity_now(self) -> PeerIdentity:
        if self._identity is None:
            self._identity = PeerIdentity.generate()
            self._digest = bytes.fromhex(self._identity.fingerprint)
        return self._identity

    def _introduce(self, ids: list[int]) -> None:
        pem = self._identity_now().certificate_pem
        for engine_id in ids:
            self._opening[engine_id] = Deferred()
        try:
            d = self._avatar.callRemote("call_each", ids, "introduce", [[pem]] * len(ids))
        except pb.DeadReferenceError:
            d = Deferred()
            d.errback(Failure(ConnectionError("the connection to the controller is closed")))
        d.addCallbacks(
            self._introduced, self._not_introduced, callbackArgs=(ids,), errbackArgs=(ids,)
        )
        # The TLS context showing this client's certificate (milliseconds to build), made
        # while the introduction is on its way, once for every link.
        if self._context is None:
            self._context = client_context(self._identity_now())

    def _introduced(self, pairs: list, ids: list[int]) -> None:
        answers = dict(pairs)
        for engine_id in ids:
            try:
                host, port, fingerprint = _address(answers.get(engine_id))
            except Exception as exc:
                self._give_up(engine_id, f"it was not introduced ({exc})")
                continue
            d = dial_link(
                self._reactor,
                self._identity_now(),
                host,
                port,
                fingerprint,
                CONNECT_TIMEOUT,
                DEFAULT_PEER_TIMEOUT,
                self._context,
            )
            d.addCallbacks(
                self._linked,
                lambda f, i=engine_id: self._give_up(i, f.getErrorMessage()),
                callbackArgs=(engine_id,),
            )

    def _not_introduced(self, failure: Failure, ids: list[int]) -> None:
        for engine_id in ids:
            self._give_up(engine_id, f"it was not introduced ({failure.getErrorMessage()})")

    def _linked(self, link: LinkBroker, engine_id: int) -> None:
        if self.closed:
            link.close()
        else:
            self._links[engine_id] = link
            self._given_up.pop(engine_id, None)
        self._done(engine_id)

    def _give_up(self, engine_id: int, why: str) -> None:
        self._given_up[engine_id] = self._reactor.seconds() + RETRY_AFTER
        _log.info(
            "no direct link to engine {id}: {why}; its large data goes through the "
            "controller (trying again in {retry:g} s)",
            id=engine_id,
            why=why,
            retry=RETRY_AFTER,
        )
        self._done(engine_id)

    def _done(self, engine_id: int) -> None:
        d = self._opening.pop(engine_id, None)
        if d is not None:
            d.callback(None)


def _address(outcome: object) -> tuple[str, int, str]:
    """``(host, port, fingerprint)`` from an ``introduce`` outcome; raises what went wrong."""
    if not isinstance(outcome, (list, tuple)) or len(outcome) != 2:
        raise ValueError("a malformed answer")
    status, value = outcome
    if status == "raised":
        raise deserialize_failure(value)
    if status != "ok":
        type_name, message = value
        raise ValueError(f"{type_name}: {message}")
    host, port, fingerprint = deserialize(value)
    if not (isinstance(host, str) and isinstance(port, int) and isinstance(fingerprint, str)):
        raise ValueError("a malformed address")
    return host, port, fingerprint
