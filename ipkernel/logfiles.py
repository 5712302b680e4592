"""Where a process's log goes: its own file in the log directory, and standard error.

Every ipkernel process (controller, engine, the many-engines process) logs through
Twisted's global log; these helpers send that log to ``<log-dir>/<name>-<pid>.log`` and to
standard error. Apart from :mod:`ipkernel.tap` so that an engine loads none of the
controller's code to log.
"""

from __future__ import annotations

import os
import sys

from twisted.logger import FileLogObserver, formatEventAsClassicLogText, globalLogPublisher

from ipkernel import paths

__all__ = ["log_to_file", "stderr_observer"]


def log_to_file(log_dir: str | None, name: str) -> str:
    """Send this process's log to ``<log-dir>/<name>-<pid>.log``; return the path."""
    directory = paths.ensure_private_dir(paths.log_dir(log_dir))
    path = directory / f"{name}-{os.getpid()}.log"
    stream = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    globalLogPublisher.addObserver(FileLogObserver(stream, formatEventAsClassicLogText))
    return str(path)


def stderr_observer() -> FileLogObserver:
    """A log observer writing classic text lines to stderr."""
    return FileLogObserver(sys.stderr, formatEventAsClassicLogText)
