"""Tests for ipkernel.paths and ipkernel.security: key files, secrets, certificates, TLS pins.

The pinning tests use the Twisted TLS options of :mod:`tests.tlshelpers` with the
controller's certificate. TLS handshakes run in memory (``twisted.test.iosim``) except for
two small smoke tests on 127.0.0.1 that check the options work with
``listenSSL``/``connectSSL``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import stat
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ipkernel import paths
from ipkernel.errors import KeyFileNotFound, StaleKeyFile
from ipkernel.paths import (
    CERT_FILE,
    ENGINE_FURL,
    KEY_FILE,
    MEC_FURL,
    TC_FURL,
    ensure_private_dir,
)
from ipkernel.security import (
    CERT_NAME,
    ControllerIdentity,
    ControllerKeys,
    KeyFile,
    check_secret,
    new_secret,
    previous_ports,
    read_key_file,
    write_key_file,
)
from tests.tlshelpers import PinnedClientTLS, client_tls_options, server_options

FINGERPRINT = "0123456789abcdef" * 4
SECRET = "s3cr3t-TOKEN_abcdefghijklmnopqrstuvwxyz0123"
ALL_KEY_FILES = (ENGINE_FURL, MEC_FURL, TC_FURL)

# Generating a key takes a few milliseconds; the TLS tests share these.
IDENTITY = ControllerIdentity.generate()
OTHER_IDENTITY = ControllerIdentity.generate()


def mode_of(path: str | os.PathLike[str]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def set_env(case: SynchronousTestCase, name: str, value: str | None) -> None:
    """Set (or, for None, remove) an environment variable for the duration of a test."""
    old = os.environ.get(name)

    def restore() -> None:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old

    case.addCleanup(restore)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class PathsTests(SynchronousTestCase):
    """Where state lives and how the security directory is protected."""

    def test_ipkernel_dir_from_environment(self) -> None:
        """$IPKERNEL_DIR names the state directory; security/ and log/ are inside it."""
        base = Path(self.mktemp()).absolute()
        set_env(self, "IPKERNEL_DIR", str(base))
        self.assertEqual(paths.ipkernel_dir(), base)
        self.assertEqual(paths.security_dir(), base / "security")
        self.assertEqual(paths.log_dir(), base / "log")

    def test_ipkernel_dir_default(self) -> None:
        """Without $IPKERNEL_DIR (or with it empty) the state directory is ~/.ipkernel."""
        home = Path(self.mktemp()).absolute()
        set_env(self, "HOME", str(home))
        for value in (None, ""):
            set_env(self, "IPKERNEL_DIR", value)
            self.assertEqual(paths.ipkernel_dir(), home / ".ipkernel")

    def test_overrides(self) -> None:
        """--security-dir and --log-dir override the defaults, with ~ expanded."""
        set_env(self, "HOME", "/home/someone")
        self.assertEqual(paths.security_dir("/x/sec"), Path("/x/sec"))
        self.assertEqual(paths.log_dir("~/logs"), Path("/home/someone/logs"))

    def test_key_file_names(self) -> None:
        """The key file and certificate names are those of the spec."""
        self.assertEqual(
            (ENGINE_FURL, MEC_FURL, TC_FURL, CERT_FILE, KEY_FILE),
            (
                "ipcontroller-engine.furl",
                "ipcontroller-mec.furl",
                "ipcontroller-tc.furl",
                "ipcontroller-cert.pem",
                "ipcontroller-key.pem",
            ),
        )

    def test_ensure_private_dir_creates_0700(self) -> None:
        """A new private directory (and its missing parents) is created with mode 0700."""
        target = Path(self.mktemp()) / "a" / "security"
        result = ensure_private_dir(target)
        self.assertEqual(result, target.absolute())
        self.assertTrue(target.is_dir())
        self.assertEqual(mode_of(target), 0o700)

    def test_ensure_private_dir_tightens_existing(self) -> None:
        """An existing 0755 directory is chmodded to 0700, which os.makedirs would not do."""
        target = Path(self.mktemp())
        target.mkdir()
        os.chmod(target, 0o755)
        ensure_private_dir(target)
        self.assertEqual(mode_of(target), 0o700)


class KeyFileTests(SynchronousTestCase):
    """The key file URL, its parsing, and reading and writing key files."""

    def test_round_trip(self) -> None:
        """to_url and parse are inverses for host names and IPv4 addresses."""
        for host in ("127.0.0.1", "node-7.cluster.example.org", "localhost"):
            keyfile = KeyFile(FINGERPRINT, host, 10105, SECRET)
            url = keyfile.to_url()
            self.assertEqual(url, f"pb+tls://{FINGERPRINT}@{host}:10105/{SECRET}")
            self.assertEqual(KeyFile.parse(url), keyfile)

    def test_round_trip_ipv6(self) -> None:
        """An IPv6 host is written in brackets and read back without them."""
        for host in ("::1", "fe80::1ff:fe23:4567:890a", "2001:db8::8:800:200c:417a"):
            keyfile = KeyFile(FINGERPRINT, host, 65535, SECRET)
            url = keyfile.to_url()
            self.assertIn(f"@[{host}]:65535/", url)
            self.assertEqual(KeyFile.parse(url), keyfile)

    def test_repr_hides_secret(self) -> None:
        """repr() of a KeyFile, as a log line might show it, does not contain the secret."""
        keyfile = KeyFile(FINGERPRINT, "h", 1, SECRET)
        self.assertNotIn(SECRET, repr(keyfile))
        self.assertIn(FINGERPRINT, repr(keyfile))

    def test_parse_ignores_surrounding_white_space(self) -> None:
        """The trailing newline of a key file (and other surrounding space) is ignored."""
        url = KeyFile(FINGERPRINT, "h", 1, SECRET).to_url()
        self.assertEqual(KeyFile.parse(f"  {url}\n"), KeyFile.parse(url))

    def test_fingerprint_normalised_to_lowercase(self) -> None:
        """An upper-case fingerprint is accepted and stored lowercase."""
        keyfile = KeyFile.parse(f"pb+tls://{FINGERPRINT.upper()}@h:1/{SECRET}")
        self.assertEqual(keyfile.fingerprint, FINGERPRINT)

    def test_malformed_urls(self) -> None:
        """Text that is not a valid key file URL raises ValueError naming the problem."""
        bad = [
            "",
            "hello",
            f"http://{FINGERPRINT}@h:1/{SECRET}",
            f"pb+tls://{FINGERPRINT}@h/{SECRET}",  # no port
            f"pb+tls://{FINGERPRINT}@h:1/",  # no secret
            f"pb+tls://{FINGERPRINT}@h:1/{SECRET}/more",
            f"pb+tls://{FINGERPRINT}@h:0/{SECRET}",  # port out of range
            f"pb+tls://{FINGERPRINT}@h:65536/{SECRET}",
            f"pb+tls://{FINGERPRINT}@:1/{SECRET}",  # no host
            f"pb+tls://{FINGERPRINT}@::1:1/{SECRET}",  # IPv6 without brackets
            f"pb+tls://{FINGERPRINT}@[1.2.3.4]:1/{SECRET}",  # brackets around IPv4
            f"pb+tls://{FINGERPRINT}@[not:an:address]:1/{SECRET}",
            f"pb+tls://{FINGERPRINT[:-1]}@h:1/{SECRET}",  # 63 hex digits
            f"pb+tls://{'g' * 64}@h:1/{SECRET}",
            f"pb+tls://{FINGERPRINT}@h:1/{SECRET}\n{SECRET}",  # two lines
            f"pb+tls://{FINGERPRINT}@h:1/secret with spaces",
        ]
        for text in bad:
            e = self.assertRaises(ValueError, KeyFile.parse, text)
            self.assertTrue(str(e).startswith("not an ipkernel key file: "), f"{text!r}: {e}")

    def test_malformed_url_message_hides_secret(self) -> None:
        """The error for a malformed URL does not repeat the secret it may contain."""
        e = self.assertRaises(ValueError, KeyFile.parse, f"http://{FINGERPRINT}@h:1/{SECRET}")
        self.assertNotIn(SECRET, str(e))
        self.assertIn("pb+tls://<fingerprint>@<host>:<port>/<secret>", str(e))

    def test_invalid_fields_rejected(self) -> None:
        """KeyFile refuses fields that would not round-trip through its URL."""
        for args in [
            ("abc", "h", 1, SECRET),
            (FINGERPRINT, "h/x", 1, SECRET),
            (FINGERPRINT, "h", 70000, SECRET),
            (FINGERPRINT, "h", True, SECRET),
            (FINGERPRINT, "h", "1", SECRET),
            (FINGERPRINT, "h", 1, "a/b"),
            (FINGERPRINT, "h", 1, ""),
        ]:
            self.assertRaises(ValueError, KeyFile, *args)

    def test_missing_key_file(self) -> None:
        """A missing key file raises KeyFileNotFound: where it looked, how to start a controller."""
        path = Path(self.mktemp()) / ENGINE_FURL
        e = self.assertRaises(KeyFileNotFound, read_key_file, path)
        self.assertIsInstance(e, FileNotFoundError)
        message = str(e)
        self.assertIn(str(path.absolute()), message)
        self.assertIn("ipcluster -n 4", message)
        self.assertIn("ipcontroller", message)

    def test_write_then_read(self) -> None:
        """A written key file is one line that reads back as the same KeyFile."""
        path = Path(self.mktemp()) / "security" / MEC_FURL
        keyfile = KeyFile(FINGERPRINT, "::1", 4242, SECRET)
        write_key_file(path, keyfile)
        self.assertEqual(path.read_text(), keyfile.to_url() + "\n")
        self.assertEqual(read_key_file(path), keyfile)
        self.assertEqual(read_key_file(str(path)), keyfile)

    def test_written_modes(self) -> None:
        """A key file is mode 0600 and its directory 0700, even if the directory was 0755."""
        directory = Path(self.mktemp())
        directory.mkdir()
        os.chmod(directory, 0o755)
        path = directory / TC_FURL
        write_key_file(path, KeyFile(FINGERPRINT, "h", 1, SECRET))
        self.assertEqual(mode_of(path), 0o600)
        self.assertEqual(mode_of(directory), 0o700)

    def test_rewrite_replaces_loose_file(self) -> None:
        """Rewriting over a 0644 file leaves a 0600 file and no temporary files behind."""
        directory = ensure_private_dir(self.mktemp())
        path = directory / ENGINE_FURL
        path.write_text("old\n")
        os.chmod(path, 0o644)
        keyfile = KeyFile(FINGERPRINT, "h", 2, SECRET)
        write_key_file(path, keyfile)
        self.assertEqual(mode_of(path), 0o600)
        self.assertEqual(read_key_file(path), keyfile)
        self.assertEqual(os.listdir(directory), [ENGINE_FURL])

    def test_write_respects_no_umask(self) -> None:
        """Even with umask 0, a key file is created 0600."""
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        path = Path(self.mktemp()) / ENGINE_FURL
        write_key_file(path, KeyFile(FINGERPRINT, "h", 2, SECRET))
        self.assertEqual(mode_of(path), 0o600)

    def test_read_malformed_file(self) -> None:
        """A file that is not a key file raises ValueError naming the file."""
        path = Path(self.mktemp())
        path.write_text("garbage\n")
        e = self.assertRaises(ValueError, read_key_file, path)
        self.assertIn(str(path.absolute()), str(e))
        self.assertIn("not an ipkernel key file", str(e))


class SecretTests(SynchronousTestCase):
    """Role secrets: strength, format and constant-time comparison."""

    def test_new_secret_strength(self) -> None:
        """A secret is URL-safe and carries at least 128 random bits; two are never equal."""
        secret = new_secret()
        raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        self.assertGreaterEqual(len(raw) * 8, 128)
        self.assertRegex(secret, r"\A[A-Za-z0-9_-]+\Z")
        self.assertEqual(len({new_secret() for _ in range(100)}), 100)

    def test_check_secret_accepts_equal(self) -> None:
        """The right secret is accepted as str or as UTF-8 bytes."""
        secret = new_secret()
        self.assertTrue(check_secret(secret, secret))
        self.assertTrue(check_secret(secret.encode(), secret))

    def test_check_secret_rejects_other(self) -> None:
        """A different secret, a prefix, a longer string or an empty one is refused."""
        secret = new_secret()
        for given in (new_secret(), secret[:-1], secret + "x", "", b"", secret.upper()):
            self.assertFalse(check_secret(given, secret), given)

    def test_check_secret_wrong_types(self) -> None:
        """Values of other types, or strings that cannot be encoded, give False, not an error."""
        secret = new_secret()
        for given in (None, 42, [secret], {secret: 1}, bytearray(secret.encode()), "\udc80"):
            self.assertFalse(check_secret(given, secret), given)

    def test_check_secret_empty_expected(self) -> None:
        """A role whose expected secret is empty admits nobody, not even an empty secret."""
        self.assertFalse(check_secret("", ""))
        self.assertFalse(check_secret(b"", ""))


class IdentityTests(SynchronousTestCase):
    """The controller's certificate and key."""

    def test_generated_certificate(self) -> None:
        """A new identity is an EC P-256 key with a self-signed certificate for CERT_NAME."""
        identity = ControllerIdentity.generate()
        cert = identity.certificate
        self.assertIsInstance(identity.private_key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(identity.private_key.curve, ec.SECP256R1)
        self.assertEqual(cert.subject, cert.issuer)
        self.assertEqual(cert.subject.rfc4514_string(), f"CN={CERT_NAME}")
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), [CERT_NAME])
        cert.verify_directly_issued_by(cert)

    def test_validity(self) -> None:
        """The certificate is back-dated a day and valid for about ten years."""
        now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        cert = ControllerIdentity.generate(now=now).certificate
        self.assertEqual(cert.not_valid_before_utc, now - datetime.timedelta(days=1))
        self.assertGreaterEqual(cert.not_valid_after_utc - now, datetime.timedelta(days=365 * 10))

    def test_fingerprint(self) -> None:
        """The fingerprint is the lowercase hex SHA-256 of the certificate's DER encoding."""
        der = IDENTITY.certificate.public_bytes(serialization.Encoding.DER)
        self.assertEqual(IDENTITY.fingerprint, hashlib.sha256(der).hexdigest())
        self.assertRegex(IDENTITY.fingerprint, r"\A[0-9a-f]{64}\Z")
        self.assertNotEqual(IDENTITY.fingerprint, OTHER_IDENTITY.fingerprint)

    def test_save_and_load(self) -> None:
        """Saved and loaded, an identity has the same certificate and key; files 0600, dir 0700."""
        directory = Path(self.mktemp())
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)
        IDENTITY.save(directory)
        self.assertEqual(mode_of(directory), 0o700)
        self.assertEqual(mode_of(directory / CERT_FILE), 0o600)
        self.assertEqual(mode_of(directory / KEY_FILE), 0o600)
        self.assertIn(b"BEGIN PRIVATE KEY", (directory / KEY_FILE).read_bytes())
        loaded = ControllerIdentity.load(directory)
        self.assertEqual(loaded.fingerprint, IDENTITY.fingerprint)
        self.assertEqual(
            loaded.private_key.private_numbers(), IDENTITY.private_key.private_numbers()
        )

    def test_load_missing(self) -> None:
        """Loading from a directory without the files raises FileNotFoundError."""
        self.assertRaises(FileNotFoundError, ControllerIdentity.load, self.mktemp())

    def test_load_mismatched_key(self) -> None:
        """A key that does not belong to the certificate is refused, naming the files."""
        directory = Path(self.mktemp())
        IDENTITY.save(directory)
        (directory / CERT_FILE).write_bytes(OTHER_IDENTITY.certificate_pem)
        e = self.assertRaises(ValueError, ControllerIdentity.load, directory)
        self.assertIn(KEY_FILE, str(e))

    def test_load_garbage(self) -> None:
        """A certificate file that is not PEM raises ValueError naming it."""
        directory = Path(self.mktemp())
        IDENTITY.save(directory)
        (directory / CERT_FILE).write_bytes(b"not a certificate")
        e = self.assertRaises(ValueError, ControllerIdentity.load, directory)
        self.assertIn(CERT_FILE, str(e))

    def test_server_options_without_deprecation_warnings(self) -> None:
        """Building Twisted TLS options from an identity emits no DeprecationWarning."""
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            self.assertIsInstance(server_options(IDENTITY).getContext(), SSL.Context)


