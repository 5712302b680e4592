"""A process's connections end with it, even when a child it forked lives on.

A child made by ``os.fork()`` (user code on an engine calling it, or ``multiprocessing``
with the fork start method) inherits every descriptor, the sockets of this process's
connections included. The kernel closes a TCP connection only when the last descriptor
of its socket is closed, so while such a child runs, the death of its parent would go
unnoticed: the connection stays open, and the child's kernel keeps acknowledging the
peer's keepalive probes. A killed engine would stay registered.

So each connection's socket is :func:`register` ed here, and in a forked child every
registered descriptor is pointed at ``/dev/null`` (``dup2``, before the child runs any
code of its own). The child cannot use those connections anyway (the reactor thread that
served them did not survive the fork); its parent's sockets are untouched.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

__all__ = ["register"]

# The sockets of this process's open connections (kept alive by their transports).
_sockets: weakref.WeakSet[Any] = weakref.WeakSet()


def register(sock: Any) -> None:
    """Let ``sock`` (a socket object) be detached from any child forked from now on."""
    _sockets.add(sock)


def _detach_in_child() -> None:
    if not _sockets:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for sock in list(_sockets):
            try:
                fd = sock.fileno()
            except (OSError, ValueError):
                continue
            if fd >= 0:
                os.dup2(null, fd, inheritable=False)
    finally:
        os.close(null)
    _sockets.clear()


if hasattr(os, "register_at_fork"):  # no fork, no inheritance, elsewhere
    os.register_at_fork(after_in_child=_detach_in_child)
