"""The engine's end of direct links: its data listener, introductions, and answers.

An engine takes direct links (:mod:`ipkernel.wire.direct`) on a *data listener*, a TLS
port of its own, started the first time a client is introduced to it. The controller
introduces a client by passing the engine its certificate (the ``introduce`` command,
sent by the client through the controller); the engine adds it to the certificates it
accepts and answers with where to dial it: the listener's address, port and certificate
fingerprint. The listener asks every connecting client for a certificate and accepts only
one it was introduced to (checked by OpenSSL against exactly those certificates, then by
fingerprint), so nobody who has not come through the controller can open a link.

Where it listens: ``interface`` (``ipengine --data-address``), else the address the
engine reaches its controller from (127.0.0.1 when the controller is on this host), on
the first free port of ``ports`` (``--data-ports``), else any free port; clients dial
``advertise`` (``--data-advertise``) when given, for an engine behind NAT or port
forwarding. A client that cannot reach it uses the controller's relay instead.

:class:`LinkedEnginePayloads` is the engine's payload policy with links: a large answer
goes over the link of the client that asked (the ``direct`` option carries its
certificate digest) when there is one.
"""

from __future__ import annotations

import collections
import hashlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from ipkernel import shm
from ipkernel.errors import TransferError
from ipkernel.frames import Serialized
from ipkernel.security.peer_identity import PeerIdentity, read_peer_certificate
from ipkernel.wire.direct import DirectPayload, LinkBroker, LinkServerFactory
from ipkernel.wire.direct_reference import link_between
from ipkernel.wire.keepalive import DEFAULT_PEER_TIMEOUT
from ipkernel.wire.tls import listen_tls, server_context
from ipkernel.wire.transfer import EnginePayloads, is_inline

__all__ = ["ANSWER_CREDIT_TIMEOUT", "DataListener", "LinkedEnginePayloads", "parse_ports"]

_log = Logger()

#: Seconds an answer sent over a link waits for the client to ask for its bytes before
#: it is given up (the engine's next command waits for it meanwhile).
ANSWER_CREDIT_TIMEOUT = 60.0

#: The most client certificates an engine accepts at once; the oldest go first.
MAX_INTRODUCED = 1024

_ANY = ("", "0.0.0.0", "::")


def parse_ports(text: str) -> tuple[int, int]:
    """``'PORT'`` or ``'LOW-HIGH'`` as ``(low, high)``.

    :raises ValueError: unless 1 <= low <= high <= 65535.
    """
    low, sep, high = text.partition("-")
    try:
        pair = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise ValueError(f"data ports must be PORT or LOW-HIGH, not {text!r}") from None
    if not 1 <= pair[0] <= pair[1] <= 65535:
        raise ValueError(f"data ports must be PORT or LOW-HIGH within 1-65535, not {text!r}")
    return pair


