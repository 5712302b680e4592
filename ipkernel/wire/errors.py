"""Errors of a whole remote call, as they cross PB.

The core raises the plain exceptions of :mod:`ipkernel.errors` (and ``ValueError``,
``IndexError`` …). An adapter turns them into a :class:`WireError` — a ``pb.Error``, so PB
copies it to the caller without logging a traceback — whose text is
``"<TypeName>: <message>"``. The client turns that text back into the exception of that
name with :func:`exception_from_failure`.
"""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.spread import pb

from ipkernel.errors import error_from_wire

#: Exceptions the core raises on purpose; anything else is reported as a RemoteError.
_EXPECTED = (ValueError, IndexError, KeyError, TypeError, LookupError)


class WireError(pb.Error):
    """An expected error of a remote call; ``str()`` is ``"TypeName: message"``."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


def to_wire(failure: Failure) -> Failure:
    """Errback that turns a core exception into a :class:`WireError` failure."""
    exc = failure.value
    if isinstance(exc, WireError):
        return failure
    from ipkernel.errors import IPKernelError

    if isinstance(exc, (IPKernelError, *_EXPECTED)):
        message = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
        return Failure(WireError(type(exc).__name__, message))
    return failure


def exception_from_failure(failure: Failure) -> BaseException:
    """The client-side exception for a failed remote call.

    A :class:`WireError` becomes the named exception; other remote failures become a
    ``RemoteError`` naming the remote type; local failures pass through unchanged.
    """
    if isinstance(failure.value, WireError):
        return error_from_wire(failure.value.type_name, failure.value.message)
    remote_type = getattr(failure, "type", None)
    if isinstance(remote_type, (bytes, str)):
        # A CopiedFailure: the type is the remote class's qualified name.
        name = remote_type.decode() if isinstance(remote_type, bytes) else remote_type
        text = str(failure.value)
        if name.endswith(".WireError") and ": " in text:
            type_name, _, message = text.partition(": ")
            return error_from_wire(type_name, message)
        return error_from_wire(name.rsplit(".", 1)[-1], text)
    return failure.value
