"""The ``ipcluster`` a :class:`~ipkernel.Cluster` runs, as a child process.

``python -m ipkernel.cli.ipcluster start ... --lifeline-fd N`` is started in a session of
its own (a Ctrl-C meant for the caller does not reach it), with stdin closed and its
output in two anonymous files (nothing reads it while the cluster runs, so it must not go
to a pipe that could fill). It is up once its output begins with the message ipcluster
prints when every engine has registered; if it exits first, its error message says why.

Its lifeline (:mod:`ipkernel.cli.lifeline`) is the write end of a pipe held here: when
this process ends, however it ends, ipcluster sees end of file and stops every process it
started, as on ``ipcluster stop``. Everything here is plain blocking code: no reactor, no
signal handler, nothing read from stdin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from ipkernel.cli.ipcluster.output import RUNNING
from ipkernel.cli.ipcluster.pidfile import ClusterRecord, read_pid_file, stop_leftovers
from ipkernel.cli.lifeline import OPTION, Lifeline
from ipkernel.errors import ClusterError

__all__ = ["IPClusterProcess"]

# How often to look at the output while waiting for the cluster.
_POLL_INTERVAL = 0.02


def _read(file: IO[bytes]) -> str:
    """Everything written to ``file`` so far (without moving the offset the child shares)."""
    fd = file.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")


class IPClusterProcess:
    """One ``ipcluster start`` child: :meth:`start`, :meth:`wait_until_up`, :meth:`stop`.

    ``args`` are its options, ``env`` its environment (``IPKERNEL_DIR`` set), ``pid_file``
    where it lists the processes it starts.
    """

    def __init__(self, args: list[str], env: dict[str, str], pid_file: Path) -> None:
        self.args = args
        self.env = env
        self.pid_file = pid_file
        self.popen: subprocess.Popen | None = None
        self._lifeline: Lifeline | None = None
        self._out: IO[bytes] | None = None
        self._err: IO[bytes] | None = None
        # The last list of processes seen in the pid file: what to stop should ipcluster
        # itself not.
        self._record: ClusterRecord | None = None

    @property
    def pid(self) -> int | None:
        """The ipcluster's PID once started."""
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        """Start the ipcluster; raises :class:`ClusterError` if it cannot be started."""
        self._lifeline = lifeline = Lifeline()
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        argv = [sys.executable, "-m", "ipkernel.cli.ipcluster", "start", *self.args]
        try:
            self.popen = subprocess.Popen(
                [*argv, OPTION, str(lifeline.read_fd)],
                pass_fds=(lifeline.read_fd,),
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=self._err,
                env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            raise ClusterError(f"cannot start ipcluster ({sys.executable}): {exc}") from None

    def wait_until_up(self, timeout: float) -> None:
        """Return once ipcluster says every engine is up.

        Raises :class:`ClusterError` with ipcluster's message (what failed, with the end
        of the failing process's output) if it exits first, or if it has said nothing
        after ``timeout`` seconds.
        """
        assert self.popen is not None and self._out is not None
        deadline = time.monotonic() + timeout
        while RUNNING not in _read(self._out):
            self._note_record()
            code = self.popen.poll()
            if code is not None:
                raise ClusterError(self._failure(code))
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"ipcluster (pid {self.popen.pid}) has not reported its engines up "
                    f"after {timeout:g} s"
                )
            time.sleep(_POLL_INTERVAL)
        self._note_record()

    def _note_record(self) -> None:
        try:
            self._record = read_pid_file(self.pid_file)
        except (OSError, ValueError):
            pass

    def _failure(self, code: int) -> str:
        assert self._err is not None
        text = _read(self._err).strip()
        if not text:
            return f"ipcluster exited with code {code} before every engine was up"
        return text.removeprefix("ipcluster: ")

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Stop the ipcluster and every process it started; return the PIDs that outlived it.

        SIGTERM (ipcluster then stops its processes, SIGKILL after a grace period), SIGKILL
        if it has not exited after ``timeout`` seconds; then any process it listed that
        still runs ipkernel code is stopped by PID (normally none). Idempotent.
        """
        if self.popen is not None:
            self._note_record()
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        leftovers = stop_leftovers(self._record) if self._record is not None else []
        self._record = None
        for closing in (self._lifeline, self._out, self._err):
            if closing is not None:
                closing.close()
        self._lifeline = self._out = self._err = None
        return leftovers
