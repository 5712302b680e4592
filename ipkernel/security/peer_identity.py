"""The throwaway certificates of direct data links between a client and an engine.

A large payload between a MultiEngine client and an engine may travel over a *direct
link*, a TLS connection between the two (see :mod:`ipkernel.wire.direct`). Each end
proves itself with a :class:`PeerIdentity`: an EC P-256 key and a self-signed
certificate made when the process first needs one, kept in memory only, never written
anywhere. The controller introduces the two ends (the client's certificate to the engine,
the engine's fingerprint to the client), and each end accepts only the certificate it was
introduced to. :func:`read_peer_certificate` checks a certificate received in an
introduction.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ipkernel.security.certificates import fingerprint_of, self_signed

__all__ = ["PEER_CERT_NAME", "PeerIdentity", "read_peer_certificate"]

#: Subject name of every peer certificate (nobody checks names: fingerprints are pinned).
PEER_CERT_NAME = "ipkernel-peer"

# A PEM certificate of an EC P-256 key is about 600 bytes; anything much larger is not one.
_MAX_PEM = 8192


@dataclass(frozen=True)
class PeerIdentity:
    """A certificate and its private key, for either end of a direct link.

    The certificate allows both TLS roles (server and client authentication): the engine
    listens with it, the client presents it when it connects.
    """

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls) -> PeerIdentity:
        """A new identity: an EC P-256 key and a self-signed certificate for it."""
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return cls(self_signed(key, PEER_CERT_NAME, usages), key)

    @property
    def fingerprint(self) -> str:
        """The certificate's SHA-256 fingerprint, 64 lowercase hex digits."""
        return fingerprint_of(self.certificate)

    @property
    def certificate_pem(self) -> bytes:
        """The certificate in PEM form (what an introduction carries)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def read_peer_certificate(pem: object) -> tuple[bytes, str]:
    """Check that ``pem`` is one PEM certificate; return it and its fingerprint.

    :raises ValueError: if it is not (not bytes, too long, or not a certificate).
    """
    if not isinstance(pem, bytes) or len(pem) > _MAX_PEM:
        raise ValueError("a peer certificate must be PEM bytes of at most 8 KiB")
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate ({exc})") from None
    return certificate.public_bytes(serialization.Encoding.PEM), fingerprint_of(certificate)
