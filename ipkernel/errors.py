"""Every exception a user of ipkernel can meet, and how errors cross the wire.

This module is plain Python (no Twisted) so that clients, engines and the controller can
all import it cheaply, and so that the exceptions pickle the same way everywhere.

Errors travel between processes in two ways (see ``docs/internals.md``, "Outcomes"):

- a failure raised by user code on an engine crosses as serialized frames and comes back
  as the original exception, carrying the remote traceback text in ``remote_traceback``;
- the controller's own errors cross as a ``(type_name, message)`` pair, made by
  :func:`error_to_wire` and turned back into an exception by :func:`error_from_wire`.

Every class here except :class:`CompositeError` and :class:`RemoteError` is built from a
single message string, which is what lets :func:`error_from_wire` rebuild it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, TextIO

__all__ = [
    "WIRE_ERRORS",
    "ClientUnusable",
    "ClusterError",
    "CompositeError",
    "ControllerRestarted",
    "ControllerUnreachable",
    "EngineError",
    "IPKernelError",
    "InvalidEngineID",
    "KeyFileNotFound",
    "NoEnginesRegistered",
    "QueueCleared",
    "RemoteError",
    "SerializationError",
    "SharedMemoryError",
    "StaleKeyFile",
    "TaskAborted",
    "TransferError",
    "WrongKeyFile",
    "error_from_wire",
    "error_to_wire",
    "format_error_line",
]


class IPKernelError(Exception):
    """Base class of every exception that ipkernel itself raises."""


def format_error_line(exc: BaseException) -> str:
    """``"ExcType: message"`` (or just ``"ExcType"``), as Python's own tracebacks end.

    A :class:`RemoteError` shows the name of the type it stands for.
    """
    if isinstance(exc, RemoteError):
        # A stand-in should show the remote type's name, not "RemoteError".
        type_name, message = exc.type_name, exc.message
    else:
        type_name = type(exc).__name__
        try:
            message = str(exc)
        except Exception:
            # A user exception with a broken __str__ must not hide the other failures.
            message = f"<unprintable {type_name} object>"
    return f"{type_name}: {message}" if message else type_name


class CompositeError(IPKernelError):
    """One call on several engines failed on at least one of them.

    Raised by the MultiEngine client (and, for its ``map``, the Task client) instead of
    any single engine's exception, so that no engine's failure and no completed work is
    lost.

    :param elist: one ``(engine_id, method, exception)`` triple per failure, in target
        order. Each exception is the original one (same type) where it could be rebuilt,
        and carries the remote traceback text in ``remote_traceback`` when there is one.
    :param results: the per-target results of the call: the successful engines' results
        in place and the exception objects where engines failed. When omitted it is the
        list of the exceptions in ``elist`` (right when every target failed).

    ``str()`` is a header line followed by one line per failure::

        one or more exceptions from call to method: execute
        [0:execute]: ZeroDivisionError: division by zero
        [1:execute]: ZeroDivisionError: division by zero
    """

    def __init__(
        self,
        elist: Iterable[tuple[Any, str, BaseException]],
        results: Sequence[Any] | None = None,
    ) -> None:
        self.elist: list[tuple[Any, str, BaseException]] = [
            (engine_id, method, exc) for engine_id, method, exc in elist
        ]
        if results is None:
            results = [exc for _, _, exc in self.elist]
        self.results: Sequence[Any] = results
        super().__init__(self._message())

    def _message(self) -> str:
        # Normally all failures come from one call, so one method name; list each
        # distinct name in order if a caller ever mixes them.
        methods = list(dict.fromkeys(method for _, method, _ in self.elist))
        lines = [f"one or more exceptions from call to method: {', '.join(methods)}"]
        lines.extend(
            f"[{engine_id}:{method}]: {format_error_line(exc)}"
            for engine_id, method, exc in self.elist
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        # The default would rebuild from ``args`` (the message) and lose the triples.
        return (type(self), (self.elist, self.results))

    def _check_index(self, excid: int) -> tuple[Any, str, BaseException]:
        count = len(self.elist)
        if not isinstance(excid, int) or not -count <= excid < count:
            raise IndexError(
                f"CompositeError has no exception with index {excid!r}; "
                f"it holds {count} (indices 0 to {count - 1})"
                if count
                else f"CompositeError has no exception with index {excid!r}; it holds none"
            )
        return self.elist[excid]

    def raise_exception(self, excid: int = 0) -> NoReturn:
        """Raise the original exception of failure number ``excid`` (an index into elist).

        The exception object is raised as it is: same type, same arguments, and its
        ``remote_traceback`` text kept. That text is also attached as a note (PEP 678),
        once, so an uncaught re-raise prints where on the engine it happened.

        :raises IndexError: if ``excid`` is not a valid index into :attr:`elist`.
        """
        engine_id, method, exc = self._check_index(excid)
        remote_tb = (getattr(exc, "remote_traceback", None) or "").rstrip()
        if remote_tb:
            notes = getattr(exc, "__notes__", [])
            # Whoever rebuilt the exception may already have attached the text.
            if not any(remote_tb in note for note in notes):
                exc.add_note(f"[{engine_id}:{method}] remote traceback:\n{remote_tb}")
        raise exc

    def print_tracebacks(self, excid: int | None = None, file: TextIO | None = None) -> None:
        """Print the remote traceback of one failure (``excid``) or of all of them.

        Each is headed by its ``[engine_id:method]:`` line; a failure without remote
        traceback text (for example an ``EngineError`` made by the controller) prints
        its ``ExcType: message`` line instead. Output goes to ``file``, by default the
        ``sys.stdout`` of the moment of the call.

        :raises IndexError: if ``excid`` is given and is not a valid index into elist.
        """
        out = sys.stdout if file is None else file
        entries = self.elist if excid is None else [self._check_index(excid)]
        blocks = []
        for engine_id, method, exc in entries:
            remote_tb = getattr(exc, "remote_traceback", None)
            body = remote_tb.rstrip("\n") if remote_tb else format_error_line(exc)
            blocks.append(f"[{engine_id}:{method}]:\n{body}\n")
        out.write("\n".join(blocks))


class EngineError(IPKernelError):
    """An engine died or its connection was lost while it owed a result.

    Appears in place of that engine's share of a call (inside a :class:`CompositeError`),
    or as a task's failure once its retries are spent. The message names the engine id.
    """

    @classmethod
    def for_engine(cls, engine_id: int, reason: str | None = None) -> EngineError:
        """The standard message: ``"engine 3 died"`` or ``"engine 3 died (reason)"``."""
        suffix = f" ({reason})" if reason else ""
        return cls(f"engine {engine_id} died{suffix}")


class InvalidEngineID(IPKernelError, KeyError):
    """A call named an engine id that is not registered with the controller.

    A ``KeyError`` for code that expects one, but its message is shown as written rather
    than quoted the way ``KeyError`` quotes a missing key.
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


