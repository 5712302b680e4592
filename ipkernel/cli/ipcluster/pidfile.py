"""The pid file of ``ipcluster``: one running cluster per ``$IPKERNEL_DIR``, found by PID.

``<ipkernel_dir>/ipcluster.pid`` (mode 0600) exists while an ipcluster runs. Its first line
is the ipcluster's PID; each further line is ``<role> <pid>`` for one process it started::

    20466
    controller 20507
    forkengines 20508
    engine 20531

``ipcluster stop`` reads the first line; the others let a later ipcluster (or ``ipcluster
stop``) clean up after one that was killed: :func:`stop_leftovers` stops the listed
processes still running ipkernel code. Everything here is plain blocking code (no reactor):
it runs before the reactor starts and in ``ipcluster stop``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ipkernel import paths
from ipkernel.cli.processes import DEFAULT_GRACE, process_alive

__all__ = [
    "PID_FILE",
    "ClusterRecord",
    "PidFileError",
    "pid_file_path",
    "process_runs",
    "read_pid_file",
    "remove_pid_file",
    "stop_leftovers",
    "take_pid_file",
    "wait_gone",
    "write_pid_file",
]

#: Name of the pid file in the state directory.
PID_FILE = "ipcluster.pid"


class PidFileError(Exception):
    """The pid file cannot be taken: another ipcluster runs, or the file is not a pid file."""


@dataclass
class ClusterRecord:
    """What the pid file holds: the ipcluster's PID and ``(role, pid)`` of its children."""

    pid: int
    children: list[tuple[str, int]] = field(default_factory=list)

    def to_text(self) -> str:
        """The pid file's text: the PID on the first line, then ``<role> <pid>`` lines."""
        return "".join([f"{self.pid}\n", *(f"{role} {pid}\n" for role, pid in self.children)])

    @classmethod
    def parse(cls, text: str) -> ClusterRecord:
        """Parse :meth:`to_text`'s format; raises ``ValueError`` if it is not that."""
        lines = [line.split() for line in text.splitlines() if line.strip()]
        if not lines or len(lines[0]) != 1 or not lines[0][0].isdigit():
            raise ValueError("the first line is not a process id")
        children = []
        for fields in lines[1:]:
            if len(fields) != 2 or not fields[1].isdigit():
                raise ValueError(f"not a '<role> <pid>' line: {' '.join(fields)!r}")
            children.append((fields[0], int(fields[1])))
        return cls(int(lines[0][0]), children)


def pid_file_path() -> Path:
    """``<ipkernel_dir>/ipcluster.pid``."""
    return paths.ipkernel_dir() / PID_FILE


def read_pid_file(path: Path) -> ClusterRecord:
    """Read a pid file; raises ``FileNotFoundError``, or ``ValueError`` naming ``path``."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        return ClusterRecord.parse(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not an ipcluster pid file: {exc}") from None


def write_pid_file(path: Path, record: ClusterRecord, exclusive: bool = False) -> None:
    """Write ``record`` to ``path`` (mode 0600), atomically.

    With ``exclusive`` the file must not exist yet (``FileExistsError`` otherwise), so two
    ipclusters starting at once cannot both take it.
    """
    path = Path(path)
    data = record.to_text().encode("ascii")
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
    os.replace(temp, path)


def remove_pid_file(path: Path, pid: int) -> None:
    """Remove ``path`` if it is still ``pid``'s (never another ipcluster's)."""
    try:
        if read_pid_file(path).pid == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


# --- processes by PID --------------------------------------------------


def _cmdline(pid: int) -> str | None:
    """``pid``'s command line, or None where /proc cannot tell."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace")


def process_runs(pid: int, marker: str) -> bool:
    """Whether live process ``pid`` looks like ours (its command line mentions ``marker``).

    Guards against PIDs reused since a pid file was written; where /proc is missing the
    answer is yes.
    """
    if not process_alive(pid):
        return False
    cmdline = _cmdline(pid)
    return cmdline is None or marker in cmdline


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to end; return those still alive."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if process_alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [pid for pid in left if process_alive(pid)]
    return left


def stop_leftovers(record: ClusterRecord) -> list[int]:
    """Stop the processes of a dead ipcluster's record still running ipkernel; their PIDs."""
    pids = [pid for _role, pid in record.children if process_runs(pid, "ipkernel")]
    left = pids
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        left = wait_gone(left, DEFAULT_GRACE)
        if not left:
            break
    return pids


def take_pid_file(path: Path, err: TextIO) -> ClusterRecord:
    """Create the pid file for this process; raise PidFileError if an ipcluster runs here.

    A stale pid file (its ipcluster is gone) is removed, after stopping the leftover
    processes it lists, and said so on ``err``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    record = ClusterRecord(os.getpid())
    for _attempt in range(3):
        try:
            write_pid_file(path, record, exclusive=True)
            return record
        except FileExistsError:
            pass
        try:
            old = read_pid_file(path)
        except FileNotFoundError:
            continue
        except ValueError as exc:
            raise PidFileError(f"{exc}; remove it if no ipcluster is running")
        if process_runs(old.pid, "ipcluster"):
            raise PidFileError(
                f"an ipcluster (pid {old.pid}) is already running for {path.parent}; "
                "stop it with 'ipcluster stop', or set IPKERNEL_DIR to run another"
            )
        stopped = stop_leftovers(old)
        note = f"; stopped its leftover processes {stopped}" if stopped else ""
        print(f"ipcluster: removed the stale pid file of ipcluster {old.pid}{note}", file=err)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    raise PidFileError(f"cannot create {path}: another ipcluster keeps creating it")
