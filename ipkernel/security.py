"""Certificates, fingerprints, key files, secrets and TLS options: ipkernel's security in one place.

The model (SPEC §2): the controller owns a self-signed certificate. Each key file is one
line, a capability URL::

    pb+tls://<fingerprint>@<host>:<port>/<secret>

where ``fingerprint`` is the SHA-256 of the certificate's DER encoding (64 lowercase hex
digits) and ``secret`` is a random URL-safe token of 256 bits, one per role (engine,
MultiEngine, Task). A client or engine accepts the controller only if the certificate it
presents has that fingerprint: no certificate authority, no host-name check, so one key
file works whatever address the controller is reached by. After the handshake the client
sends the secret, which the controller compares in constant time (:func:`check_secret`).

Public surface:

- :class:`KeyFile`, :func:`read_key_file`, :func:`write_key_file`: the key file format;
- :func:`new_secret`, :func:`check_secret`: role secrets;
- :class:`ControllerIdentity`: the certificate and private key, and the server's TLS options;
- :func:`client_tls_options` / :class:`PinnedClientTLS`: pyOpenSSL TLS options for the
  connecting side, pinned to a fingerprint, which report a mismatch as
  :class:`~ipkernel.errors.StaleKeyFile` (for Twisted's own TLS; ipkernel's connections
  use :mod:`ipkernel.wire.tls`, which pins the same way over Python's ``ssl``);
- :class:`ControllerKeys`, :func:`previous_ports`: everything the controller writes to its
  security directory, kept across restarts with ``--reuse-keys``.

Every file written here is mode 0600 in a directory of mode 0700.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ipkernel.errors import KeyFileNotFound, StaleKeyFile
from ipkernel.paths import (
    CERT_FILE,
    ENGINE_FURL,
    KEY_FILE,
    MEC_FURL,
    TC_FURL,
    ensure_private_dir,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
    from OpenSSL.crypto import X509
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    _VerifyCallback = Callable[[SSL.Connection, X509, int, int, int], bool]

__all__ = [
    "CERT_NAME",
    "SCHEME",
    "ControllerIdentity",
    "ControllerKeys",
    "KeyFile",
    "PinnedClientTLS",
    "check_secret",
    "client_tls_options",
    "fingerprint_of",
    "new_secret",
    "previous_ports",
    "read_key_file",
    "write_key_file",
]

_log = Logger()

#: The URL scheme of key files.
SCHEME = "pb+tls"
#: Subject common name and DNS subject-alternative name of the controller's certificate.
#: A synthetic name: nobody checks it against the dialled address (the fingerprint is the
#: identity), but it lets ``optionsForClientTLS(CERT_NAME, trustRoot=<the certificate>)``
#: verify the controller too.
CERT_NAME = "ipkernel-controller"

#: Minimum TLS version on both ends (SPEC §2).
_MIN_TLS = TLSVersion.TLSv1_2
_CERT_VALIDITY = datetime.timedelta(days=3650)
# Back-dating the start of validity tolerates clocks on other hosts that are behind ours.
_CERT_BACKDATE = datetime.timedelta(days=1)
_FILE_MODE = 0o600
_FINGERPRINT_RE = re.compile(r"[0-9a-f]{64}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]+")
# Host names and IPv4 addresses; IPv6 addresses are validated with ``ipaddress`` instead.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_URL_RE = re.compile(
    r"pb\+tls://(?P<fingerprint>[^@/]*)@"
    r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^/\[\]]*?))"
    r":(?P<port>[0-9]+)/(?P<secret>.*)",
    re.DOTALL,
)
_URL_FORM = "pb+tls://<fingerprint>@<host>:<port>/<secret>"


# --- fingerprints and key files ---------------------------------------------------------


def fingerprint_of(certificate: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of ``certificate``'s DER encoding, 64 lowercase hex digits."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def _preview(text: str) -> str:
    # Malformed key files may still hold a secret: show only enough to recognise the file.
    head = text[:24]
    return repr(head + "..." if len(text) > len(head) else head)


@dataclass(frozen=True)
class KeyFile:
    """The content of one key file: where the controller is, how to recognise it, what to send.

    ``fingerprint`` is the SHA-256 of the controller certificate's DER encoding (64 hex
    digits, stored lowercase); ``host`` a host name, IPv4 or IPv6 address (without
    brackets); ``port`` 1-65535; ``secret`` a non-empty URL-safe token. Construction raises
    ``ValueError`` when a field is not of that form, so every ``KeyFile`` round-trips
    through :meth:`to_url` and :meth:`parse`. ``repr()`` leaves the secret out.
    """

    fingerprint: str
    host: str
    port: int
    # Kept out of repr() so that logging a KeyFile does not leak the capability.
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        fingerprint = self.fingerprint.lower() if isinstance(self.fingerprint, str) else ""
        if not _FINGERPRINT_RE.fullmatch(fingerprint):
            raise ValueError("the fingerprint must be 64 hex digits (a SHA-256)")
        # Frozen dataclass: normalising a field needs object.__setattr__.
        object.__setattr__(self, "fingerprint", fingerprint)
        if not isinstance(self.host, str) or not self.host:
            raise ValueError("the host must be a non-empty string")
        if ":" in self.host:
            try:
                ipaddress.IPv6Address(self.host)
            except ValueError:
                raise ValueError(f"{self.host!r} is not a valid IPv6 address") from None
        elif not _HOSTNAME_RE.fullmatch(self.host):
            raise ValueError(f"{self.host!r} is not a valid host name or address")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("the port must be an integer")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"the port must be between 1 and 65535, not {self.port}")
        if not isinstance(self.secret, str) or not _SECRET_RE.fullmatch(self.secret):
            raise ValueError("the secret must be a non-empty URL-safe token")

    def to_url(self) -> str:
        """Return the key file's URL, ``pb+tls://<fingerprint>@<host>:<port>/<secret>``.

        An IPv6 host is written in brackets.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}://{self.fingerprint}@{host}:{self.port}/{self.secret}"

    @classmethod
    def parse(cls, url: str) -> KeyFile:
        """Parse a key file URL (surrounding white space is ignored) into a ``KeyFile``.

        Raises ``ValueError`` whose message starts with ``not an ipkernel key file:`` when
        ``url`` is not of the form ``pb+tls://<fingerprint>@<host>:<port>/<secret>``. The
        message never repeats the whole text, which may hold a secret.
        """
        text = url.strip() if isinstance(url, str) else ""
        match = _URL_RE.fullmatch(text)
        if match is None:
            raise ValueError(
                f"not an ipkernel key file: expected {_URL_FORM}, got {_preview(text)}"
            )
        if match["ipv6"] is not None:
            host = match["ipv6"]
            if ":" not in host:
                raise ValueError("not an ipkernel key file: only IPv6 addresses go in brackets")
        else:
            host = match["host"]
            if ":" in host:
                raise ValueError("not an ipkernel key file: an IPv6 address must be in brackets")
        try:
            return cls(match["fingerprint"], host, int(match["port"]), match["secret"])
        except ValueError as e:
            raise ValueError(f"not an ipkernel key file: {e}") from None


