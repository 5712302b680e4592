"""Plain values packed into one byte string: the arguments and answers of packed calls.

Jelly and Banana spend several Python-level steps on every element of a PB message (a
type tag, a security check, a prefix, a type byte, a list to close), so even a small call
such as ``call(0, "execute", ["a=1"])`` costs tens of microseconds to send and as much to
receive. :func:`pack` writes a *plain* value (``None``, ``bool``, ``int`` of 64 bits,
``float``, ``str``, ``bytes``, and ``list``, ``tuple`` and ``dict`` of plain values, with
exactly these types, no subclasses) as one ``bytes``, one step per element; :func:`unpack`
reads it back, the same types, lists and tuples kept apart. Anything else (a PB
reference, a stream or shared-memory payload, a subclass) is not plain: :func:`pack`
returns ``None`` and the caller sends the value the stock way.

Format: each value is a tag byte and what the tag says follows, little-endian:
``N`` None, ``T``/``F`` booleans, ``i`` a signed 64-bit int, ``d`` a double, ``s``/``b``
a 32-bit length and that many bytes (UTF-8 for ``s``), ``l``/``t``/``m`` a 32-bit count
and that many values (for ``m``, key then value). Nothing is evaluated on the way in, so
:func:`unpack` may read bytes from any peer; a malformed string raises
:class:`ValueError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DEPTH", "pack", "unpack"]

#: How deeply lists, tuples and dicts may nest (deeper values are not plain).
MAX_DEPTH = 32

_LEN = struct.Struct("<I")
_INT = struct.Struct("<q")
_FLOAT = struct.Struct("<d")
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_MAX_LEN = (1 << 32) - 1


class _NotPlain(Exception):
    pass


def pack(value: object) -> bytes | None:
    """``value`` as one byte string, or ``None`` if it is not plain (see the module)."""
    out: list[bytes] = []
    try:
        _pack(value, out.append, MAX_DEPTH)
    except _NotPlain:
        return None
    return b"".join(out)


def _pack(value: Any, write: Callable[[bytes], Any], depth: int) -> None:
    kind = type(value)
    if kind is bytes:
        if len(value) > _MAX_LEN:
            raise _NotPlain
        write(b"b" + _LEN.pack(len(value)))
        write(value)
    elif kind is str:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise _NotPlain from None
        if len(data) > _MAX_LEN:
            raise _NotPlain
        write(b"s" + _LEN.pack(len(data)))
        write(data)
    elif kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise _NotPlain
        write(b"i" + _INT.pack(value))
    elif value is None:
        write(b"N")
    elif kind is list or kind is tuple:
        if depth <= 0:
            raise _NotPlain
        write((b"l" if kind is list else b"t") + _LEN.pack(len(value)))
        for item in value:
            _pack(item, write, depth - 1)
    elif kind is dict:
        if depth <= 0:
            raise _NotPlain
        write(b"m" + _LEN.pack(len(value)))
        for key, item in value.items():
            _pack(key, write, depth - 1)
            _pack(item, write, depth - 1)
    elif kind is bool:
        write(b"T" if value else b"F")
    elif kind is float:
        write(b"d" + _FLOAT.pack(value))
    else:
        raise _NotPlain


def unpack(data: bytes) -> Any:
    """The value :func:`pack` wrote into ``data``.

    :raises ValueError: if ``data`` is not exactly one packed value (unknown tag, a
        length past the end, nesting deeper than :data:`MAX_DEPTH`, bytes left over,
        invalid UTF-8, an unhashable dict key).
    """
    if type(data) is not bytes:
        raise ValueError(f"a packed value is bytes, not {type(data).__name__}")
    try:
        value, end = _unpack(data, 0, MAX_DEPTH)
    except (struct.error, IndexError, UnicodeDecodeError, TypeError) as exc:
        raise ValueError(f"malformed packed value: {exc}") from None
    if end != len(data):
        raise ValueError(f"malformed packed value: {len(data) - end} bytes left over")
    return value


_TAG_BYTES, _TAG_STR, _TAG_INT, _TAG_NONE = b"b"[0], b"s"[0], b"i"[0], b"N"[0]
_TAG_LIST, _TAG_TUPLE, _TAG_DICT = b"l"[0], b"t"[0], b"m"[0]
_TAG_TRUE, _TAG_FALSE, _TAG_FLOAT = b"T"[0], b"F"[0], b"d"[0]
_len_at = _LEN.unpack_from
_int_at = _INT.unpack_from
_float_at = _FLOAT.unpack_from


def _unpack(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    tag = data[pos]
    pos += 1
    if tag == _TAG_BYTES or tag == _TAG_STR:
        (size,) = _len_at(data, pos)
        pos += 4
        end = pos + size
        if end > len(data):
            raise ValueError("malformed packed value: a string runs past the end")
        chunk = data[pos:end]
        return (chunk if tag == _TAG_BYTES else chunk.decode("utf-8")), end
    if tag == _TAG_INT:
        return _int_at(data, pos)[0], pos + 8
    if tag == _TAG_NONE:
        return None, pos
    if tag == _TAG_LIST or tag == _TAG_TUPLE or tag == _TAG_DICT:
        if depth <= 0:
            raise ValueError(f"malformed packed value: nested deeper than {MAX_DEPTH}")
        (count,) = _len_at(data, pos)
        pos += 4
        # Every value takes at least one byte: a count beyond what is left is a lie.
        if count > len(data) - pos:
            raise ValueError("malformed packed value: a count runs past the end")
        if tag == _TAG_DICT:
            result: dict = {}
            for _ in range(count):
                key, pos = _unpack(data, pos, depth - 1)
                result[key], pos = _unpack(data, pos, depth - 1)
            return result, pos
        items = []
        append = items.append
        for _ in range(count):
            item, pos = _unpack(data, pos, depth - 1)
            append(item)
        return (items if tag == _TAG_LIST else tuple(items)), pos
    if tag == _TAG_TRUE:
        return True, pos
    if tag == _TAG_FALSE:
        return False, pos
    if tag == _TAG_FLOAT:
        return _float_at(data, pos)[0], pos + 8
    raise ValueError(f"malformed packed value: unknown tag {tag:#x}")
