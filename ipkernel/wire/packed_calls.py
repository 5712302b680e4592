"""Packed calls: PB remote calls whose plain arguments and answers travel as one string.

A stock PB call jellies its arguments (a type tag and a security check per element)
and Banana then encodes every element; the answer comes back the same way. For the
calls every command makes (a client asking the controller, the controller asking an
engine), that work was most of each process's time per call. :func:`call_remote` is
``ref.callRemote(method, *args)`` with the same meaning and result, but when the
arguments are plain values (:mod:`ipkernel.wire.plain`) they travel packed::

    [b"ipk_call", request id, object id, method name, packed arguments tuple]

and the receiving broker (:class:`PackedCalls`, mixed into
:class:`~ipkernel.wire.broker.Broker`) calls ``remote_<method>(*args)`` on the object as
PB would, and answers::

    [b"ipk_answer", request id, packed answer]

when the answer is plain, else with PB's own ``answer`` message (a PB reference, a
stream or shared-memory payload: jellied as always, streams starting after it); errors
go back as PB's ``error`` message, so the caller sees exactly the failures a stock call
would give. Request ids and the pending answers are PB's own, so a lost connection fails
a packed call with ``PBConnectionLost`` as it fails any other.

Packed calls are refused before login (the connection is dropped, as for a stream
message then), and only reach ``pb.Referenceable`` objects that dispatch the stock way.
Arguments that are not plain, or a connection that has not logged in, make
:func:`call_remote` a stock ``callRemote``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.spread import flavors, pb

from ipkernel.wire.plain import pack, unpack

__all__ = ["PackedCalls", "call_remote"]

_STOCK_DISPATCH = pb.Referenceable.remoteMessageReceived


def call_remote(ref: pb.RemoteReference, method: str, *args: Any) -> Deferred:
    """``ref.callRemote(method, *args)``, packed when it can be (see the module).

    :raises pb.DeadReferenceError: at once if the connection is closed (as stock).
    """
    broker = getattr(ref, "broker", None)
    packed = pack(args) if getattr(broker, "authenticated", False) else None
    if packed is None:
        return ref.callRemote(method, *args)
    if broker.disconnected:
        raise pb.DeadReferenceError("Calling Stale Broker")
    request_id = broker.newRequestID()
    d: Deferred = Deferred()
    broker.waitingForAnswers[request_id] = d
    broker.sendCall(b"ipk_call", request_id, ref.luid, method.encode(), packed)
    return d


class PackedCalls:
    """The receiving side of packed calls, for a PB broker (see the module docstring).

    The broker provides ``authenticated`` and ``_refuse(reason)`` (see
    :class:`~ipkernel.wire.broker.Broker`).
    """

    def proto_ipk_call(
        self, request_id: object, object_id: object, method: object, packed: object
    ) -> None:
        """Call ``remote_<method>`` on a local object with the packed arguments."""
        broker: Any = self
        if not broker.authenticated:
            broker._refuse("a packed call before login")
            return
        try:
            target = broker.localObjectForID(object_id)
            if target is None or type(target).remoteMessageReceived is not _STOCK_DISPATCH:
                raise pb.Error("Invalid Object ID")
            name = method.decode("utf-8") if isinstance(method, bytes) else None
            handler = getattr(target, f"remote_{name}", None) if name else None
            if handler is None:
                raise flavors.NoSuchMethod(f"No such method: remote_{name}")
            args = unpack(packed)  # type: ignore[arg-type]
            if type(args) is not tuple:
                raise pb.ProtocolError("packed call arguments are not a tuple")
            result = handler(*args)
        except BaseException:
            broker._sendFailureOrError(Failure(), request_id)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                self._send_packed_answer,
                broker._sendFailureOrError,
                callbackArgs=(request_id, target),
                errbackArgs=(request_id,),
            )
        else:
            self._send_packed_answer(result, request_id, target)

    def _send_packed_answer(self, result: object, request_id: object, target: Any) -> None:
        broker: Any = self
        packed = pack(result)
        if packed is None:
            broker._sendAnswer(broker.serialize(result, target.perspective), request_id)
        else:
            broker.sendCall(b"ipk_answer", request_id, packed)

    def proto_ipk_answer(self, request_id: object, packed: object) -> None:
        """The plain answer to a call this side sent."""
        broker: Any = self
        d = broker.waitingForAnswers.pop(request_id, None)
        if d is None:
            broker._refuse(f"an answer to no call ({request_id!r})")
            return
        try:
            value = unpack(packed)  # type: ignore[arg-type]
        except ValueError:
            d.errback(Failure())
            return
        d.callback(value)
