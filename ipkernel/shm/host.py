"""Which processes can share segments: this process's host identity.

Two processes can share segments when they run under the same kernel boot, in the same
pid namespace (so that ``/proc/<pid>`` names the same process for both) and as the same
user. :func:`host_identity` says so in one string; shared memory needs Linux with
``memfd_create`` and ``/proc``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["available", "host_identity"]


def _read_host_identity() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.stat("/proc/self/ns/pid")
    except OSError:
        return None
    # The boot id names the kernel (this host, this boot); the pid namespace says that
    # /proc/<pid> means the same process on both sides; the user id is who may open it.
    return f"{boot}/{pidns.st_dev}:{pidns.st_ino}/{os.getuid()}"


_host_identity: str | None = None
_host_identity_read = False


def host_identity() -> str | None:
    """A string equal for two processes exactly when they can share segments, or None.

    Equal means: same kernel boot, same pid namespace, same user. None where shared
    memory is not supported (not Linux, no ``memfd_create``, no ``/proc``).
    """
    global _host_identity, _host_identity_read
    if not _host_identity_read:
        _host_identity = _read_host_identity() if _supported() else None
        _host_identity_read = True
    return _host_identity


def _supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


def available() -> bool:
    """True when this process can create and open segments."""
    return host_identity() is not None