class ControllerKeysTests(SynchronousTestCase):
    """The controller's whole set of keys, fresh or reused across restarts."""

    def read_all(self, directory: Path) -> dict[str, bytes]:
        return {name: (directory / name).read_bytes() for name in ALL_KEY_FILES}

    def test_create_and_write(self) -> None:
        """Key files name the certificate, the location and the right port for each role."""
        directory = Path(self.mktemp())
        keys = ControllerKeys.create(directory)
        keys.write_key_files("10.0.0.5", 5001, 5002)
        engine = read_key_file(directory / ENGINE_FURL)
        mec = read_key_file(directory / MEC_FURL)
        tc = read_key_file(directory / TC_FURL)
        self.assertEqual(
            engine, KeyFile(keys.identity.fingerprint, "10.0.0.5", 5001, keys.engine_secret)
        )
        self.assertEqual(mec, KeyFile(keys.identity.fingerprint, "10.0.0.5", 5002, keys.mec_secret))
        self.assertEqual(tc, KeyFile(keys.identity.fingerprint, "10.0.0.5", 5002, keys.tc_secret))
        self.assertEqual(len({keys.engine_secret, keys.mec_secret, keys.tc_secret}), 3)
        self.assertEqual(ControllerIdentity.load(directory).fingerprint, keys.identity.fingerprint)

    def test_modes(self) -> None:
        """Every file the controller writes is 0600 and the directory 0700, even if it was 0755."""
        directory = Path(self.mktemp())
        directory.mkdir()
        os.chmod(directory, 0o755)
        ControllerKeys.create(directory).write_key_files("h", 1, 2)
        self.assertEqual(mode_of(directory), 0o700)
        for name in (*ALL_KEY_FILES, CERT_FILE, KEY_FILE):
            self.assertEqual(mode_of(directory / name), 0o600, name)

    def test_reuse_is_byte_identical(self) -> None:
        """With reuse, the same host and ports give byte-identical key files."""
        directory = Path(self.mktemp())
        ControllerKeys.create(directory).write_key_files("node1", 7001, 7002)
        before = self.read_all(directory)
        cert_before = (directory / CERT_FILE).read_bytes()
        ControllerKeys.create(directory, reuse=True).write_key_files("node1", 7001, 7002)
        self.assertEqual(self.read_all(directory), before)
        self.assertEqual((directory / CERT_FILE).read_bytes(), cert_before)

    def test_reuse_with_new_ports(self) -> None:
        """With reuse and other ports, the certificate and secrets stay the same."""
        directory = Path(self.mktemp())
        old = ControllerKeys.create(directory)
        old.write_key_files("node1", 7001, 7002)
        new = ControllerKeys.create(directory, reuse=True)
        self.assertEqual(new.identity.fingerprint, old.identity.fingerprint)
        self.assertEqual(
            (new.engine_secret, new.mec_secret, new.tc_secret),
            (old.engine_secret, old.mec_secret, old.tc_secret),
        )

    def test_no_reuse_gives_new_keys(self) -> None:
        """Without reuse, a restart makes a new certificate and new secrets."""
        directory = Path(self.mktemp())
        old = ControllerKeys.create(directory)
        old.write_key_files("node1", 7001, 7002)
        before = self.read_all(directory)
        new = ControllerKeys.create(directory)
        self.assertNotEqual(new.identity.fingerprint, old.identity.fingerprint)
        for attribute in ("engine_secret", "mec_secret", "tc_secret"):
            self.assertNotEqual(getattr(new, attribute), getattr(old, attribute))
        new.write_key_files("node1", 7001, 7002)
        after = self.read_all(directory)
        for name in ALL_KEY_FILES:
            self.assertNotEqual(after[name], before[name])

    def test_no_reuse_removes_old_key_files(self) -> None:
        """Without reuse, old key files disappear at once, before the new ones are written."""
        directory = Path(self.mktemp())
        ControllerKeys.create(directory).write_key_files("h", 1, 2)
        ControllerKeys.create(directory)
        for name in ALL_KEY_FILES:
            self.assertFalse((directory / name).exists(), name)

    def test_reuse_without_saved_keys(self) -> None:
        """Reuse on an empty directory makes new keys, as on a first run."""
        directory = Path(self.mktemp())
        keys = ControllerKeys.create(directory, reuse=True)
        self.assertEqual(ControllerIdentity.load(directory).fingerprint, keys.identity.fingerprint)

    def test_reuse_skips_key_file_of_other_certificate(self) -> None:
        """A key file that names another certificate does not donate its secret."""
        directory = Path(self.mktemp())
        old = ControllerKeys.create(directory)
        old.write_key_files("h", 1, 2)
        write_key_file(directory / TC_FURL, KeyFile(OTHER_IDENTITY.fingerprint, "h", 2, SECRET))
        new = ControllerKeys.create(directory, reuse=True)
        self.assertEqual(new.engine_secret, old.engine_secret)
        self.assertNotEqual(new.tc_secret, SECRET)

    def test_reuse_with_broken_certificate(self) -> None:
        """Reuse with an unreadable certificate raises ValueError naming it, replacing nothing."""
        directory = Path(self.mktemp())
        ControllerKeys.create(directory).write_key_files("h", 1, 2)
        (directory / CERT_FILE).write_bytes(b"junk")
        e = self.assertRaises(ValueError, ControllerKeys.create, directory, reuse=True)
        self.assertIn(CERT_FILE, str(e))
        self.assertEqual((directory / CERT_FILE).read_bytes(), b"junk")

    def test_invalid_location_writes_nothing(self) -> None:
        """An invalid host or port raises ValueError before any key file is written."""
        directory = Path(self.mktemp())
        keys = ControllerKeys.create(directory)
        self.assertRaises(ValueError, keys.write_key_files, "h", 1, 0)
        self.assertRaises(ValueError, keys.write_key_files, "bad host", 1, 2)
        for name in ALL_KEY_FILES:
            self.assertFalse((directory / name).exists(), name)

    def test_previous_ports(self) -> None:
        """previous_ports reads the engine and client ports back from the key files."""
        directory = Path(self.mktemp())
        self.assertEqual(previous_ports(directory), (None, None))
        ControllerKeys.create(directory).write_key_files("h", 6001, 6002)
        self.assertEqual(previous_ports(directory), (6001, 6002))
        os.unlink(directory / MEC_FURL)
        self.assertEqual(previous_ports(directory), (6001, 6002))
        os.unlink(directory / TC_FURL)
        (directory / ENGINE_FURL).write_text("garbage\n")
        self.assertEqual(previous_ports(directory), (None, None))


