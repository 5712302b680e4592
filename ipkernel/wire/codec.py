"""Banana, decoded in linear time, with per-connection limits: the bytes of a PB connection.

The wire format is stock Banana, byte for byte; what differs is how much an untrusted
peer can make us spend. :class:`BananaCodec` is mixed into the PB broker
(:class:`ipkernel.wire.broker.Broker`), which adds PB, the login state and the streams.

Linear-time decoding
    Stock ``Banana.dataReceived`` does ``buffer = self.buffer + chunk`` and re-slices what
    is left for every chunk received, so a message of *n* bytes arriving in *k* pieces
    costs O(*n*·*k*) copying: over TLS (at most 32 KiB per read) one 32 MiB string arrives
    at about 12 MB/s, and a 640 KiB string dripped in 64-byte pieces costs 0.18 s of CPU,
    which a peer that has not logged in can repeat at will. :class:`BananaCodec` parses
    each chunk in place with an offset, carries over at most an unfinished header (a few
    dozen bytes), and keeps an unfinished string as a list of pieces joined once, when
    complete. A long string may instead be written straight into a buffer the subclass
    names (:meth:`BananaCodec._string_target`); it is then delivered as :class:`Landed`.

Per-connection limits
    Stock checks the module global ``banana.SIZE_LIMIT`` (640 KiB, shared by every
    connection in the process and nothing else reads ``Banana.sizeLimit``), and bounds
    neither a message's total size nor the memory its unfinished lists hold: one
    unfinished 52 MB message of small ints grew a stock server by about 190 MB.
    :class:`BananaCodec` reads ``self.sizeLimit`` for every string and list length, on
    decode and on encode, and ``self.pending_limit`` bounds what an unfinished message
    holds (see :data:`PENDING_ITEM_COST`). Both start small (:data:`PRE_AUTH_SIZE_LIMIT`,
    :data:`PRE_AUTH_PENDING_LIMIT`); the broker lifts them (to :data:`POST_AUTH_SIZE_LIMIT`,
    :data:`POST_AUTH_PENDING_LIMIT`: no bound) once the login gate has checked the peer's
    secret.
    ``banana.SIZE_LIMIT`` is never changed.

Violations
    A decode violation (a string or list over ``sizeLimit``, an unfinished message over
    ``pending_limit``, an over-long prefix, an unknown type byte or vocabulary entry)
    aborts the connection, as stock effectively does when its ``dataReceived`` raises into
    the reactor, and everything the peer sends afterwards is ignored. An encode violation
    raises :class:`~twisted.spread.banana.BananaError` synchronously from
    ``sendEncoded``, hence from ``callRemote``, as stock does; nothing is written.
"""

from __future__ import annotations

import re
import struct
import sys
import threading
from collections.abc import Callable

from twisted.logger import Logger
from twisted.python.reflect import fullyQualifiedName
from twisted.spread import banana
from twisted.spread.banana import BananaError

__all__ = [
    "POST_AUTH_PENDING_LIMIT",
    "POST_AUTH_SIZE_LIMIT",
    "PENDING_ITEM_COST",
    "PRE_AUTH_PENDING_LIMIT",
    "PRE_AUTH_SIZE_LIMIT",
    "BananaCodec",
    "Landed",
    "prefix",
]

#: Largest string (in bytes) or list (in items) a connection accepts or sends before login.
PRE_AUTH_SIZE_LIMIT = 64 * 1024

#: Most memory, in bytes as counted with :data:`PENDING_ITEM_COST`, that one unfinished
#: message may hold before login. Login needs a few hundred bytes.
PRE_AUTH_PENDING_LIMIT = 1024 * 1024

#: No bound on a string or a list after login, for the reason below: code, arguments and
#: results of any size that fits in memory must work (SPEC §9), and a size limit of the
#: wire must never reach a user as an error. Large data still travels beside the messages
#: (streams, shared memory); what remains inline is the rare long code string or list of
#: names. The decoder allocates nothing for an announced string before its bytes arrive.
POST_AUTH_SIZE_LIMIT = sys.maxsize

#: No bound on an unfinished message after login: the peer has proved it holds the
#: secret, which already lets it run code on the engines, and one message may carry a
#: large array as many chunks.
POST_AUTH_PENDING_LIMIT: int | None = None

