"""The controller's self-signed certificate and private key, and certificate fingerprints.

The fingerprint (SHA-256 of the certificate's DER encoding) is the controller's identity:
it goes into every key file, and the connecting side accepts the controller only if the
certificate it presents has it (:mod:`ipkernel.wire.tls` does the pinning).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ipkernel.paths import CERT_FILE, KEY_FILE, ensure_private_dir
from ipkernel.security.private_files import write_private_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

__all__ = ["CERT_NAME", "ControllerIdentity", "fingerprint_of", "self_signed"]

#: Subject common name and DNS subject-alternative name of the controller's certificate.
#: A synthetic name: nobody checks it against the dialled address (the fingerprint is the
#: identity), but it lets ``optionsForClientTLS(CERT_NAME, trustRoot=<the certificate>)``
#: verify the controller too.
CERT_NAME = "ipkernel-controller"

_CERT_VALIDITY = datetime.timedelta(days=3650)
# Back-dating the start of validity tolerates clocks on other hosts that are behind ours.
_CERT_BACKDATE = datetime.timedelta(days=1)


def fingerprint_of(certificate: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of ``certificate``'s DER encoding, 64 lowercase hex digits."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def self_signed(
    key: ec.EllipticCurvePrivateKey,
    name: str,
    usages: list[x509.ObjectIdentifier],
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A self-signed certificate for ``key``: subject and DNS subject-alternative name
    ``name``, not a CA, extended key usages ``usages``, valid from a day before ``now``
    (default: the current UTC time) for ten years."""
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CERT_BACKDATE)
        .not_valid_after(now + _CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class ControllerIdentity:
    """The controller's self-signed certificate and its private key.

    Build one with :meth:`generate` or :meth:`load`; keep it with :meth:`save`. The
    certificate's :attr:`fingerprint` goes into every key file;
    :func:`ipkernel.wire.tls.server_context` makes the TLS context of the controller's
    listening ports from it.
    """

    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes

    @classmethod
    def generate(cls, now: datetime.datetime | None = None) -> ControllerIdentity:
        """Return a new identity: an EC P-256 key and a self-signed certificate for it.

        Subject and subject-alternative name are :data:`CERT_NAME`; the certificate is
        valid from a day before ``now`` (default: the current UTC time) for ten years.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(self_signed(key, CERT_NAME, [ExtendedKeyUsageOID.SERVER_AUTH], now), key)

    @classmethod
    def load(cls, security_dir: str | os.PathLike[str]) -> ControllerIdentity:
        """Load the identity saved in ``security_dir`` by :meth:`save`.

        Raises ``FileNotFoundError`` if either file is missing, and ``ValueError`` if a file
        is not PEM of the right kind or the key does not belong to the certificate.
        """
        directory = Path(security_dir).expanduser().absolute()
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as e:
            raise ValueError(f"{cert_path}: not a PEM certificate ({e})") from None
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise ValueError(f"{key_path}: not an unencrypted PEM private key ({e})") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(
            der, spki
        ):
            raise ValueError(f"{key_path} is not the private key of {cert_path}")
        return cls(certificate, key)  # type: ignore[arg-type]

    def save(self, security_dir: str | os.PathLike[str]) -> None:
        """Write the certificate and the unencrypted private key to ``security_dir``.

        Both are PEM, mode 0600; the key is protected by its file mode only. The directory
        is created if needed and set to mode 0700. Raises ``OSError``.
        """
        directory = ensure_private_dir(security_dir)
        write_private_file(directory / CERT_FILE, self.certificate_pem)
        write_private_file(
            directory / KEY_FILE,
            self.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    @property
    def fingerprint(self) -> str:
        """The certificate's SHA-256 fingerprint, as written into key files."""
        return fingerprint_of(self.certificate)

    @property
    def certificate_pem(self) -> bytes:
        """The certificate in PEM form."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)