def read_key_file(path: str | os.PathLike[str]) -> KeyFile:
    """Read and parse the key file at ``path``.

    Raises :class:`~ipkernel.errors.KeyFileNotFound` when there is no such file (the message
    names the path and says how to start a controller), ``ValueError`` when the file is not
    a key file (the message names the path), and ``OSError`` for other failures to read it.
    """
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise KeyFileNotFound.for_path(path)
    try:
        return KeyFile.parse(text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from the first byte on.

    Readers see either the old content or the new, never a partial file; a file that
    already existed with a looser mode is replaced, not rewritten in place.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never follow a planted symlink or reuse someone else's file; 0600 at creation so
    # the secret is never readable by others, not even between open and chmod.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask can only remove bits; fchmod pins the mode whatever it is.
            os.fchmod(f.fileno(), _FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def write_key_file(path: str | os.PathLike[str], keyfile: KeyFile) -> None:
    """Write ``keyfile`` to ``path`` as one line, atomically, mode 0600.

    The parent directory is created if needed and set to mode 0700
    (:func:`~ipkernel.paths.ensure_private_dir`). Raises ``OSError`` on failure.
    """
    path = Path(path).expanduser().absolute()
    ensure_private_dir(path.parent)
    _write_private_file(path, (keyfile.to_url() + "\n").encode("ascii"))


# --- secrets ----------------------------------------------------------------------------


def new_secret() -> str:
    """Return a new random role secret: 256 bits as 43 URL-safe base64 characters."""
    return secrets.token_urlsafe(32)


def check_secret(given: object, expected: str) -> bool:
    """Return whether ``given`` (``str`` or ``bytes``, as received) equals ``expected``.

    The comparison takes the same time wherever the first difference is
    (``hmac.compare_digest``). Anything that is neither ``str`` nor ``bytes``, a string that
    cannot be encoded, and an empty ``expected`` (a role without a secret admits nobody)
    give ``False``; this function never raises.
    """
    if not isinstance(expected, str) or not expected:
        return False
    if isinstance(given, str):
        try:
            given_bytes = given.encode("utf-8")
        except UnicodeEncodeError:
            return False
    elif isinstance(given, bytes):
        given_bytes = given
    else:
        return False
    return hmac.compare_digest(given_bytes, expected.encode("utf-8"))


# --- the controller's certificate -------------------------------------------------------


@dataclass(frozen=True)
class ControllerIdentity:
    """The controller's self-signed certificate and its private key.

    Build one with :meth:`generate` or :meth:`load`; keep it with :meth:`save`. The
    certificate's :attr:`fingerprint` goes into every key file; :meth:`server_options`
    gives the TLS options for the controller's listening ports.
    """

    certificate: x509.Certificate
    private_key: CertificateIssuerPrivateKeyTypes

    @classmethod
    def generate(cls, now: datetime.datetime | None = None) -> ControllerIdentity:
        """Return a new identity: an EC P-256 key and a self-signed certificate for it.

        Subject and subject-alternative name are :data:`CERT_NAME`; the certificate is
        valid from a day before ``now`` (default: the current UTC time) for ten years.
        """
        if now is None:
            now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_NAME)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CERT_BACKDATE)
            .not_valid_after(now + _CERT_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(CERT_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

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
        _write_private_file(directory / CERT_FILE, self.certificate_pem)
        _write_private_file(
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

    def server_options(self) -> CertificateOptions:
        """Return TLS options for a listening port (``listenSSL``, ``TLSMemoryBIOFactory``).

        TLS 1.2 at least; no client certificate asked for (clients prove themselves with
        the secret). The key and certificate are handed over as ``cryptography`` objects,
        which pyOpenSSL takes without deprecation warnings.
        """
        return CertificateOptions(
            privateKey=self.private_key,  # type: ignore[arg-type]
            certificate=self.certificate,  # type: ignore[arg-type]
            raiseMinimumTo=_MIN_TLS,
        )


# --- the connecting side's TLS options --------------------------------------------------


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
        if not _FINGERPRINT_RE.fullmatch(normalized):
            raise ValueError("the fingerprint must be 64 hex digits (a SHA-256)")
        self.fingerprint: str = normalized
        self.mismatch_seen: bool = False
        self.presented_fingerprint: str | None = None
        # Twisted's CertificateOptions builds the context (ciphers, no compression, no
        # session tickets, minimum version); the pinning is added per connection below.
        self._options = CertificateOptions(raiseMinimumTo=_MIN_TLS)

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


# --- everything the controller writes ----------------------------------------------------


def _read_key_file_or_none(path: Path) -> KeyFile | None:
    try:
        return read_key_file(path)
    except (OSError, ValueError):
        return None


def previous_ports(security_dir: str | os.PathLike[str]) -> tuple[int | None, int | None]:
    """Return ``(engine_port, client_port)`` from the key files in ``security_dir``.

    The engine port comes from the engine key file, the client port from the MultiEngine
    key file (or the Task key file if that one is missing). A port is ``None`` when no
    readable key file names it. A controller restarted with ``--reuse-keys`` listens on
    these ports so that copied key files stay valid.
    """
    directory = Path(security_dir).expanduser().absolute()
    engine = _read_key_file_or_none(directory / ENGINE_FURL)
    client = _read_key_file_or_none(directory / MEC_FURL) or _read_key_file_or_none(
        directory / TC_FURL
    )
    return (engine.port if engine else None, client.port if client else None)


@dataclass(frozen=True)
class ControllerKeys:
    """The controller's identity and its three role secrets, tied to a security directory.

    The controller calls :meth:`create` at start, listens (on :func:`previous_ports` when
    reusing keys), gives ``identity.server_options()`` to its ports and the secrets to its
    gates, and then calls :meth:`write_key_files` with the address and the bound ports.
    """

    security_dir: Path
    identity: ControllerIdentity
    engine_secret: str
    mec_secret: str
    tc_secret: str

    @classmethod
    def create(cls, security_dir: str | os.PathLike[str], reuse: bool = False) -> ControllerKeys:
        """Load or make the keys for ``security_dir`` and save the certificate and key there.

        With ``reuse`` and a saved certificate and key, those are kept, and so is each
        role's secret whose old key file names this certificate; a role without one gets a
        new secret. Key files rewritten with the same host and ports are then byte-identical
        to the old ones. Without ``reuse``, or if the certificate or key file is missing,
        everything is new and the old key files are removed at once, so that nobody picks up
        a key file that no longer works before :meth:`write_key_files` replaces it.

        The directory is created if needed and set to mode 0700. Raises ``ValueError`` if
        ``reuse`` is asked for and the saved certificate or key cannot be used (the message
        names the file), and ``OSError`` on other file errors.
        """
        directory = ensure_private_dir(security_dir)
        identity: ControllerIdentity | None = None
        if reuse and (directory / CERT_FILE).exists() and (directory / KEY_FILE).exists():
            identity = ControllerIdentity.load(directory)
        if identity is None:
            identity = ControllerIdentity.generate()
            identity.save(directory)
            for name in (ENGINE_FURL, MEC_FURL, TC_FURL):
                try:
                    os.unlink(directory / name)
                except FileNotFoundError:
                    pass

        fingerprint = identity.fingerprint
        secrets_by_name = {}
        for name in (ENGINE_FURL, MEC_FURL, TC_FURL):
            old = _read_key_file_or_none(directory / name)
            # An old key file for another certificate is useless anyway; keep only its role.
            reusable = old is not None and old.fingerprint == fingerprint
            secrets_by_name[name] = old.secret if reusable else new_secret()
        return cls(
            directory,
            identity,
            secrets_by_name[ENGINE_FURL],
            secrets_by_name[MEC_FURL],
            secrets_by_name[TC_FURL],
        )

    def key_files(self, host: str, engine_port: int, client_port: int) -> dict[str, KeyFile]:
        """Return the three key files for ``host`` and the ports, by file name.

        ``ENGINE_FURL`` names ``engine_port``; ``MEC_FURL`` and ``TC_FURL`` name
        ``client_port``. Raises ``ValueError`` for an invalid host or port.
        """
        fingerprint = self.identity.fingerprint
        return {
            ENGINE_FURL: KeyFile(fingerprint, host, engine_port, self.engine_secret),
            MEC_FURL: KeyFile(fingerprint, host, client_port, self.mec_secret),
            TC_FURL: KeyFile(fingerprint, host, client_port, self.tc_secret),
        }

    def write_key_files(self, location_host: str, engine_port: int, client_port: int) -> None:
        """Write the three key files into the security directory (mode 0600, atomically).

        ``location_host`` is the address engines and clients dial (``--location``), not
        necessarily the one listened on. Raises ``ValueError`` for an invalid host or port
        (before anything is written) and ``OSError`` on write errors.
        """
        for name, keyfile in self.key_files(location_host, engine_port, client_port).items():
            write_key_file(self.security_dir / name, keyfile)