#: What each item held by an unfinished list counts for, in bytes, on top of a string's
#: own length. A generous round figure for a pointer plus a small Python object, so that
#: a stream of two-byte ints is bounded by memory rather than by wire size.
PENDING_ITEM_COST = 64

_LIST = banana.LIST[0]
_INT = banana.INT[0]
_STRING = banana.STRING[0]
_NEG = banana.NEG[0]
_FLOAT = banana.FLOAT[0]
_LONGINT = banana.LONGINT[0]
_LONGNEG = banana.LONGNEG[0]
_VOCAB = banana.VOCAB[0]

# The type byte is the first byte with the high bit set; the prefix digits before it are
# base-128, low digit first.
_TYPE_BYTE = re.compile(b"[\x80-\xff]")
_ONE_DIGIT = [bytes((n,)) for n in range(128)]
_DOUBLE = struct.Struct("!d")

# The buffer a TLS transport decrypts into when no destination is waiting: one per thread,
# shared by every connection of that thread's reactor (buffer_updated copies its bytes
# out before anything else can read), so that an idle connection holds none of it. One
# TLS record's size: the transport fills a buffer record after record, and the start of
# a large string read into it is copied out again (only the rest goes straight to place).
_SCRATCH = 16 * 1024
_scratch = threading.local()

_log = Logger()


def prefix(n: int) -> bytes:
    """Banana's base-128 prefix for ``n >= 0``, as ``banana.int2b128`` writes it."""
    if n < 128:
        return _ONE_DIGIT[n]
    digits = bytearray()
    while n:
        digits.append(n & 0x7F)
        n >>= 7
    return bytes(digits)


def _prefix_value(data: bytes, start: int, stop: int) -> int:
    """The integer the base-128 digits ``data[start:stop]`` stand for."""
    value = 0
    shift = 0
    for digit in data[start:stop]:
        value |= digit << shift
        shift += 7
    return value


def _scratch_buffer() -> memoryview:
    view = getattr(_scratch, "view", None)
    if view is None:
        view = _scratch.view = memoryview(bytearray(_SCRATCH))
    return view


