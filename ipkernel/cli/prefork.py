"""Children that ``ipcluster`` forks before its reactor starts: no interpreter to start and
nothing to import again.

By the time ``ipcluster`` has parsed its options it has loaded Twisted and the
controller's code; a child started with ``spawnProcess`` is a new interpreter that loads
them all again, about half a CPU-second on a small machine, and on the way to the key
files. So before it installs its reactor, ``ipcluster`` forks its local long-lived
children itself (:func:`fork_child`): the controller, and the process that forks the local
engines. Each runs the ``main(args)`` of the module its command line names, as ``python
-m module args`` would, with its standard output and error on pipes, its standard input
on ``/dev/null`` and the lifeline as descriptor :data:`~ipkernel.cli.lifeline.CHILD_FD`.

:class:`Preforked` keeps them until the cluster asks its runner to spawn a process of that
role with that very command line: the runner then *adopts* the running child
(:meth:`Preforked.adopt`), which from then on behaves as a spawned one: its output read
line by line, its end reaped by the reactor and reported with its exit status. A child
nobody adopts is stopped (:meth:`Preforked.discard`).
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import ssl
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.process import registerReapProcessHandler, unregisterReapProcessHandler
from twisted.python.failure import Failure
from zope.interface import implementer

from ipkernel.cli.lifeline import CHILD_FD

__all__ = ["FORKABLE", "SHARED", "Preforked", "fork_child", "load_shared"]

#: The modules whose ``main(args)`` a forked child may run.
FORKABLE = ("ipkernel.cli.ipcontroller", "ipkernel.cli.forkengines")

#: What the controller and the engines both load (the reactor's modules, not the reactor
#: itself, TLS, PB, the key files): :func:`load_shared` loads it once for every child.
SHARED = (
    "twisted.internet.epollreactor",
    "twisted.internet.default",
    "twisted.internet.ssl",
    "twisted.spread.pb",
    "twisted.logger",
    "twisted.application.service",
    "ipkernel.security",
    "ipkernel.wire.broker",
    "ipkernel.wire.tls",
)


def load_shared() -> None:
    """Import :data:`SHARED` (what this platform lacks, such as epoll, is skipped: each
    child imports what it needs), and have OpenSSL read its configuration, which it does
    when the first TLS context is made."""
    for name in SHARED:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _module(argv: Sequence[str]) -> str | None:
    """The module ``argv`` runs (``[python, '-m', module, ...]``) if it is forkable."""
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m" and argv[2] in FORKABLE:
        return argv[2]
    return None


def fork_child(argv: Sequence[str], lifeline_fd: int | None) -> tuple[int, int, int]:
    """Fork a child that runs what ``argv`` (``[sys.executable, '-m', module, *args]``,
    ``module`` in :data:`FORKABLE`) would; return ``(pid, stdout fd, stderr fd)``, the
    read ends of its output pipes.

    Call it before the reactor is installed: the child installs its own.

    :raises ValueError: if ``argv`` runs no forkable module.
    :raises RuntimeError: if the reactor is installed already.
    """
    module = _module(argv)
    if module is None:
        raise ValueError(f"cannot fork {list(argv)!r}: not a forkable module")
    if "twisted.internet.reactor" in sys.modules:
        raise RuntimeError("the reactor is installed: a forked child would share it")
    importlib.import_module(module)  # loaded once, here, for every child
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    # What is loaded now is never garbage: left out of every collection, in this process
    # and the child, its pages stay shared instead of being copied when a collection in
    # the child touches them.
    gc.freeze()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's side; the tests see what it does
        _become(module, list(argv[3:]), out_w, err_w, lifeline_fd)
    os.close(out_w)
    os.close(err_w)
    return pid, out_r, err_r


def _become(module: str, args: list[str], out: int, err: int, lifeline_fd: int | None) -> None:
    """In the child: set up the descriptors, run ``module.main(args)``, and exit."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        keep = 3
        if lifeline_fd is not None:
            os.dup2(lifeline_fd, CHILD_FD)
            keep = CHILD_FD + 1
        # Nothing of ipcluster's stays open here (its log, its pid file, the pipes).
        os.closerange(keep, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.enable()  # ipcluster may have turned it off while it loaded modules
        main = importlib.import_module(module)
        sys.argv = [main.__file__ or module, *args]
        result = main.main(args)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        # Never return into ipcluster's stack, nor run its exit handlers.
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


@implementer(IReadDescriptor)
class _PipeReader:
    """Reads one output pipe of an adopted child into its protocol, in the reactor."""

    def __init__(self, process: _AdoptedProcess, fd: int, child_fd: int) -> None:
        self._process = process
        self._fd: int | None = fd
        self._child_fd = child_fd

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def doRead(self) -> Any:  # noqa: N802 - Twisted's name
        try:
            data = os.read(self._fd, 65536) if self._fd is not None else b""
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.close()
            return None
        self._process.protocol.childDataReceived(self._child_fd, data)
        return None

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self.close()

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return f"prefork-pipe-{self._process.pid}"

    def close(self) -> None:
        if self._fd is not None:
            self._process.reactor.removeReader(self)
            fd, self._fd = self._fd, None
            os.close(fd)
            self._process.pipe_closed()


class _AdoptedProcess:
    """The transport of a child adopted by a :class:`~ipkernel.cli.processes.ChildProcess`:
    its pid, signals by name, its end once reaped and its pipes drained."""

    def __init__(self, reactor: Any, pid: int, out: int, err: int, protocol: Any) -> None:
        self.reactor = reactor
        self.pid: int | None = pid
        self.protocol = protocol
        self._status: int | None = None
        self._open = 2
        readers = [_PipeReader(self, out, 1), _PipeReader(self, err, 2)]
        for reader in readers:
            os.set_blocking(reader.fileno(), False)
        protocol.makeConnection(self)
        for reader in readers:
            reactor.addReader(reader)
        registerReapProcessHandler(pid, self)

    def closeStdin(self) -> None:  # noqa: N802 - Twisted's name
        """Its standard input is ``/dev/null`` already."""

    def signalProcess(self, name: str) -> None:  # noqa: N802 - Twisted's name
        if self.pid is None:
            raise ProcessExitedAlready()
        os.kill(self.pid, getattr(signal, f"SIG{name}"))

    def reapProcess(self) -> None:  # noqa: N802 - Twisted's name
        if self.pid is None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid:
            unregisterReapProcessHandler(self.pid, self)
            self.processEnded(status)

    def processEnded(self, status: int) -> None:  # noqa: N802 - Twisted's name
        self._status = status
        self.pid = None
        self._maybe_ended()

    def pipe_closed(self) -> None:
        self._open -= 1
        self._maybe_ended()

    def _maybe_ended(self) -> None:
        # As spawnProcess does: the end is reported once the output has all been read.
        if self._status is None or self._open:
            return
        status, self._status = self._status, None
        code = os.waitstatus_to_exitcode(status)
        if code == 0:
            reason: Exception = ProcessDone(status)
        elif code > 0:
            reason = ProcessTerminated(code, None, status)
        else:
            reason = ProcessTerminated(None, -code, status)
        self.protocol.processEnded(Failure(reason))


class Preforked:
    """The children forked before the reactor, waiting to be adopted by role and argv."""

    def __init__(self) -> None:
        self._children: list[tuple[str, list[str], int, int, int]] = []
        self._forked = 0

    def __bool__(self) -> bool:
        """Whether any child was forked (adopted since or not)."""
        return self._forked > 0

    def fork(self, role: str, argv: Sequence[str], lifeline_fd: int | None) -> int:
        """Fork a child for ``role`` running ``argv`` (see :func:`fork_child`); its pid."""
        pid, out, err = fork_child(argv, lifeline_fd)
        self._children.append((role, list(argv), pid, out, err))
        self._forked += 1
        return pid

    def adopt(self, role: str, argv: Sequence[str], protocol: Any, reactor: Any) -> bool:
        """Hand the child of ``role`` forked with exactly ``argv`` to ``protocol`` (a
        ``ProcessProtocol``), as ``spawnProcess`` would have; False if there is none."""
        for index, (forked_role, forked_argv, pid, out, err) in enumerate(self._children):
            if forked_role == role and forked_argv == list(argv):
                del self._children[index]
                _AdoptedProcess(reactor, pid, out, err, protocol)
                return True
        return False

    def discard(self) -> None:
        """Stop and reap the children nobody adopted (their command changed, say)."""
        children, self._children = self._children, []
        for _, _, pid, out, err in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            os.close(out)
            os.close(err)
