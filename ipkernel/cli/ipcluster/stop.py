"""``ipcluster stop``: find the running ipcluster by its pid file, SIGTERM it, wait for it.

A pid file whose ipcluster is gone (it was killed) is stale: it is removed, and the
processes it lists that still run ipkernel code are stopped
(:func:`~ipkernel.cli.ipcluster.pidfile.stop_leftovers`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
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

__all__ = ["stop_main"]


def stop_main(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``ipcluster stop``: SIGTERM the running ipcluster and wait for it; return the exit code."""
    options = StopOptions()
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as exc:
        print(f"ipcluster stop: {exc}\nTry 'ipcluster stop --help'.", file=err)
        return 2
    path = pid_file_path()
    try:
        record = read_pid_file(path)
    except FileNotFoundError:
        print(f"ipcluster stop: no ipcluster is running for {path.parent} (no {path})", file=err)
        return 1
    except (OSError, ValueError) as exc:
        print(f"ipcluster stop: {exc}", file=err)
        return 1
    if not process_runs(record.pid, "ipcluster"):
        stopped = stop_leftovers(record)
        remove_pid_file(path, record.pid)
        note = f"; stopped its leftover processes {stopped}" if stopped else ""
        print(
            f"ipcluster stop: no ipcluster is running for {path.parent}: the pid file {path} "
            f"was stale (pid {record.pid} is gone) and is removed{note}",
            file=err,
        )
        return 1
    try:
        os.kill(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        print(f"ipcluster stop: not allowed to signal process {record.pid}", file=err)
        return 1
    if wait_gone([record.pid], options["timeout"]):
        print(
            f"ipcluster stop: ipcluster {record.pid} has not exited after "
            f"{options['timeout']:g} s; it may still be stopping its processes",
            file=err,
        )
        return 1
    print(f"ipcluster stop: stopped ipcluster {record.pid}", file=out)
    return 0
