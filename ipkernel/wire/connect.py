"""Dial the controller named by a key file, check its certificate, log in.

Used by engines and clients alike. :func:`login` fires with the role's avatar (a PB
``RemoteReference``) or errbacks with an error that says what to do:
:class:`~ipkernel.errors.ControllerUnreachable` (address and port),
:class:`~ipkernel.errors.StaleKeyFile` (wrong certificate or secret),
:class:`~ipkernel.errors.WrongKeyFile` (the key file of another role). :func:`relogin`
gives, for an avatar, the way to log in again as it did: after a controller restart
(``--reuse-keys``) the same key file opens the same role.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, TimeoutError
from twisted.python.failure import Failure
from twisted.spread import pb

from ipkernel.errors import ControllerUnreachable, StaleKeyFile, WrongKeyFile
from ipkernel.security import KeyFile
from ipkernel.wire.broker import ClientFactory
from ipkernel.wire.errors import exception_from_failure
from ipkernel.wire.packed_calls import call_remote
from ipkernel.wire.tls import connect_tls


@dataclass(frozen=True)
class Relogin:
    """How an avatar was had: calling it logs in again the same way (a new avatar)."""

    reactor: Any
    keyfile: KeyFile
    role: str
    source: str
    timeout: float

    def __call__(self) -> Deferred:
        """Log in again; as :func:`login`."""
        return login(
            self.reactor, self.keyfile, self.role, source=self.source, timeout=self.timeout
        )


# The way each logged-in connection was made, for relogin().
_logins: weakref.WeakKeyDictionary[pb.Broker, Relogin] = weakref.WeakKeyDictionary()


def relogin(avatar: pb.RemoteReference) -> Relogin | None:
    """The way to log in again as ``avatar`` was (``None`` for an avatar :func:`login`
    did not make, such as one over an in-memory connection)."""
    try:
        return _logins.get(avatar.broker)
    except TypeError:  # a stand-in broker that cannot be weakly referenced
        return None


def login(
    reactor,
    keyfile: KeyFile,
    role: str,
    *,
    source: str = "the key file",
    timeout: float = 10.0,
    peer_timeout: float | None = None,
) -> Deferred:
    """Connect to ``keyfile``'s controller and log in with its secret as ``role`` (a name
    from :mod:`ipkernel.security.roles`).

    Fires with the avatar; ``avatar.broker`` is the connection. ``source`` names the key
    file in error messages. With ``peer_timeout`` (seconds) the connection is dropped once
    the controller's host has sent nothing for that long (see
    :mod:`ipkernel.wire.keepalive`).
    """
    factory = ClientFactory()
    where = f"{keyfile.host}:{keyfile.port}"
    tls = connect_tls(
        reactor,
        keyfile.host,
        keyfile.port,
        factory,
        keyfile.fingerprint,
        timeout=timeout,
        peer_timeout=peer_timeout,
    )

    def logged_in(avatar: pb.RemoteReference) -> pb.RemoteReference:
        raise_limits = getattr(avatar.broker, "raise_limits", None)
        if raise_limits is not None:
            raise_limits()
        _logins[avatar.broker] = Relogin(reactor, keyfile, role, source, timeout)
        return avatar

    def failed(failure: Failure) -> Failure:
        if failure.check(ConnectError, TimeoutError):
            raise ControllerUnreachable(
                f"cannot reach the controller at {where} ({failure.getErrorMessage().strip()}); "
                f"is it running? (address from {source})"
            )
        if _is_certificate_mismatch(tls, failure):
            raise StaleKeyFile(
                f"the controller at {where} did not present the certificate named in "
                f"{source}: the key file is stale; copy the current one from the "
                "controller's security directory"
            )
        if failure.check(ConnectionLost, ConnectionDone, pb.PBConnectionLost):
            raise ControllerUnreachable(
                f"the connection to the controller at {where} was closed during login "
                f"({failure.getErrorMessage().strip()}); check that {source} is current"
            )
        exc = exception_from_failure(failure)
        if isinstance(exc, StaleKeyFile):
            raise StaleKeyFile(f"{exc} ({source})")
        if isinstance(exc, WrongKeyFile):
            raise WrongKeyFile(f"{source} {exc}")
        return Failure(exc) if exc is not failure.value else failure

    d = factory.getRootObject()
    d.addCallback(lambda root: root.callRemote("login", keyfile.secret, role))
    d.addCallbacks(logged_in, failed)
    return d


def _is_certificate_mismatch(tls: object, failure: Failure) -> bool:
    mismatch = getattr(tls, "mismatch_seen", None)
    if mismatch:
        return True
    text = repr(failure.value)
    return "certificate verify failed" in text


def call_controller(
    avatar: pb.RemoteReference, source: str, method: str, *args: object
) -> Deferred:
    """``avatar.callRemote(method, *args)`` (packed where it can be, see
    :mod:`ipkernel.wire.packed_calls`) with the client's errors.

    Fires with the answer; errbacks with the exception the controller named (see
    :func:`~ipkernel.wire.errors.exception_from_failure`), or raises
    :class:`~ipkernel.errors.ControllerUnreachable` at once if the connection is closed.
    """
    try:
        d = call_remote(avatar, method, *args)
    except pb.DeadReferenceError:
        raise ControllerUnreachable(
            f"the connection to the controller ({source}) is closed; create a new client"
        ) from None
    return d.addErrback(_raise_translated)


def _raise_translated(failure: Failure) -> None:
    raise exception_from_failure(failure)
