"""Who may see the status page: a random token in its URL, and the file that holds the URL.

The controller makes a new token at each start and writes the page's URL, token included,
to ``<security-dir>/ipcontroller-web.url`` (mode 0600, like the key files); ``ipcluster``
prints it. A request without the token, or with another one, is answered 403. The page is
plain HTTP on a loopback address and HTTPS (the controller's certificate) on any other.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ipkernel.security import check_secret, new_secret
from ipkernel.security.private_files import write_private_file

__all__ = [
    "WEB_URL_FILE",
    "is_loopback",
    "new_token",
    "page_url",
    "read_url_file",
    "remove_url_file",
    "token_matches",
    "write_url_file",
]

#: The file in the security directory that holds the status page's URL.
WEB_URL_FILE = "ipcontroller-web.url"


def new_token() -> str:
    """A new access token: 256 random bits, URL-safe."""
    return new_secret()


def token_matches(args: dict[bytes, list[bytes]], token: str) -> bool:
    """Whether a request's query arguments (``request.args``) carry ``token``.

    The comparison takes the same time wherever the first difference is
    (:func:`~ipkernel.security.check_secret`, ``hmac.compare_digest``).
    """
    given = args.get(b"token")
    return bool(given) and check_secret(given[0], token)


def is_loopback(interface: str) -> bool:
    """Whether ``interface`` (an address, or ``localhost``) is a loopback address."""
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def page_url(tls: bool, host: str, port: int, token: str) -> str:
    """The page's URL with its token (an IPv6 ``host`` goes in brackets)."""
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}/?token={token}"


def write_url_file(security_dir: str | os.PathLike[str], url: str) -> Path:
    """Write ``url`` to :data:`WEB_URL_FILE` in ``security_dir`` (mode 0600, atomically);
    return its path. Raises ``OSError``."""
    path = Path(security_dir) / WEB_URL_FILE
    write_private_file(path, (url + "\n").encode("ascii"))
    return path


def remove_url_file(security_dir: str | os.PathLike[str]) -> None:
    """Remove the URL file an earlier run left (there is no page now)."""
    try:
        os.unlink(Path(security_dir) / WEB_URL_FILE)
    except FileNotFoundError:
        pass


def read_url_file(security_dir: str | os.PathLike[str]) -> str | None:
    """The URL in ``security_dir``'s :data:`WEB_URL_FILE`, or ``None`` if there is none."""
    try:
        text = (Path(security_dir) / WEB_URL_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None
