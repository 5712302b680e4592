"""Twisted TLS options for tests: the controller's side from an identity, a pinned client.

ipkernel's own connections use :mod:`ipkernel.wire.tls` (Python's ``ssl``). Tests that
speak TLS through Twisted's pyOpenSSL machinery instead (``listenSSL``, ``connectSSL``,
``TLSMemoryBIOFactory``), to check the controller's certificate and the pinning rule
independently of that module or to send raw bytes to a real controller, use these.
"""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ipkernel.errors import StaleKeyFile
from ipkernel.security import ControllerIdentity, fingerprint_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from OpenSSL.crypto import X509
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    _VerifyCallback = Callable[[SSL.Connection, X509, int, int, int], bool]

#: Minimum TLS version on both ends (SPEC §2).
MIN_TLS = TLSVersion.TLSv1_2
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_log = Logger()


def server_options(identity: ControllerIdentity) -> CertificateOptions:
    """TLS options for a port listening as ``identity`` (``listenSSL``, ``TLSMemoryBIOFactory``).

    TLS 1.2 at least; no client certificate asked for (clients prove themselves with the
    secret). The key and certificate are handed over as ``cryptography`` objects, which
    pyOpenSSL takes without deprecation warnings.
    """
    return CertificateOptions(
        privateKey=identity.private_key,  # type: ignore[arg-type]
        certificate=identity.certificate,  # type: ignore[arg-type]
        raiseMinimumTo=MIN_TLS,
    )


@implementer(IOpenSSLClientConnectionCreator)
class PinnedClientTLS:
    """TLS client options that accept exactly one server certificate, named by its fingerprint.

    Use it wherever Twisted takes client TLS options: ``reactor.connectSSL``,
    ``wrapClientTLS``, ``TLSMemoryBIOFactory(options, True, factory)``. TLS 1.2 at least,
    Twisted's default ciphers. There is no certificate authority and no host-name check:
    the server's leaf certificate is accepted if and only if the SHA-256 of its DER encoding
    equals :attr:`fingerprint`, whatever else (self-signed, dates) OpenSSL finds wrong with it.

    **Telling a mismatch from other failures.** When the server presents another
    certificate the handshake fails and, for that connection:

    - the application protocol's ``connectionLost`` receives a ``Failure`` wrapping
      :class:`~ipkernel.errors.StaleKeyFile` ("the key file is stale: wrong certificate ...",
      with both fingerprints), where any other TLS failure gives an ``OpenSSL.SSL.Error``
      or a connection error;
    - :attr:`mismatch_seen` becomes ``True`` and :attr:`presented_fingerprint` holds the
      fingerprint the server showed. Both are reset each time a new connection starts, so
      they describe the latest connection made with these options; this is the check for
      callers that only see a factory's ``clientConnectionFailed``/``clientConnectionLost``
      reason (PB's ``PBClientFactory``), which is the TCP-level one. Use one instance per
      connection attempt if attempts may overlap.
    """

    def __init__(self, fingerprint: str) -> None:
        """Pin ``fingerprint`` (64 hex digits, any case); raise ``ValueError`` otherwise."""
        normalized = fingerprint.lower() if isinstance(fingerprint, str) else ""
        if not _FINGERPRINT.fullmatch(normalized):
            raise ValueError("the fingerprint must be 64 hex digits (a SHA-256)")
        self.fingerprint: str = normalized
        self.mismatch_seen: bool = False
        self.presented_fingerprint: str | None = None
        # Twisted's CertificateOptions builds the context (ciphers, no compression, no
        # session tickets, minimum version); the pinning is added per connection below.
        self._options = CertificateOptions(raiseMinimumTo=MIN_TLS)

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """Return a client ``SSL.Connection`` that verifies the server against the pin.

        Part of ``IOpenSSLClientConnectionCreator``; Twisted calls it once per connection.
        """
        self.mismatch_seen = False
        self.presented_fingerprint = None
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verifier(tlsProtocol)
        )
        connection.set_connect_state()
        return connection

    def _verifier(self, tlsProtocol: TLSMemoryBIOProtocol) -> _VerifyCallback:
        # Only the leaf (depth 0) decides: OpenSSL calls back for it whatever the chain, and
        # the errors it reports for a self-signed certificate are exactly what pinning
        # replaces. Certificates above the leaf are irrelevant to a pin, so they pass.
        protocol: TLSMemoryBIOProtocol | None = tlsProtocol

        def verify(
            connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int
        ) -> bool:
            nonlocal protocol
            try:
                if depth != 0:
                    return True
                presented = fingerprint_of(certificate.to_cryptography())
                if hmac.compare_digest(presented, self.fingerprint):
                    return True
                self.mismatch_seen = True
                self.presented_fingerprint = presented
                if protocol is not None:
                    protocol.failVerification(
                        Failure(
                            StaleKeyFile.for_file(
                                None,
                                f"wrong certificate (the controller presented {presented}, "
                                f"the key file expects {self.fingerprint})",
                            )
                        )
                    )
                    # One failure report per connection; also drops the reference cycle.
                    protocol = None
                return False
            except BaseException:
                # An exception escaping an OpenSSL callback is lost or printed to stderr:
                # log it and fail closed.
                _log.failure("while checking the controller's certificate")
                return False

        return verify


def client_tls_options(fingerprint: str) -> PinnedClientTLS:
    """Return client TLS options that accept only the certificate with ``fingerprint``.

    See :class:`PinnedClientTLS` for how a mismatch is reported. Raises ``ValueError`` if
    ``fingerprint`` is not 64 hex digits.
    """
    return PinnedClientTLS(fingerprint)