# --- TLS ---------------------------------------------------------------------------------


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """Records what happens on one side of a connection; the server side echoes."""

    def __init__(self, echo: bool = False, greeting: bytes = b"") -> None:
        self.echo = echo
        self.greeting = greeting
        self.handshake_done = False
        self.received = b""
        self.lost: Failure | None = None
        self.lost_deferred: defer.Deferred[None] = defer.Deferred()
        self.data_deferred: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.greeting:
            # Written before the handshake ends; TLS holds it until then.
            self.transport.write(self.greeting)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)
        elif not self.data_deferred.called:
            self.data_deferred.callback(self.received)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason
        self.lost_deferred.callback(None)


def _factory_for(protocol: Protocol) -> Factory:
    factory = Factory()
    factory.protocol = lambda: protocol  # type: ignore[assignment]
    return factory


def tls_in_memory(server_tls_options: object, client_options: object) -> tuple[Recorder, Recorder]:
    """Connect an echoing server and a greeting client over TLS in memory, pumped to the end."""
    clock = Clock()
    server, client = Recorder(echo=True), Recorder(greeting=b"ping")
    server_tls = TLSMemoryBIOFactory(server_tls_options, False, _factory_for(server), clock=clock)
    client_tls = TLSMemoryBIOFactory(client_options, True, _factory_for(client), clock=clock)
    address = IPv4Address("TCP", "127.0.0.1", 0)
    _, _, pump = connectedServerAndClient(
        lambda: server_tls.buildProtocol(address),
        lambda: client_tls.buildProtocol(address),
        greet=False,
        clock=clock,
    )
    pump.flush()
    return server, client


