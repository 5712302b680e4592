"""The controller's options: ``ipcontroller``'s, ``twistd ipcontroller``'s, and the controller
options of ``ipcluster``.

Apart from :mod:`ipkernel.tap` so that reading them loads no controller code: ``ipcluster``
parses them before it forks the process that loads the engines, which should not wait for
the controller's modules to load first.
"""

from __future__ import annotations

from twisted.python import usage

from ipkernel.wire.keepalive import DEFAULT_PEER_TIMEOUT

__all__ = ["Options"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{value} is not a TCP port")
    return port


def _engine_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds < 1e6:
        raise ValueError(f"--engine-timeout must be a number of seconds from 1, not {value!r}")
    return seconds


def _size(value: str) -> int:
    """Bytes from ``1048576``, ``512K``, ``256M``, ``256MiB``, ``1G`` (powers of 1024)."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)])
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise ValueError(f"{value!r} is not a size such as 256M, 1G or a number of bytes")
    return int(number * _UNITS[unit])


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return seconds


class Options(usage.Options):
    """Options of the controller (``ipcontroller --help``)."""

    longdesc = (
        "Run the ipkernel controller: engines register with it and MultiEngine and Task "
        "clients connect to it, all over TLS. Key files for engines and clients are "
        "written to the security directory."
    )
    optParameters = [
        ["ip", None, "127.0.0.1", "Address to listen on; 0.0.0.0 for every interface."],
        [
            "engine-port",
            None,
            0,
            "Port for engines; 0 takes a free one, or with --reuse-keys the earlier run's.",
            _port,
        ],
        [
            "client-port",
            None,
            0,
            "Port for clients; 0 takes a free one, or with --reuse-keys the earlier run's.",
            _port,
        ],
        ["security-dir", None, None, "Where key files go (default: $IPKERNEL_DIR/security)."],
        ["log-dir", None, None, "Where the log goes (default: $IPKERNEL_DIR/log)."],
        [
            "db",
            None,
            None,
            "SQLite file that keeps task records, so that a controller restarted with "
            "--reuse-keys --db FILE keeps every result and runs unfinished tasks again; "
            "large task payloads go to FILE-payloads/ (default: in memory).",
        ],
        [
            "task-memory",
            None,
            None,
            "Without --db: memory for large task payloads held by the controller; past "
            "it they go to a temporary directory (default: 256M).",
            _size,
        ],
        [
            "task-max-age",
            None,
            None,
            "Remove finished task records (and their results) this many seconds after "
            "they finished (default: keep them until a client's clear()).",
            _positive_seconds,
        ],
        [
            "engine-timeout",
            None,
            DEFAULT_PEER_TIMEOUT,
            "Seconds after which an engine whose host sends nothing, not even a TCP "
            "acknowledgement, is declared dead (its host or network gone; an engine busy "
            "computing still answers). An engine process that dies is noticed at once.",
            _engine_timeout,
        ],
        [
            "location",
            None,
            None,
            "Host name or address written into key files (default: the listen address, "
            "or this host's name when listening on 0.0.0.0).",
        ],
        [
            "web-ip",
            None,
            "127.0.0.1",
            "Address of the status page; HTTPS with the controller's certificate on any "
            "address but a loopback one.",
        ],
        ["web-port", None, 0, "Port of the status page (default: a free one).", _port],
    ]
    optFlags = [
        [
            "reuse-keys",
            None,
            "Keep the certificate, secrets and ports of an earlier run, so copied key "
            "files stay valid.",
        ],
        ["no-web", None, "Serve no status page."],
    ]
    #: The name of each option's value in ``ipcontroller --help``.
    metavars = {
        "ip": "ADDRESS",
        "engine-port": "PORT",
        "client-port": "PORT",
        "security-dir": "DIR",
        "log-dir": "DIR",
        "db": "FILE",
        "engine-timeout": "SECONDS",
        "task-memory": "SIZE",
        "task-max-age": "SECONDS",
        "location": "HOST",
        "web-ip": "ADDRESS",
        "web-port": "PORT",
    }

    def postOptions(self) -> None:  # noqa: N802 - Twisted's name
        if self["db"] and self["task-memory"] is not None:
            raise usage.UsageError(
                "--task-memory applies without --db only: with --db every large task "
                "payload is kept on disk, beside the database"
            )
