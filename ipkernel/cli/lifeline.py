"""Lifelines: how a child process learns that the process that started it has gone.

The parent makes a pipe, gives the child the read end and keeps the write end, on which it
never writes. When the parent exits, however it exits (SIGKILL included), the kernel
closes the write end, and the child, which watches the read end in its reactor, sees end
of file and stops what it runs. Unlike Linux's ``PR_SET_PDEATHSIG`` this works on every
POSIX system, follows the parent process rather than the thread that started the child
(a notebook may start a cluster from a thread that ends long before the kernel does),
and survives a fork: the engines forked by :mod:`ipkernel.cli.forkengines` inherit the
read end and watch it themselves.

The write end stays with the parent only: ``os.pipe`` makes it non-inheritable,
``reactor.spawnProcess`` and ``subprocess`` close every descriptor they are not told to
pass. (A bare ``os.fork`` of the parent would keep a copy open for as long as that fork
lives.)

``ipcluster`` gives its lifeline to the controller and to its local engines as descriptor
:data:`CHILD_FD` with ``--lifeline-fd 3``; :class:`ipkernel.Cluster` gives one to the
``ipcluster`` it runs. Engines started over ssh watch their standard input
(``--lifeline-fd 0``), which ssh carries from the local ssh client's, held open by
ipcluster and never written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["CHILD_FD", "HELP", "OPTION", "Lifeline", "open_fd", "watch"]

#: The descriptor number a child is given its lifeline as.
CHILD_FD = 3
#: The command-line option naming the lifeline descriptor (ipcluster, ipcontroller, ipengine).
OPTION = "--lifeline-fd"
#: What the option says in ``--help``.
HELP = (
    "Stop when this file descriptor reaches end of file: the program that started this one "
    "keeps its other end open while it lives (ipcluster and ipkernel.Cluster do)."
)


def open_fd(value: str) -> int:
    """Parse ``--lifeline-fd``: the number of an open descriptor; ``ValueError`` otherwise."""
    try:
        fd = int(value)
    except ValueError:
        fd = -1
    if fd < 0:
        raise ValueError(f"{OPTION} needs a file descriptor number, not {value!r}")
    try:
        os.fstat(fd)
    except OSError:
        raise ValueError(f"{OPTION} {fd}: no such open file descriptor") from None
    return fd


class Lifeline:
    """The parent's side: a pipe whose :attr:`read_fd` children get; the write end stays here."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def close(self) -> None:
        """Close both ends here (children holding the read end then see end of file)."""
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1


@implementer(IReadDescriptor)
class _Watch:
    """Reads the lifeline; the reactor calls :meth:`connectionLost` with ``ConnectionDone``
    at end of file (from :meth:`doRead`, or at once on a hang-up).

    A reactor that shuts down calls it too, with ``ConnectionLost``: not the parent's end.
    """

    def __init__(self, fd: int, on_end: Callable[[], Any]) -> None:
        self.fd = fd
        self.on_end: Callable[[], Any] | None = on_end

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "lifeline"

    def doRead(self) -> Any:  # noqa: N802 - Twisted's name
        try:
            data = os.read(self.fd, 512)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        # Nothing is meant to be written; only the end matters.
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        on_end, self.on_end = self.on_end, None
        if on_end is not None and reason.check(ConnectionDone):
            on_end()


def watch(reactor: Any, fd: int, on_end: Callable[[], Any]) -> None:
    """Call ``on_end()`` once, in the reactor's thread, when ``fd`` reaches end of file.

    Call it from the reactor's thread (``reactor.callWhenRunning`` will do). A parent that
    is already gone is seen at once.
    """
    os.set_blocking(fd, False)
    reactor.addReader(_Watch(fd, on_end))
