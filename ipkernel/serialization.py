"""User data as frames: how clients and engines serialize objects and remote failures.

Only clients and engines use this module; the controller passes frames through without
looking at them (it must never unpickle user data).

A serialized object is a list of ``bytes`` called *frames*:

``frames[0]``
    a small header made with :mod:`struct` (no pickle, so a receiver can check it before
    trusting anything): a magic string, a format version, the payload kind (an object or a
    remote failure), the length of the pickle stream and the length of each out-of-band
    buffer.
``frames[1:]``
    the *payload*: the pickle stream followed by the out-of-band buffers, concatenated
    logically and cut into chunks of exactly :data:`CHUNK_SIZE` bytes (the last one may be
    shorter). A chunk may span the end of one part and the start of the next. This keeps
    the number of frames at ``1 + ceil(total / CHUNK_SIZE)`` however many small buffers an
    object holds (a list of ten thousand tiny arrays is still a handful of frames), and it
    gives the receiver one strict rule to check.

Objects are pickled with protocol 5 by :class:`cloudpickle.CloudPickler`: functions, lambdas,
closures and classes defined in ``__main__`` travel by value, and numpy arrays (anything
that hands pickle a :class:`pickle.PickleBuffer`) travel as out-of-band buffers, not copied
into the pickle stream. ``CloudPickler`` subclasses the C pickler and only steps in for
functions and classes, so plain data pickles as fast as with :mod:`pickle` itself.

The receiver preallocates one ``bytearray`` per part and copies each chunk into place, so
there is no extra full copy, and arrays come back writable.

Frames are the *inline* form, for small objects sent inside one message. A large object
travels as a :class:`Serialized` instead (the same header, and the parts as views of the
object's own memory, nothing copied), which :mod:`ipkernel.wire.transfer` streams in
chunks or puts in shared memory (:mod:`ipkernel.shm`); :func:`deserialize` takes frames
or such a payload once received.
"""

from __future__ import annotations

import io
import pickle
import traceback
from collections.abc import Sequence
from typing import Any

import cloudpickle

from ipkernel.errors import RemoteError, SerializationError
from ipkernel.frames import (
    CHUNK_SIZE,
    KIND_FAILURE,
    KIND_OBJECT,
    Serialized,
    malformed,
    read_header,
)

__all__ = [
    "deserialize",
    "deserialize_failure",
    "dump",
    "load",
    "load_function",
    "serialize",
    "serialize_failure",
]


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", cls.__name__)
    if module in (None, "builtins", "__main__"):
        return qualname
    return f"{module}.{qualname}"


