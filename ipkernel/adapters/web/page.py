"""The status page itself: one HTML document with its style and script inline.

The page is assembled once from ``assets/`` (``status.html``, ``status.css``,
``status.js``), so a browser needs one request for it and one for the live feed, and
nothing comes from anywhere but the controller. Its Content-Security-Policy allows
exactly that inline style and script (by hash), requests to the controller, and nothing
else.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from importlib import resources

__all__ = ["Page", "load_page"]


@dataclass(frozen=True)
class Page:
    """The page's bytes and the headers it is served with."""

    body: bytes
    headers: dict[bytes, bytes]


def _asset(name: str) -> str:
    return (resources.files(__package__) / "assets" / name).read_text(encoding="utf-8")


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def load_page() -> Page:
    """Assemble the page from its assets. Raises ``OSError`` if one is missing."""
    style, script = _asset("status.css"), _asset("status.js")
    html = _asset("status.html").replace("{style}", style).replace("{script}", script)
    policy = (
        f"default-src 'none'; script-src {_hash(script)}; style-src {_hash(style)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return Page(
        html.encode("utf-8"),
        {
            b"content-type": b"text/html; charset=utf-8",
            b"content-security-policy": policy.encode("ascii"),
        },
    )