class Landed:
    """A string the codec already wrote where :meth:`BananaCodec._string_target` said."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view


class BananaCodec(banana.Banana):
    """Banana with a linear-time decoder and per-connection limits (a mixin for the broker).

    ``sizeLimit`` (Twisted's name) caps every string's length in bytes and every list's
    length in items, received or sent. ``pending_limit`` caps what one unfinished
    message holds: each item inside its unfinished lists counts
    :data:`PENDING_ITEM_COST` plus, for a string, its length, counted as soon as the
    string is announced; ``None`` means no cap. Both are read afresh for every item, so
    a subclass or an instance may set them, and a change made from a callback applies
    from the very next item received.
    """

    sizeLimit: int = PRE_AUTH_SIZE_LIMIT
    pending_limit: int | None = PRE_AUTH_PENDING_LIMIT

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # An unfinished header (prefix digits, or a float's type byte and part of its
        # 8 bytes): at most prefixLimit + 8 bytes, put in front of the next chunk.
        self._head = b""
        # An unfinished string: the pieces received so far and how many bytes are
        # missing. Views, so that each byte is copied once, by the final join.
        self._pieces: list[memoryview] = []
        self._missing = 0
        # What the current unfinished message holds, as pending_limit counts it.
        self._held = 0
        self._refused = False
        # A string being written straight into its destination (get_buffer): the
        # destination and how much of it is filled.
        self._target: memoryview | None = None
        self._target_filled = 0

    # Reading in place (the TLS transport's buffered-protocol interface)

    def get_buffer(self, hint: int = -1) -> memoryview:
        """Where the transport should put the next bytes it receives.

        The rest of a long string that :meth:`_string_target` placed goes straight into
        its destination; anything else into a scratch buffer, parsed by
        :meth:`buffer_updated`.
        """
        if self._target is not None:
            return self._target[self._target_filled :]
        return _scratch_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` bytes were put where :meth:`get_buffer` said."""
        if self._refused:
            return
        if self._target is None:
            self.dataReceived(bytes(_scratch_buffer()[:nbytes]))
            return
        try:
            self._target_filled += nbytes
            if self._target_filled == self._target.nbytes:
                self._land()
        except BaseException:
            self._refused = True
            self._forget_partial()
            raise

    def _fill_target(self, data: bytes) -> int:
        """Copy the start of ``data`` into the string being placed; return how much."""
        target = self._target
        assert target is not None
        take = min(target.nbytes - self._target_filled, len(data))
        target[self._target_filled : self._target_filled + take] = memoryview(data)[:take]
        self._target_filled += take
        if self._target_filled == target.nbytes:
            self._land()
        return take

    def _land(self) -> None:
        target, self._target = self._target, None
        self._target_filled = 0
        self._got(Landed(target))

    def _string_target(self, num: int) -> memoryview | None:
        """Where to write a string of ``num`` bytes just announced (and not all here
        yet), delivered then as :class:`Landed`; None to receive it as ``bytes``."""
        return None

    def dataReceived(self, data: bytes) -> None:
        """Decode ``data``, handing each complete item to ``gotItem`` as stock does."""
        if self._refused:
            return
        try:
            start = 0
            if self._target is not None:
                start = self._fill_target(data)
                if start == len(data):
                    return
            elif self._missing:
                missing = self._missing
                if len(data) < missing:
                    self._pieces.append(memoryview(data))
                    self._missing = missing - len(data)
                    return
                self._pieces.append(memoryview(data)[:missing])
                item = b"".join(self._pieces)
                self._pieces = []
                self._missing = 0
                start = missing
                self._got(item)
            elif self._head:
                data = self._head + data
                self._head = b""
            self._parse(data, start)
        except BaseException:
            # Stock lets this reach the reactor, which drops the connection; our parse
            # position is lost with the exception, so stop reading the stream too.
            self._refused = True
            self._forget_partial()
            raise

    def _parse(self, data: bytes, pos: int) -> None:
        """Decode the items in ``data`` from ``pos`` on, keeping any unfinished tail."""
        end = len(data)
        list_stack = self.listStack
        while pos < end:
            # Most items have a prefix of no digit or one (a value under 128): read those
            # directly; the type byte is the first byte with the high bit set.
            first = data[pos]
            if first >= 0x80:
                type_at, num = pos, 0
            elif pos + 1 < end and data[pos + 1] >= 0x80:
                type_at, num = pos + 1, first
            else:
                prefix_limit = self.prefixLimit
                match = _TYPE_BYTE.search(data, pos, min(end, pos + prefix_limit + 1))
                if match is None:
                    if end - pos > prefix_limit:
                        self._refuse(f"more than {prefix_limit} bytes of prefix")
                    else:
                        self._head = data[pos:]
                    return
                type_at = match.start()
                num = _prefix_value(data, pos, type_at)
            type_byte = data[type_at]
            body = type_at + 1
            cost = PENDING_ITEM_COST
            if type_byte == _STRING:
                if num > self.sizeLimit:
                    self._refuse(f"string of {num} bytes, limit {self.sizeLimit}")
                    return
                if not self._hold(PENDING_ITEM_COST + num):
                    return
                if end - body < num:
                    target = self._string_target(num)
                    if target is not None:
                        self._target = target
                        self._target_filled = 0
                        self._fill_target(memoryview(data)[body:])
                        return
                    self._pieces = [memoryview(data)[body:]]
                    self._missing = num - (end - body)
                    return
                pos = body + num
                item: object = data[body:pos]
                cost = 0  # counted above, before the bytes were known to be here
            elif type_byte == _LIST:
                if num > self.sizeLimit:
                    self._refuse(f"list of {num} items, limit {self.sizeLimit}")
                    return
                if not self._hold(PENDING_ITEM_COST):
                    return
                pos = body
                list_stack.append((num, []))
                if not num:
                    self._close_lists()  # an empty list is complete at once
                continue
            elif type_byte == _INT or type_byte == _LONGINT:
                item = num
                pos = body
            elif type_byte == _VOCAB:
                # The sender uses the vocabulary only in dialect pb.
                item = self.incomingVocabulary.get(num)
                if item is None or self.currentDialect != b"pb":
                    self._refuse(f"vocabulary entry {num} not valid here")
                    return
                pos = body
            elif type_byte == _NEG or type_byte == _LONGNEG:
                item = -num
                pos = body
            elif type_byte == _FLOAT:
                if end - body < 8:
                    self._head = data[pos:]
                    return
                item = _DOUBLE.unpack_from(data, body)[0]
                pos = body + 8
            else:
                self._refuse(f"invalid type byte {type_byte:#x}")
                return
            if cost:
                held = self._held + cost
                limit = self.pending_limit
                self._held = held
                if limit is not None and held > limit:
                    self._refuse(f"unfinished message holds over {limit} bytes")
                    return
            if list_stack:
                # Stock gotItem appends to the innermost list; close it once complete.
                top = list_stack[-1]
                items = top[1]
                items.append(item)
                if len(items) == top[0]:
                    self._close_lists()
            else:
                self._got(item)

    def _got(self, item: object) -> None:
        """Hand one decoded item to stock ``gotItem``, then any lists it completes."""
        self.gotItem(item)
        self._close_lists()

    def _close_lists(self) -> None:
        list_stack = self.listStack
        while list_stack and len(list_stack[-1][1]) == list_stack[-1][0]:
            self.gotItem(list_stack.pop()[1])
        if not list_stack:
            self._held = 0  # the message went to expressionReceived: nothing held now

    def _hold(self, cost: int) -> bool:
        """Count ``cost`` against ``pending_limit``; drop the connection past it."""
        self._held += cost
        limit = self.pending_limit
        if limit is not None and self._held > limit:
            self._refuse(f"unfinished message holds over {limit} bytes")
            return False
        return True

    def _refuse(self, reason: str) -> None:
        """Abort a peer that broke the format or the limits and ignore what follows."""
        self._refused = True
        self._forget_partial()
        _log.warn("Dropping PB connection: {reason}", reason=reason)
        # Abort rather than close: a TLS close waits for the peer's close_notify, which a
        # hostile peer never sends.
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def _forget_partial(self) -> None:
        self._target = None
        self._target_filled = 0
        self._head = b""
        self._pieces = []
        self._missing = 0
        self._held = 0
        del self.listStack[:]

    def _encode(self, obj: object, write: Callable[[bytes], object]) -> None:
        """Write stock Banana's encoding of ``obj``, checked against ``self.sizeLimit``.

        :raises BananaError: a string or list over ``sizeLimit``, an int beyond the prefix
            limit, or a type Banana cannot send. ``sendEncoded`` encodes the whole
            message before writing, so nothing reaches the transport then.
        """
        if isinstance(obj, (list, tuple)):
            if len(obj) > self.sizeLimit:
                raise BananaError(
                    f"list/tuple is too long to send ({len(obj)} items, limit {self.sizeLimit})"
                )
            write(prefix(len(obj)))
            write(banana.LIST)
            for element in obj:
                self._encode(element, write)
        elif isinstance(obj, int):
            if obj < self._smallestLongInt or obj > self._largestLongInt:
                raise BananaError(f"int is too large to send ({obj})")
            if obj < self._smallestInt:
                write(prefix(-obj))
                write(banana.LONGNEG)
            elif obj < 0:
                write(prefix(-obj))
                write(banana.NEG)
            elif obj <= self._largestInt:
                write(prefix(obj))
                write(banana.INT)
            else:
                write(prefix(obj))
                write(banana.LONGINT)
        elif isinstance(obj, float):
            write(banana.FLOAT)
            write(_DOUBLE.pack(obj))
        elif isinstance(obj, bytes):
            if self.currentDialect == b"pb" and obj in self.outgoingSymbols:
                write(prefix(self.outgoingSymbols[obj]))
                write(banana.VOCAB)
            else:
                if len(obj) > self.sizeLimit:
                    raise BananaError(
                        f"byte string is too long to send ({len(obj)} bytes, "
                        f"limit {self.sizeLimit})"
                    )
                write(prefix(len(obj)))
                write(banana.STRING)
                write(obj)
        else:
            raise BananaError(
                f"Banana cannot send {fullyQualifiedName(type(obj))} objects: {obj!r}"
            )