def _dumps(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``; return the stream and the raw out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    cloudpickle.CloudPickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
    # raw() is a flat byte view of C- or Fortran-contiguous memory; numpy only hands out
    # contiguous buffers (it pickles other arrays in band).
    return stream.getvalue(), [buf.raw() for buf in buffers]


def _frame(kind: int, stream: bytes, buffers: list[memoryview]) -> list[bytes]:
    return Serialized(kind, stream, buffers).frames()


def dump(obj: Any, name: str | None = None) -> Serialized:
    """Serialize ``obj`` without copying its out-of-band buffers (see :class:`Serialized`).

    :param name: what the object is called on the caller's side (for example the key being
        pushed); it only makes the error message clearer.
    :raises SerializationError: if ``obj`` (or anything inside it) cannot be pickled. The
        message names the type of ``obj``, ``name`` when given, and the underlying error.
    """
    try:
        stream, buffers = _dumps(obj)
    except Exception as exc:
        what = f"the value of {name!r}" if name is not None else "an object"
        raise SerializationError(
            f"cannot serialize {what}: object of type {_type_name(obj)!r} cannot be pickled "
            f"({type(exc).__name__}: {exc}); send a picklable value instead, for example "
            "plain data such as lists, dicts or arrays, or create the object where it is "
            "used (with execute())"
        ) from exc
    return Serialized(KIND_OBJECT, stream, buffers)


def serialize(obj: Any, name: str | None = None) -> list[bytes]:
    """Serialize ``obj`` into frames (see the module docstring).

    :param name: as for :func:`dump`.
    :raises SerializationError: as :func:`dump`.
    """
    return dump(obj, name).frames()


def _unframe(frames: Sequence[bytes], kind: int) -> tuple[Any, list[bytearray]]:
    """Check ``frames`` against their header; return the pickle stream and the buffers."""
    if not isinstance(frames, (list, tuple)) or not frames:
        raise malformed(f"expected a non-empty list of bytes, got {type(frames).__name__}")
    lengths = read_header(frames[0], kind)
    if len(lengths) == 1 and 0 < lengths[0] <= CHUNK_SIZE and len(frames) == 2:
        # A small object with no out-of-band buffer (most results): its one chunk is the
        # pickle stream itself, nothing to assemble.
        stream = frames[1]
        try:
            size = memoryview(stream).nbytes
        except TypeError:
            raise malformed(f"chunk 0 is a {type(stream).__name__}, not bytes")
        if size != lengths[0]:
            raise malformed(f"chunk 0 has {size} bytes, expected {lengths[0]}")
        return stream, []
    total = sum(lengths)

    # Check every chunk's size before allocating anything, so a forged header cannot make
    # this side allocate more than it actually received.
    chunks = frames[1:]
    expected = -(-total // CHUNK_SIZE)
    if len(chunks) != expected:
        raise malformed(
            f"the header announces {total} bytes in {expected} chunks, "
            f"but {len(chunks)} chunks came"
        )
    views = []
    for index, chunk in enumerate(chunks):
        try:
            view = memoryview(chunk).cast("B")
        except TypeError:
            raise malformed(f"chunk {index} is a {type(chunk).__name__}, not bytes")
        want = CHUNK_SIZE if index < expected - 1 else total - CHUNK_SIZE * (expected - 1)
        if view.nbytes != want:
            raise malformed(f"chunk {index} has {view.nbytes} bytes, expected {want}")
        views.append(view)

    parts = [bytearray(n) for n in lengths]
    part_index, filled = 0, 0
    for view in views:
        offset = 0
        while offset < view.nbytes:
            while filled == lengths[part_index]:  # skip finished (and empty) parts
                part_index, filled = part_index + 1, 0
            take = min(view.nbytes - offset, lengths[part_index] - filled)
            parts[part_index][filled : filled + take] = view[offset : offset + take]
            filled += take
            offset += take
    return parts[0], parts[1:]


def _loads(stream: Any, buffers: Sequence[Any]) -> Any:
    try:
        return pickle.loads(stream, buffers=buffers)
    except Exception as exc:
        hint = ""
        if isinstance(exc, ImportError):
            hint = "; install the same modules on clients and engines"
        raise SerializationError(
            f"cannot rebuild the object: {type(exc).__name__}: {exc}{hint}"
        ) from exc


def load(header: object, parts: Sequence[Any], readonly: bool = False) -> Any:
    """Rebuild an object from its header and its parts (the stream, then the buffers).

    Each part is any buffer (``bytearray``, a ``memoryview`` of a mapping ...). numpy
    arrays are rebuilt on their buffers without a copy, so they keep them alive. With
    ``readonly``, the buffers are handed to pickle read-only: numpy arrays come back
    read-only (``ValueError: assignment destination is read-only`` on a write).

    :raises SerializationError: if the parts do not match the header, or unpickling fails.
    """
    lengths = read_header(header)
    if len(parts) != len(lengths):
        raise malformed(f"the header announces {len(lengths)} parts, but {len(parts)} came")
    for index, (part, want) in enumerate(zip(parts, lengths, strict=True)):
        got = memoryview(part).nbytes
        if got != want:
            raise malformed(f"part {index} has {got} bytes, the header says {want}")
    return _loads(parts[0], _buffers(parts[1:], readonly))


def _buffers(buffers: Sequence[Any], readonly: bool) -> Sequence[Any]:
    return [memoryview(b).toreadonly() for b in buffers] if readonly else buffers


def deserialize(payload: Any, readonly: bool = False) -> Any:
    """Rebuild the object that :func:`serialize` or :func:`dump` turned into ``payload``.

    ``payload`` is frames (a list of bytes), or a payload received by
    :mod:`ipkernel.wire.transfer`: an object whose ``open()`` returns the header and the
    parts. Out-of-band buffers come back as writable memory (``bytearray``, an anonymous
    or a private shared-memory mapping), so numpy arrays come back writable; with
    ``readonly`` they come back read-only, on the same memory (see :func:`load`).

    :raises SerializationError: if the frames are malformed (the message says how), or if
        unpickling fails, for example because a module the object needs is missing here.
        A payload that did not arrive whole raises what its ``open()`` raises.
    """
    if isinstance(payload, (list, tuple)):
        stream, buffers = _unframe(payload, KIND_OBJECT)
        return _loads(stream, _buffers(buffers, readonly))
    opener = getattr(payload, "open", None)
    if opener is None:
        raise malformed(f"expected a non-empty list of bytes, got {type(payload).__name__}")
    header, parts = opener()
    return load(header, parts, readonly)


# Remote failures


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__} object>"


def _traceback_text(exc: BaseException) -> str:
    text = getattr(exc, "remote_traceback", None)
    if isinstance(text, str):
        return text
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        return f"{_type_name(exc)}: {_message(exc)}\n"


def _dumps_exception(exc: BaseException) -> bytes:
    # In band: an exception holding a huge buffer is rare, and keeping the exception in
    # one bytes value lets the receiver unpickle it separately from the record.
    stream = io.BytesIO()
    cloudpickle.CloudPickler(stream, protocol=5).dump(exc)
    return stream.getvalue()


def serialize_failure(exc: BaseException, *, engine_id: int | None, method: str) -> list[bytes]:
    """Serialize a failure of user code (or of a command) so the client can re-raise it.

    The frames carry the exception object itself when it can be pickled, and always its
    type name, message (``str(exc)``) and traceback text, so that the other side can fall
    back to a :class:`~ipkernel.errors.RemoteError` when the exception cannot be rebuilt.
    The traceback text is ``exc.remote_traceback`` when the interpreter has set it (trimmed
    of engine frames), else the formatted traceback of ``exc``.

    Never raises for an unpicklable exception; that is what the fallback is for.
    """
    try:
        pickled: bytes | None = _dumps_exception(exc)
    except Exception:
        pickled = None
    record = {
        "type_name": _type_name(exc),
        "message": _message(exc),
        "traceback": _traceback_text(exc),
        "engine_id": engine_id,
        "method": method,
        "exception": pickled,
    }
    # Every value in the record is a str, int, bytes or None: plain pickle cannot fail.
    return _frame(KIND_FAILURE, pickle.dumps(record, protocol=5), [])


def deserialize_failure(frames: Sequence[bytes]) -> BaseException:
    """Rebuild the exception that :func:`serialize_failure` turned into ``frames``.

    The result has the type of the original exception when its class can be rebuilt on
    this side (classes defined in the engine's ``__main__`` are pickled by value and come
    back as an equivalent class of the same name); otherwise it is
    ``RemoteError(type_name, message)``. Either way it carries the attributes
    ``remote_traceback`` (str), ``engine_id`` (int or None) and ``method`` (str).

    :raises SerializationError: if the frames are malformed or are not a failure.
    """
    stream, buffers = _unframe(frames, KIND_FAILURE)
    try:
        record = pickle.loads(stream, buffers=buffers)
        type_name = record["type_name"]
        message = record["message"]
        remote_tb = record["traceback"]
        engine_id = record["engine_id"]
        method = record["method"]
        pickled = record["exception"]
    except Exception as exc:
        raise malformed(f"the failure record cannot be read ({type(exc).__name__}: {exc})")

    exc_obj: BaseException | None = None
    if pickled is not None:
        try:
            candidate = pickle.loads(pickled)
        except Exception:
            # The class is missing here, or its __init__ does not accept its own args.
            candidate = None
        if isinstance(candidate, BaseException):
            exc_obj = candidate
    if exc_obj is None:
        exc_obj = RemoteError(type_name, message)
    # Every exception instance has a __dict__ (BaseException provides one even when a
    # subclass declares __slots__), so these assignments cannot fail.
    exc_obj.remote_traceback = remote_tb  # type: ignore[attr-defined]
    exc_obj.engine_id = engine_id  # type: ignore[attr-defined]
    exc_obj.method = method  # type: ignore[attr-defined]
    return exc_obj


#: Functions made by load_function, by their pickles (an engine's, for its tasks).
_FUNCTIONS: dict[bytes, Any] = {}
#: How many functions an engine keeps (then it starts afresh).
FUNCTIONS_MEMORY = 256


def load_function(data: bytes) -> Any:
    """The function pickled in ``data``: the one made from the same bytes before, if any.

    A Task client pickles a stateless function once for many tasks as a call of this
    (see :mod:`ipkernel.client.function_pickles`), so that the engine unpickles it once.

    :raises Exception: whatever unpickling ``data`` raises.
    """
    function = _FUNCTIONS.get(data)
    if function is None:
        function = cloudpickle.loads(data)
        if len(_FUNCTIONS) >= FUNCTIONS_MEMORY:
            _FUNCTIONS.clear()
        _FUNCTIONS[data] = function
    return function
