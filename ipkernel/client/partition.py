"""Cutting a sequence into one contiguous part per engine, and joining the parts back.

Used by ``scatter``/``gather`` and by the parallel ``map`` of both clients. Pure functions:
numpy is optional and never imported here; an object can only be a numpy array if numpy
is already loaded, so it is looked up in ``sys.modules`` when needed.

The rule (SPEC §4): ``n`` items on ``p`` targets give parts whose sizes differ by at most
one, larger parts first: ``range(10)`` on 4 engines is ``[0, 1, 2]``, ``[3, 4, 5]``,
``[6, 7]``, ``[8, 9]``; ``range(2)`` is ``[0]``, ``[1]``, ``[]``, ``[]``.
"""

from __future__ import annotations

import itertools
import operator
import sys
from collections.abc import Iterator, Mapping, Sequence, Set
from typing import Any

__all__ = ["ListPart", "join", "join_owned", "partition_sizes", "split", "split_lazily"]

# Types split into parts of their own type and joined back into one of them.
_TEXT_TYPES = (str, bytes, bytearray)


def partition_sizes(n: int, p: int) -> list[int]:
    """Sizes of ``p`` contiguous parts of ``n`` items: near-equal, larger parts first.

    The sizes differ by at most one and sum to ``n``: ``(10, 4) -> [3, 3, 2, 2]``,
    ``(2, 4) -> [1, 1, 0, 0]``, ``(0, 3) -> [0, 0, 0]``.

    :raises ValueError: if ``p < 1`` or ``n < 0``.
    :raises TypeError: if ``n`` or ``p`` is not an integer.
    """
    n, p = operator.index(n), operator.index(p)
    if p < 1:
        raise ValueError(f"cannot partition into {p!r} parts: need at least one target")
    if n < 0:
        raise ValueError(f"cannot partition a negative number of items ({n!r})")
    base, extra = divmod(n, p)
    return [base + 1] * extra + [base] * (p - extra)


def _numpy_array_type() -> type | None:
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None)


def _bounds(n: int, p: int) -> list[tuple[int, int]]:
    bounds = []
    start = 0
    for size in partition_sizes(n, p):
        bounds.append((start, start + size))
        start += size
    return bounds


def split(seq: Any, p: int) -> list[Any]:
    """Cut ``seq`` into ``p`` contiguous parts as :func:`partition_sizes` says.

    What a part is depends on ``seq``:

    - a list: lists;
    - a numpy array: arrays cut along axis 0, each a view of ``seq`` (no copy), with the
      dtype and the other dimensions kept, also when a part is empty;
    - ``str``, ``bytes``, ``bytearray``: substrings of the same type (so that
      :func:`join` gives the original back);
    - any other sequence (tuple, range, deque, ...) or an iterator (a generator): lists of
      its items, in order. Iterators are consumed.

    :raises ValueError: if ``p < 1``.
    :raises TypeError: if ``p`` is not an integer; for a mapping, a set, a 0-d array,
        or another object that is not a sequence: splitting those has no order to
        follow, so the error names the type.
    """
    # Checked before an iterator is consumed, so a bad call loses nothing.
    p = operator.index(p)
    if p < 1:
        raise ValueError(f"cannot split into {p!r} parts: need at least one target")
    ndarray = _numpy_array_type()
    if ndarray is not None and isinstance(seq, ndarray):
        if seq.ndim == 0:
            raise TypeError("cannot split a 0-d numpy array: it has no axis to cut")
        # Basic slicing gives views, so scattering a large array copies nothing here.
        return [seq[start:stop] for start, stop in _bounds(len(seq), p)]
    if isinstance(seq, (list, *_TEXT_TYPES)):
        items = seq
    elif isinstance(seq, (Mapping, Set)):
        raise TypeError(
            f"cannot split a {type(seq).__name__}: it is not a sequence; pass a list of "
            "its items (for example list(d.items()))"
        )
    elif isinstance(seq, (Sequence, Iterator)):
        items = list(seq)
    else:
        raise TypeError(
            f"cannot split an object of type {type(seq).__name__}: expected a list, a "
            "sequence, an iterator or a numpy array"
        )
    return [items[start:stop] for start, stop in _bounds(len(items), p)]


class ListPart:
    """``items[start:stop]`` of a list, not copied: it pickles as that slice does (a
    list on the other side), reading the items while it is being pickled; iterating
    over it gives the slice's items."""

    __slots__ = ("items", "start", "stop")

    def __init__(self, items: list, start: int, stop: int) -> None:
        self.items = items
        self.start = start
        self.stop = stop

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(self.items, self.start, self.stop)

    def __reduce__(self) -> tuple:
        # list() then its items appended: exactly what pickling the slice gives.
        return (list, (), None, iter(self))


def split_lazily(seq: Any, p: int) -> list[Any]:
    """:func:`split`, except that a list's parts are :class:`ListPart` views of it: a
    part that is pickled once costs no copy (and no freeing) of its items."""
    if type(seq) is list:
        p = operator.index(p)
        if p < 1:
            raise ValueError(f"cannot split into {p!r} parts: need at least one target")
        return [ListPart(seq, start, stop) for start, stop in _bounds(len(seq), p)]
    return split(seq, p)


def join(parts: Sequence[Any]) -> Any:
    """Concatenate parts (as made by :func:`split`, or gathered) back into one object.

    - all numpy arrays: one array, ``numpy.concatenate`` along axis 0 (parts that are all
      empty still give an empty array of their dtype and trailing shape);
    - all ``str`` (or all ``bytes``, all ``bytearray``): one object of that type;
    - anything else, lists and mixtures included: one list of every part's items.

    ``join([])`` is ``[]``.

    :raises TypeError: naming the part, if a part is not iterable.
    """
    parts = list(parts)
    if not parts:
        return []
    ndarray = _numpy_array_type()
    if ndarray is not None and all(isinstance(part, ndarray) for part in parts):
        return sys.modules["numpy"].concatenate(parts, axis=0)
    for text_type in _TEXT_TYPES:
        if all(type(part) is text_type for part in parts):
            return text_type().join(parts)
    joined: list[Any] = []
    for index, part in enumerate(parts):
        try:
            joined.extend(part)
        except TypeError:
            raise TypeError(
                f"cannot join part {index}: a {type(part).__name__} is not a sequence"
            ) from None
    return joined


def join_owned(parts: Sequence[Any]) -> Any:
    """:func:`join` for parts that nobody else holds (just unpickled, as gathered).

    When every part is a list, the first one becomes the result, extended by the
    others: the largest copy and the freeing of a part are saved. Otherwise as
    :func:`join`.
    """
    if parts and all(type(part) is list for part in parts):
        joined = parts[0]
        for part in parts[1:]:
            joined.extend(part)
        return joined
    return join(parts)