class DataListener:
    """An engine's data listener and the client certificates it accepts.

    :param reactor: listens, and runs the links.
    :param interface: the address to listen on; by default ``local_host()``.
    :param ports: ``(low, high)``, the ports to try in turn; by default any free port.
    :param advertise: the host clients dial; by default the address listened on (or,
        listening on every interface, ``local_host()``).
    :param local_host: the address of this host that the engine's controller connection
        goes out from, or None.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        interface: str | None = None,
        ports: tuple[int, int] | None = None,
        advertise: str | None = None,
        local_host: Callable[[], str | None] = lambda: None,
        peer_timeout: float = DEFAULT_PEER_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.interface = interface
        self.ports = ports
        self.advertise = advertise
        self._local_host = local_host
        self._peer_timeout = peer_timeout
        self.identity: PeerIdentity | None = None
        self._port: Any = None
        self._address: list | None = None
        # Introduced certificates (PEM) by fingerprint, oldest first.
        self._introduced: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    @property
    def local(self) -> bytes:
        """This engine's certificate digest (empty before the first introduction)."""
        return b"" if self.identity is None else bytes.fromhex(self.identity.fingerprint)

    def introduce(self, certificate: object) -> list:
        """Accept direct links from the client whose certificate (PEM) is ``certificate``;
        return ``[host, port, fingerprint]``, where and whom it dials.

        Starts listening the first time. Raises ``ValueError`` for a malformed
        certificate, :class:`~ipkernel.errors.TransferError` if no port can be had.
        """
        pem, fingerprint = read_peer_certificate(certificate)
        address = self._listen()
        introduced = self._introduced
        if fingerprint in introduced:
            introduced.move_to_end(fingerprint)
            return address
        introduced[fingerprint] = pem
        if len(introduced) > MAX_INTRODUCED:
            introduced.popitem(last=False)
            # OpenSSL's store cannot forget one certificate: start from a new context.
            self._port.context = self._context()
        else:
            self._port.context.load_verify_locations(cadata=pem.decode("ascii"))
        return address

    def link_to(self, client: bytes) -> LinkBroker | None:
        """The open link from the client with certificate digest ``client``, if any."""
        return None if self.identity is None else link_between(self.local, client)

    def stop(self) -> None:
        """Stop listening (the links open stay open)."""
        port, self._port = self._port, None
        self._address = None
        if port is not None:
            port.stopListening()

    def _accepts(self, der: bytes | None) -> bool:
        return der is not None and hashlib.sha256(der).hexdigest() in self._introduced

    def _context(self) -> ssl.SSLContext:
        assert self.identity is not None
        ctx = server_context(self.identity)
        # Only the certificates introduced (each self-signed: its own trust anchor).
        ctx.verify_mode = ssl.CERT_REQUIRED
        for pem in self._introduced.values():
            ctx.load_verify_locations(cadata=pem.decode("ascii"))
        return ctx

    def _listen(self) -> list:
        if self._address is not None:
            return self._address
        if self.identity is None:
            self.identity = PeerIdentity.generate()
        interface = self.interface or self._local_host() or "127.0.0.1"
        low, high = self.ports or (0, 0)
        factory = LinkServerFactory(self.local)
        error: CannotListenError | None = None
        for number in range(low, high + 1):
            try:
                self._port = listen_tls(
                    self.reactor,
                    number,
                    factory,
                    self._context(),
                    interface=interface,
                    peer_timeout=self._peer_timeout,
                    accept_peer=self._accepts,
                )
                break
            except CannotListenError as exc:
                error = exc
        else:
            raise TransferError(f"the engine cannot listen for direct links: {error}")
        host = self.advertise
        if host is None:
            host = interface if interface not in _ANY else self._local_host()
            host = host or socket.gethostname()
        port = self._port.getHost().port
        self._address = [host, port, self.identity.fingerprint]
        _log.info("listening for direct links on {where}:{port}", where=interface, port=port)
        return self._address


class LinkedEnginePayloads(EnginePayloads):
    """An engine's payload policy (:class:`~ipkernel.wire.transfer.EnginePayloads`) with
    direct links.

    A large answer to a request whose ``options`` carry ``direct`` (the requesting
    client's certificate digest) goes over that client's link when it is open and the
    answer is not going through shared memory; otherwise as the base policy sends it.
    With ``transport='relay'`` the engine takes no links at all.

    :param listener: the engine's :class:`DataListener`.
    :param clock: times out answers nobody asks for (see :data:`ANSWER_CREDIT_TIMEOUT`).
    """

    def __init__(
        self,
        keeper: shm.SegmentKeeper | None,
        engine_id: Callable[[], int],
        listener: DataListener,
        clock: Any,
        transport: str | None = None,
    ) -> None:
        super().__init__(keeper, engine_id, transport)
        self.listener = listener
        self._clock = clock

    def introduce(self, certificate: object) -> list:
        """See :meth:`DataListener.introduce`; refused with ``transport='relay'``."""
        if self.transport == "relay":
            raise TransferError("this engine takes no direct links (IPKERNEL_TRANSPORT=relay)")
        return self.listener.introduce(certificate)

    def pack(self, serialized: Serialized, options: dict | None, stable: bool = True) -> Any:
        link = self._link_for(serialized, options)
        if link is None:
            return super().pack(serialized, options, stable)
        if not stable:
            copies = [bytes(part) for part in serialized.parts]
            serialized = Serialized.from_parts(serialized.header, copies)
        return DirectPayload(serialized, link, self._clock, ANSWER_CREDIT_TIMEOUT)

    def _link_for(self, serialized: Serialized, options: dict | None) -> LinkBroker | None:
        if not options or self.transport == "relay" or is_inline(serialized):
            return None
        client = options.get("direct")
        if not isinstance(client, bytes) or self._reply_probe(options) is not None:
            return None
        return self.listener.link_to(client)