@implementer(IOpenSSLClientConnectionCreator)
class TLS11Client:
    """A client that only speaks TLS 1.1 (and allows the weak ciphers it needs)."""

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        # OpenSSL 3 disables TLS 1.1 at its default security level: lower it, so that it is
        # the server that refuses, not the client that cannot offer anything.
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        return SSL.Connection(context, None)


class PinningTests(SynchronousTestCase):
    """TLS between the controller's options and pinned client options, in memory."""

    def test_provides_interface(self) -> None:
        """client_tls_options gives an IOpenSSLClientConnectionCreator with the pin lowercased."""
        options = client_tls_options(IDENTITY.fingerprint.upper())
        self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, options))
        self.assertIsInstance(options, PinnedClientTLS)
        self.assertEqual(options.fingerprint, IDENTITY.fingerprint)

    def test_bad_fingerprint_argument(self) -> None:
        """A pin that is not 64 hex digits is refused at once."""
        for value in ("", "abc", "z" * 64, FINGERPRINT + "0"):
            self.assertRaises(ValueError, client_tls_options, value)

    def test_right_fingerprint_connects(self) -> None:
        """With the controller's fingerprint the handshake completes and data flows both ways."""
        options = client_tls_options(IDENTITY.fingerprint)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            server, client = tls_in_memory(server_options(IDENTITY), options)
        self.assertTrue(client.handshake_done)
        self.assertTrue(server.handshake_done)
        self.assertEqual(server.received, b"ping")
        self.assertEqual(client.received, b"ping")
        self.assertIsNone(client.lost)
        self.assertFalse(options.mismatch_seen)
        self.assertIsNone(options.presented_fingerprint)

    def test_wrong_fingerprint_fails_as_stale_key_file(self) -> None:
        """Another certificate fails the handshake; the client sees StaleKeyFile and the flag."""
        options = client_tls_options(OTHER_IDENTITY.fingerprint)
        server, client = tls_in_memory(server_options(IDENTITY), options)
        self.assertFalse(client.handshake_done)
        self.assertFalse(server.handshake_done)
        self.assertEqual(server.received, b"")
        self.assertEqual(client.received, b"")
        self.assertIsNotNone(client.lost)
        self.assertIsNotNone(server.lost)
        assert client.lost is not None
        self.assertTrue(client.lost.check(StaleKeyFile))
        message = str(client.lost.value)
        self.assertIn("wrong certificate", message)
        self.assertIn("stale", message)
        self.assertIn(IDENTITY.fingerprint, message)
        self.assertIn(OTHER_IDENTITY.fingerprint, message)
        self.assertTrue(options.mismatch_seen)
        self.assertEqual(options.presented_fingerprint, IDENTITY.fingerprint)

    def test_mismatch_flag_is_per_connection(self) -> None:
        """The mismatch flag describes the latest connection: a good one clears it."""
        options = client_tls_options(OTHER_IDENTITY.fingerprint)
        tls_in_memory(server_options(IDENTITY), options)
        self.assertTrue(options.mismatch_seen)
        server, client = tls_in_memory(server_options(OTHER_IDENTITY), options)
        self.assertEqual(client.received, b"ping")
        self.assertFalse(options.mismatch_seen)

    def test_other_failure_is_not_a_mismatch(self) -> None:
        """A TLS failure that is not about the certificate is not reported as a mismatch."""
        options = client_tls_options(IDENTITY.fingerprint)
        # A server limited to TLS 1.1 cannot meet the client's TLS 1.2 minimum.
        old_server = CertificateOptions(
            privateKey=IDENTITY.private_key,
            certificate=IDENTITY.certificate,
            insecurelyLowerMinimumTo=TLSVersion.TLSv1_1,
            lowerMaximumSecurityTo=TLSVersion.TLSv1_1,
        )
        server, client = tls_in_memory(old_server, options)
        self.assertFalse(client.handshake_done)
        assert client.lost is not None
        self.assertFalse(client.lost.check(StaleKeyFile))
        self.assertFalse(options.mismatch_seen)

    def test_tls11_client_refused(self) -> None:
        """The controller refuses a client that offers only TLS 1.1."""
        server, client = tls_in_memory(server_options(IDENTITY), TLS11Client())
        self.assertFalse(server.handshake_done)
        self.assertEqual(server.received, b"")
        assert server.lost is not None
        self.assertTrue(server.lost.check(SSL.Error), server.lost)
        self.assertIn("unsupported protocol", str(server.lost.value))


