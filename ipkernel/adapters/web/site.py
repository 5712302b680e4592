"""The status page's ``twisted.web`` site and HTTPS options.

:class:`~ipkernel.adapters.web.listener.StatusPage` listens with a small factory and
imports this module only when a page is first asked for (or, serving HTTPS, when it
starts listening), so a controller on loopback whose page nobody opens never loads
``twisted.web``.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.web.server import Request, Site

__all__ = ["StatusSite", "tls_options"]


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
