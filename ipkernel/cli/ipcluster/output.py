"""What ipcluster writes: the lines that connect a client, and the cluster's log file.

The terminal gets only ipcluster's own messages; children's output and ipcluster's notes
go to ``<log-dir>/ipcluster-<pid>.log`` (see :class:`~ipkernel.cli.processes.ChildProcess`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from ipkernel import paths

__all__ = ["RUNNING", "connect_lines", "open_log", "running_message"]

#: How the message printed once every engine is up begins (:class:`ipkernel.Cluster` waits
#: for it).
RUNNING = "ipcluster: a controller and "


def connect_lines(security_dir: Path, has_task_client: bool = True) -> list[str]:
    """The Python lines that connect clients to a controller with key files in ``security_dir``.

    The short form (no argument) is used when that is the default location
    (``~/.ipkernel/security``); otherwise the key files are named, so the lines work in a
    session whatever its ``IPKERNEL_DIR``.
    """
    default = Path.home().absolute() / ".ipkernel" / "security"
    explicit = Path(security_dir) != default
    mec = repr(str(Path(security_dir) / paths.MEC_FURL)) if explicit else ""
    tc = repr(str(Path(security_dir) / paths.TC_FURL)) if explicit else ""
    lines = ["from ipkernel import client", f"mec = client.MultiEngineClient({mec})"]
    if has_task_client:
        lines.append(f"tc = client.TaskClient({tc})")
    return lines


def running_message(count: int, security_dir: Path, has_task_client: bool = True) -> str:
    """What ipcluster prints once ``count`` engines are up: that it runs, how to connect,
    and the status page's URL (from ``ipcontroller-web.url``, when the controller serves
    one)."""
    engines = f"{count} engine" if count == 1 else f"{count} engines"
    # Here, not at the top: the package of the status page loads the controller's code,
    # which ipcluster imports only after forking the process that loads the engines.
    from ipkernel.adapters.web.access import read_url_file

    lines = connect_lines(security_dir, has_task_client)
    url = read_url_file(security_dir)
    return (
        f"{RUNNING}{engines} are running "
        "(stop with Ctrl-C or `ipcluster stop`).\nConnect with:\n\n"
        + "".join(f"    {line}\n" for line in lines)
        + (f"\nStatus page: {url}\n" if url else "")
    )


def open_log(log_dir: Path) -> tuple[TextIO, Path]:
    """Open ``<log_dir>/ipcluster-<pid>.log`` for appending, line-buffered; raises ``OSError``.

    The directory is created (mode 0700) if needed. Returns the file and its path.
    """
    directory = paths.ensure_private_dir(log_dir)
    path = directory / f"ipcluster-{os.getpid()}.log"
    return open(path, "a", buffering=1, encoding="utf-8"), path  # noqa: SIM115