class RealSocketTests(TestCase):
    """Smoke tests of the options with the reactor's listenSSL and connectSSL on 127.0.0.1."""

    def connect(self, fingerprint: str) -> tuple[Recorder, Recorder, PinnedClientTLS]:
        """Listen with IDENTITY and connect pinned to ``fingerprint``: (server, client, options)."""
        from twisted.internet import reactor

        server = Recorder(echo=True)
        client = Recorder(greeting=b"ping")
        port = reactor.listenSSL(
            0, _factory_for(server), server_options(IDENTITY), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        factory = ClientFactory()
        factory.protocol = lambda: client  # type: ignore[assignment]
        options = client_tls_options(fingerprint)
        connector = reactor.connectSSL("127.0.0.1", port.getHost().port, factory, options)
        self.addCleanup(connector.disconnect)
        return server, client, options

    @defer.inlineCallbacks
    def test_right_fingerprint(self):  # type: ignore[no-untyped-def]
        """Over a real socket the pinned client connects and its data is echoed back."""
        server, client, options = self.connect(IDENTITY.fingerprint)
        received = yield client.data_deferred
        self.assertEqual(received, b"ping")
        self.assertTrue(client.handshake_done)
        self.assertFalse(options.mismatch_seen)
        client.transport.loseConnection()
        yield defer.gatherResults([client.lost_deferred, server.lost_deferred])

    @defer.inlineCallbacks
    def test_wrong_fingerprint(self):  # type: ignore[no-untyped-def]
        """Over a real socket a wrong pin ends the connection with StaleKeyFile and the flag."""
        server, client, options = self.connect(OTHER_IDENTITY.fingerprint)
        yield defer.gatherResults([client.lost_deferred, server.lost_deferred])
        self.assertTrue(client.lost.check(StaleKeyFile))
        self.assertTrue(options.mismatch_seen)
        self.assertEqual(client.received, b"")
