"""The wire: how ipkernel's processes talk Perspective Broker over TLS.

:mod:`ipkernel.wire.broker` holds the PB broker and factories every connection uses (a
linear-time Banana decoder with per-connection size limits, small until login);
:mod:`ipkernel.wire.connect` dials the controller and logs in;
:mod:`ipkernel.wire.errors` holds the errors of a whole remote call as they cross PB.
"""
