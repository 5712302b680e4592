"""``ipcluster stop``: find the running ipcluster by its pid file, SIGTERM it, wait for it.

:func:`stop_ipcluster` does it (and :meth:`ipkernel.Cluster.stop` on an attached cluster);
:func:`stop_main` is the command.

A pid file whose ipcluster is gone (it was killed) is stale: it is removed, and the
processes it lists that still run ipkernel code are stopped
(:func:`~ipkernel.cli.ipcluster.pidfile.stop_leftovers`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from twisted.python import usage

from ipkernel.cli.ipcluster.options import StopOptions
from ipkernel.cli.ipcluster.pidfile import (
    pid_file_path,
    process_runs,
    read_pid_file,
    remove_pid_file,
    stop_leftovers,
    wait_gone,
)
from ipkernel.errors import ClusterError

__all__ = ["stop_ipcluster", "stop_main"]


def stop_ipcluster(path: Path, timeout: float) -> int:
    """Stop the ipcluster of pid file ``path``: SIGTERM it, wait up to ``timeout`` seconds.

    Returns its PID once it has exited. Raises :class:`ClusterError` saying why when none
    runs (no pid file; a stale one, which is removed after stopping the leftover processes
    it lists), it cannot be signalled, or it has not exited in time.
    """
    try:
        record = read_pid_file(path)
    except FileNotFoundError:
        raise ClusterError(f"no ipcluster is running for {path.parent} (no {path})") from None
    except (OSError, ValueError) as exc:
        raise ClusterError(str(exc)) from None
    if not process_runs(record.pid, "ipcluster"):
        stopped = stop_leftovers(record)
        remove_pid_file(path, record.pid)
        note = f"; stopped its leftover processes {stopped}" if stopped else ""
        raise ClusterError(
            f"no ipcluster is running for {path.parent}: the pid file {path} "
            f"was stale (pid {record.pid} is gone) and is removed{note}"
        )
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise ClusterError(f"not allowed to signal process {record.pid}") from None
    if wait_gone([record.pid], timeout):
        raise ClusterError(
            f"ipcluster {record.pid} has not exited after {timeout:g} s; "
            "it may still be stopping its processes"
        )
    return record.pid


def stop_main(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``ipcluster stop``: SIGTERM the running ipcluster and wait for it; return the exit code."""
    options = StopOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as exc:
        print(f"ipcluster stop: {exc}\nTry 'ipcluster stop --help'.", file=err)
        return 2
    try:
        pid = stop_ipcluster(pid_file_path(), options["timeout"])
    except ClusterError as exc:
        print(f"ipcluster stop: {exc}", file=err)
        return 1
    print(f"ipcluster stop: stopped ipcluster {pid}", file=out)
    return 0
