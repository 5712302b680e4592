"""Role secrets: the token each key file carries, made and checked here.

Each role (engine, MultiEngine, Task) has its own random secret. After the TLS handshake
the connecting side sends it, and the controller's gate compares it with
:func:`check_secret`, in constant time.
"""

from __future__ import annotations

import hmac
import secrets

__all__ = ["check_secret", "new_secret"]


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
