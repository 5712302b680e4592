"""The frame header and the :class:`Serialized` payload: struct only, never pickle.

Every serialized object, inline or large, starts with a small header made with
:mod:`struct`: a magic string, a format version, the payload kind (an object or a remote
failure), the number of out-of-band buffers and the length of each part. Reading a header
runs no user code, so the controller's data path (streams, shared memory, kept task
payloads) imports this module and never :mod:`ipkernel.serialization`, which loads pickle
and cloudpickle and is for clients and engines only.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from ipkernel.errors import SerializationError

__all__ = [
    "CHUNK_SIZE",
    "KIND_FAILURE",
    "KIND_OBJECT",
    "Serialized",
    "frames_nbytes",
    "malformed",
    "read_header",
]

#: The largest chunk of payload in one frame: small enough for the PB broker's string
#: limit, large enough that per-frame overhead does not matter.
CHUNK_SIZE = 512 * 1024

_MAGIC = b"IPKF"
_VERSION = 1
KIND_OBJECT = 0
KIND_FAILURE = 1
_KIND_NAMES = {KIND_OBJECT: "an object", KIND_FAILURE: "a remote failure"}

# magic, version, kind, two pad bytes, number of out-of-band buffers, pickle stream length;
# then one unsigned 64-bit length per buffer.
_HEAD = struct.Struct("<4sBBxxIQ")
_LENGTH = struct.Struct("<Q")

# A header is never this large in practice; the cap stops a forged buffer count from
# making the receiver build a huge struct format before the size check.
_MAX_BUFFERS = 1 << 24


class Serialized:
    """An object as a header and its parts, the parts being views of the object's memory.

    ``parts[0]`` is the pickle stream, ``parts[1:]`` the out-of-band buffers, each a flat
    ``memoryview`` of bytes; ``header`` announces their lengths (see the module
    docstring). Nothing is copied until :meth:`frames` is called or a transport sends the
    parts, so the object's buffers must not change until then.
    """

    __slots__ = ("header", "kind", "lengths", "nbytes", "parts")

    def __init__(self, kind: int, stream: bytes, buffers: list[memoryview]) -> None:
        self.kind = kind
        self.parts: list[memoryview] = [memoryview(stream), *buffers]
        self.lengths: list[int] = [part.nbytes for part in self.parts]
        #: The size of the payload: every part, header excluded.
        self.nbytes: int = sum(self.lengths)
        self.header: bytes = _HEAD.pack(
            _MAGIC, _VERSION, kind, len(buffers), self.lengths[0]
        ) + b"".join(_LENGTH.pack(n) for n in self.lengths[1:])

    @classmethod
    def from_parts(cls, header: bytes, parts: Sequence[Any]) -> Serialized:
        """A payload from a header checked with :func:`read_header` and parts of the
        lengths it announces (any buffers); nothing is copied or unpickled.

        :raises SerializationError: if the parts do not match the header.
        """
        lengths = read_header(header)
        views = [memoryview(part).cast("B") for part in parts]
        if [view.nbytes for view in views] != lengths:
            raise malformed("the parts do not have the lengths the header announces")
        self = cls.__new__(cls)
        self.kind = KIND_OBJECT
        self.parts = views
        self.lengths = lengths
        self.nbytes = sum(lengths)
        self.header = bytes(header)
        return self

    def frames(self) -> list[bytes]:
        """The inline form: ``[header, chunk, chunk, ...]``, chunks of :data:`CHUNK_SIZE`."""
        frames = [self.header]
        pending: list[memoryview] = []  # pieces of the chunk being filled
        room = CHUNK_SIZE
        for part in self.parts:
            offset, size = 0, part.nbytes
            while offset < size:
                take = min(room, size - offset)
                pending.append(part[offset : offset + take])
                offset += take
                room -= take
                if room == 0:
                    frames.append(b"".join(pending))
                    pending, room = [], CHUNK_SIZE
        if pending:
            frames.append(b"".join(pending))
        return frames


def frames_nbytes(frames: Sequence[bytes]) -> int:
    """The total number of bytes in ``frames``, header included."""
    return sum(len(frame) for frame in frames)


def malformed(reason: str) -> SerializationError:
    return SerializationError(f"malformed frames: {reason}")


def read_header(header: object, kind: int = KIND_OBJECT) -> list[int]:
    """Check a header made by this module; return the lengths of the parts it announces.

    The first length is the pickle stream's, then one per out-of-band buffer. Nothing is
    unpickled, so this may be called on untrusted bytes.

    :param kind: what the payload must hold: 0 for an object, 1 for a remote failure.
    :raises SerializationError: if ``header`` is not such a header, or is of another kind.
    """
    try:
        view = memoryview(header).cast("B")  # type: ignore[arg-type]
    except TypeError:
        raise malformed(f"the header is a {type(header).__name__}, not bytes")
    if view.nbytes < _HEAD.size:
        raise malformed(f"the header has {view.nbytes} bytes, fewer than {_HEAD.size}")
    magic, version, got_kind, nbuffers, stream_len = _HEAD.unpack_from(view)
    if magic != _MAGIC:
        raise malformed("the header does not start with the ipkernel magic string")
    if version != _VERSION:
        raise malformed(
            f"format version {version}, but this side reads version {_VERSION}; "
            "use the same ipkernel version on clients and engines"
        )
    if got_kind != kind:
        raise malformed(
            f"they hold {_KIND_NAMES.get(got_kind, f'kind {got_kind}')}, "
            f"expected {_KIND_NAMES[kind]}"
        )
    if nbuffers > _MAX_BUFFERS or view.nbytes != _HEAD.size + nbuffers * _LENGTH.size:
        raise malformed(f"the header's size does not match its {nbuffers} buffer lengths")
    return [stream_len, *struct.unpack_from(f"<{nbuffers}Q", view, _HEAD.size)]
