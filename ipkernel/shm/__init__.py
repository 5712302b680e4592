"""Shared memory between processes of one host: how large payloads skip the network.

When a client and an engine run on the same host (and as the same user), a large payload
does not need to be encrypted, relayed by the controller and decrypted: the sender writes
its parts once into a *segment*, the controller relays a small handle, and the receiver
maps the segment. The mapped memory is the receiver's one copy of the data.

The modules, one concept each: :mod:`~ipkernel.shm.host` (which processes can share:
the host identity), :mod:`~ipkernel.shm.layout` (where parts and pieces go in a segment),
:mod:`~ipkernel.shm.handle` (the small, relayable :class:`Handle`),
:mod:`~ipkernel.shm.segment` (the sender's :class:`Segment`: memory files written in
parallel pieces, then sealed), :mod:`~ipkernel.shm.opening` (the receiver opens the
sender's descriptors through ``/proc``, checked), :mod:`~ipkernel.shm.mapping` (each
large part one contiguous copy-on-write mapping), :mod:`~ipkernel.shm.libc` (the mapping
calls Python's :mod:`mmap` lacks), :mod:`~ipkernel.shm.release` (freeing pages in a
low-priority background thread), :mod:`~ipkernel.shm.probe` (can this process open
another's segments: :func:`same_host`) and :mod:`~ipkernel.shm.keeper` (a sender holds
its segments until their receivers have opened them or exited).

Segments never appear in ``/dev/shm`` or any file system, and the kernel frees one as
soon as no process holds it, so a segment never outlives both ends. Nothing here touches
the network or Twisted except :class:`SegmentKeeper`, which takes a reactor to watch
processes.
"""

from ipkernel.errors import SharedMemoryError
from ipkernel.shm.handle import Handle
from ipkernel.shm.host import available, host_identity
from ipkernel.shm.keeper import SegmentKeeper
from ipkernel.shm.layout import MAP_SEPARATELY
from ipkernel.shm.mapping import map_parts
from ipkernel.shm.opening import close_segment, open_segment
from ipkernel.shm.probe import can_open, local_probe, same_host
from ipkernel.shm.segment import Segment

__all__ = [
    "MAP_SEPARATELY",
    "Handle",
    "Segment",
    "SegmentKeeper",
    "SharedMemoryError",
    "available",
    "can_open",
    "close_segment",
    "host_identity",
    "local_probe",
    "map_parts",
    "open_segment",
    "same_host",
]
