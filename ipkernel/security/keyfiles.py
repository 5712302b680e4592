"""Key files: one line, a capability URL, that tells engines and clients where the controller is.

::

    pb+tls://<fingerprint>@<host>:<port>/<secret>

``fingerprint`` names the controller's certificate (:mod:`ipkernel.security.certificates`),
``secret`` the role the key file grants (:mod:`ipkernel.security.role_secrets`). Key files
are written mode 0600 in a directory of mode 0700.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ipkernel.errors import KeyFileNotFound
from ipkernel.paths import ensure_private_dir
from ipkernel.security.private_files import write_private_file

__all__ = ["SCHEME", "KeyFile", "read_key_file", "write_key_file"]

#: The URL scheme of key files.
SCHEME = "pb+tls"
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


def write_key_file(path: str | os.PathLike[str], keyfile: KeyFile) -> None:
    """Write ``keyfile`` to ``path`` as one line, atomically, mode 0600.

    The parent directory is created if needed and set to mode 0700
    (:func:`~ipkernel.paths.ensure_private_dir`). Raises ``OSError`` on failure.
    """
    path = Path(path).expanduser().absolute()
    ensure_private_dir(path.parent)
    write_private_file(path, (keyfile.to_url() + "\n").encode("ascii"))
