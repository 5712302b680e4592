"""Probes: can this process open another's segments?

A probe is a tiny segment a process keeps open for its life (:func:`local_probe`); its
handle travels in registration infos and request options. Another process that can open
it can open the prober's payload segments too: :func:`same_host` is the one check every
side makes before choosing shared memory.
"""

from __future__ import annotations

import os
import secrets
import threading

from ipkernel.errors import SharedMemoryError
from ipkernel.shm.handle import Handle
from ipkernel.shm.host import available, host_identity
from ipkernel.shm.layout import PROBE_PREFIX
from ipkernel.shm.opening import open_one
from ipkernel.shm.segment import create_file

__all__ = ["can_open", "local_probe", "same_host"]

_probe_lock = threading.Lock()
_probe: tuple[int, Handle] | None = None  # (pid that made it, handle)


def local_probe() -> Handle | None:
    """This process's probe handle (made on first use), or None without shared memory."""
    global _probe
    if not available():
        return None
    with _probe_lock:
        pid = os.getpid()
        if _probe is None or _probe[0] != pid:  # a forked child needs its own
            token = secrets.token_hex(16)
            try:
                fd = create_file(PROBE_PREFIX + token, 0)
            except SharedMemoryError:
                return None
            _probe = (pid, Handle(host_identity() or "", pid, fd, token, 0))
        return _probe[1]


_checked: dict[tuple[int, str], bool] = {}


def can_open(probe: Handle) -> bool:
    """Whether this process can open segments of the process that made ``probe``.

    The answer is remembered per probe.
    """
    key = (probe.pid, probe.token)
    known = _checked.get(key)
    if known is None:
        try:
            os.close(open_one(probe, PROBE_PREFIX))
            known = True
        except SharedMemoryError:
            known = False
        if len(_checked) > 4096:
            _checked.clear()
        _checked[key] = known
    return known


def same_host(probe: object) -> bool:
    """Whether this process can open the segments of the process that made ``probe``.

    ``probe`` is that process's probe :class:`~ipkernel.shm.handle.Handle` or its wire
    form (:meth:`~ipkernel.shm.handle.Handle.to_wire`). True when it comes from this
    host, pid namespace and user (its ``host`` is this process's
    :func:`~ipkernel.shm.host.host_identity`) and it opens; False otherwise, for None or
    a malformed value, and where shared memory is not available. The answer is
    remembered per probe (see :func:`can_open`).
    """
    if not isinstance(probe, Handle):
        try:
            probe = Handle.from_wire(probe)
        except ValueError:
            return False
    here = host_identity()
    return here is not None and probe.host == here and can_open(probe)
