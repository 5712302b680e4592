"""The wire: how ipkernel's processes talk Perspective Broker over TLS.

:mod:`ipkernel.wire.broker` holds the PB broker and factories every connection uses (a
linear-time Banana decoder with per-connection size limits, small until login);
:mod:`ipkernel.wire.connect` dials the controller and logs in;
:mod:`ipkernel.wire.errors` holds the errors of a whole remote call as they cross PB;
:mod:`ipkernel.wire.tls` holds the TLS transports every connection runs on;
:mod:`ipkernel.wire.transfer` chooses how a large payload travels and holds the
shared-memory payloads; :mod:`ipkernel.wire.streams` moves the others in chunks with
flow control (relayed by the controller); :mod:`ipkernel.wire.kept` holds what the
controller keeps of them (task bodies and results); :mod:`ipkernel.interfaces.records` packs
batches of small records.
"""
