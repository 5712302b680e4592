"""The stream protocol: how large payloads cross a connection in chunks, with credit.

An :class:`~ipkernel.wire.outgoing.OutgoingPayload` placed in a message (call arguments
or an answer) is jellied as a small *stream reference* ``[b"ipkernel.stream", sid, size,
header]``; once that message is written, the sending broker sends the parts as separate
``ipk_data`` messages of at most :data:`CHUNK` bytes, as far as the receiver's credit
allows: :data:`FIRST_CREDIT` bytes at first, then up to the ``limit`` of the receiver's
latest ``[b"ipk_ack", sid, consumed, limit]``. Either side may end a stream with
``ipk_abort``; a lost connection aborts every stream on it.

Where a stream reference arrives decides what it becomes. The controller's brokers (the
server side of every connection) *relay*: the reference becomes a
:class:`~ipkernel.wire.relay.RelayedPayload` that the controller passes along like any
other argument, without looking inside; when it is put into a message on another
connection, the chunks are forwarded there as they arrive, and acknowledged upstream
once written downstream (to every connection it was put on: one payload may go to many
engines). The controller grants its senders credit out of one budget
(:data:`RELAY_BUDGET`, shared by every stream it relays), so what it holds stays bounded
however many streams run, and a slow receiver slows the sender. Clients and engines (the
client side of every connection) *receive*: the reference becomes a
:class:`~ipkernel.wire.received.ReceivedPayload` that preallocates the parts from the
header and writes each chunk into place. A relayed payload that nobody forwards (its
command was dropped, its client went away) is aborted when the controller lets go of it,
so its sender stops and every side frees what it held. (A relayed stream may also be
kept whole in the controller instead: see :mod:`ipkernel.wire.kept`.)

Stream ids are chosen by the stream's sender, even on the server side of a connection
and odd on the client side, so one number names one stream on a connection.

The modules: :mod:`ipkernel.wire.outgoing` (the sender), :mod:`ipkernel.wire.received`
(the receiver), :mod:`ipkernel.wire.relay` (the controller's relay),
:mod:`ipkernel.wire.stream_table` (one connection's streams, which its broker hands the
``ipk_*`` messages), :mod:`ipkernel.wire.buffers` (where received bytes go). None of them
unpickles anything: the controller sees sizes, ids and bytes. Choosing between inline
frames, streams and shared memory is :mod:`ipkernel.wire.transfer`'s job.
"""

from __future__ import annotations

__all__ = ["ACK_EVERY", "CHUNK", "FIRST_CREDIT", "RELAY_BUDGET", "STREAM_TYPE", "WINDOW"]

#: The most payload bytes in one ``ipk_data`` message.
CHUNK = 512 * 1024

#: How far ahead of what it has consumed a client or an engine lets a sender go.
WINDOW = 8 * 1024 * 1024

#: What a sender may send of a stream before the receiver's first acknowledgement.
FIRST_CREDIT = 512 * 1024

#: The most stream data the controller lets its senders have in flight towards it, all
#: relayed streams together; each stream's share is at least one chunk and at most
#: :data:`WINDOW`.
RELAY_BUDGET = 32 * 1024 * 1024

#: Receivers acknowledge at least this often (in bytes received or forwarded).
ACK_EVERY = 1024 * 1024

#: The tag of a stream reference in a jellied message.
STREAM_TYPE = b"ipkernel.stream"
