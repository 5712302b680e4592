"""The wire: how ipkernel's processes talk Perspective Broker over TLS.

:mod:`ipkernel.wire.broker` holds the PB broker and factories every connection uses, over
:mod:`ipkernel.wire.codec` (a linear-time Banana decoder with per-connection size limits,
small until login); :mod:`ipkernel.wire.connect` dials the controller and logs in;
:mod:`ipkernel.wire.errors` holds the errors of a whole remote call as they cross PB;
:mod:`ipkernel.wire.tls` sets up the TLS connections every connection runs on, whose
records :mod:`ipkernel.wire.tls_transport` reads and writes.

Large payloads: :mod:`ipkernel.wire.transfer` chooses how one travels (inline, stream or
shared memory) and finds payloads in received arguments. Streams follow
:mod:`ipkernel.wire.stream_protocol`: :mod:`ipkernel.wire.outgoing` sends,
:mod:`ipkernel.wire.received` receives (into :mod:`ipkernel.wire.buffers`),
:mod:`ipkernel.wire.relay` relays through the controller, and
:mod:`ipkernel.wire.stream_table` holds one connection's streams.
:mod:`ipkernel.wire.shared` holds the shared-memory payloads; :mod:`ipkernel.wire.kept`
what the controller keeps of both (task bodies and results). Direct links carry a
client's and an engine's streams past the controller: :mod:`ipkernel.wire.direct` (the
links and their payloads), :mod:`ipkernel.wire.direct_reference` (how such a payload is
named in a message), :mod:`ipkernel.wire.direct_listener` (the engine's end).
"""