class NoEnginesRegistered(IPKernelError):
    """A call targeted engines (``'all'`` included) while no engine is registered."""


class QueueCleared(IPKernelError):
    """A queued command was dropped by ``clear_queue()`` before it started."""


class TaskAborted(IPKernelError):
    """The task was cancelled with ``TaskClient.abort()`` before it finished."""


class SerializationError(IPKernelError, TypeError):
    """An object could not be serialized or rebuilt; the message names its type.

    Raised on the side where it happened; nothing else in the call is affected.
    """


class TransferError(IPKernelError):
    """A payload did not arrive whole: its stream was aborted, or it could not be received.

    For example the sending or the receiving process died or disconnected in the middle,
    or the receiver could not allocate the memory announced. Nothing of the payload is
    used: a command whose argument did not arrive does not run.
    """


class SharedMemoryError(TransferError):
    """A shared-memory segment could not be created, opened or mapped; the message says why.

    Set ``IPKERNEL_TRANSPORT=stream`` (or ``transport='stream'`` on the client) to send
    everything over the network instead.
    """


class RemoteError(IPKernelError):
    """Stand-in for a remote exception that cannot be rebuilt here.

    Used when the exception's class cannot be imported or unpickled on this side, or a
    wire error names a class this module does not know. ``str()`` reads like the original:
    ``"TypeName: message"``.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


class KeyFileNotFound(IPKernelError, FileNotFoundError):
    """A client or engine found no key file where it looked.

    The message says where it looked and how to start a controller.
    """

    @classmethod
    def for_path(cls, path: str | os.PathLike[str]) -> KeyFileNotFound:
        """The standard message for a missing key file at ``path``."""
        return cls(
            f"no key file at {os.fspath(path)}: is a controller running? "
            "Start one with `ipcluster -n 4` or `ipcontroller`, or pass the path of the "
            "key file copied from the controller's security dir"
        )


class ControllerUnreachable(IPKernelError, ConnectionError):
    """The controller named in a key file could not be reached; names address and port."""

    @classmethod
    def for_address(cls, host: str, port: int, reason: str | None = None) -> ControllerUnreachable:
        """The standard message for a failed connection to ``host:port``."""
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        because = f" ({reason})" if reason else ""
        return cls(
            f"cannot reach the controller at {where}{because}; is it running, and is the "
            "key file from its current run?"
        )


class ControllerRestarted(ControllerUnreachable):
    """The connection to the controller was lost while this call was in flight: the
    controller stopped, crashed or restarted.

    The client logs in again by itself, with the same key file, at its next call: call
    again once the controller is back (``ipcontroller --reuse-keys``). The engines keep
    their namespaces; what the call did there before the loss is not known. The Task
    client does this by itself and raises this only when it cannot.
    """


class StaleKeyFile(IPKernelError):
    """The controller refused the key file: wrong secret or certificate fingerprint.

    Usually the controller was restarted without ``--reuse-keys`` after the key file was
    copied.
    """

    @classmethod
    def for_file(cls, path: str | os.PathLike[str] | None, reason: str) -> StaleKeyFile:
        """The standard message for a refused key file (``path`` may be unknown)."""
        name = f" {os.fspath(path)}" if path is not None else ""
        return cls(
            f"the key file{name} is stale: {reason}; copy the current one from the "
            "controller's security dir"
        )


class WrongKeyFile(IPKernelError):
    """A client or engine was given the key file of another role, for example the Task
    key file to ``MultiEngineClient``; the message names the key file, the role it grants
    and the one needed."""


class ClientUnusable(IPKernelError, RuntimeError):
    """The client cannot serve this call.

    For example in a process forked after the client was made (its reactor thread does
    not exist there), or when called from the reactor thread itself, where blocking
    would deadlock.
    """


class ClusterError(IPKernelError):
    """A cluster cannot start or run; the message says what failed and where to look.

    Reported by ``ipcluster`` and raised by :class:`ipkernel.Cluster`.
    """


#: The classes :func:`error_from_wire` rebuilds, by name. Each is built from one message.
WIRE_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        IPKernelError,
        EngineError,
        InvalidEngineID,
        NoEnginesRegistered,
        QueueCleared,
        TaskAborted,
        SerializationError,
        TransferError,
        SharedMemoryError,
        KeyFileNotFound,
        ControllerUnreachable,
        ControllerRestarted,
        StaleKeyFile,
        WrongKeyFile,
        ClientUnusable,
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        RuntimeError,
        LookupError,
    )
}

# A sender may qualify the name; these prefixes still mean the classes above.
_WIRE_PREFIXES = ("ipkernel.errors.", "builtins.")


def error_from_wire(type_name: str, message: str) -> Exception:
    """Rebuild the exception that a ``(type_name, message)`` wire error describes.

    ``type_name`` is a key of :data:`WIRE_ERRORS` (optionally prefixed with
    ``ipkernel.errors.`` or ``builtins.``); any other name gives
    ``RemoteError(type_name, message)``, so an unknown name is never lost.
    """
    name = type_name
    for prefix in _WIRE_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    cls = WIRE_ERRORS.get(name)
    if cls is None:
        return RemoteError(type_name, message)
    return cls(message)


def error_to_wire(exc: BaseException) -> tuple[str, str]:
    """The ``(type_name, message)`` pair for ``exc``; the inverse of :func:`error_from_wire`.

    A :class:`RemoteError` keeps the name of the type it stands for. The message is the
    exception's single string argument when it has one, else ``str(exc)``.
    """
    if isinstance(exc, RemoteError):
        return (exc.type_name, exc.message)
    # The constructor's own message, when there is one: str() of a KeyError would quote it.
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        return (type(exc).__name__, exc.args[0])
    return (type(exc).__name__, str(exc))
