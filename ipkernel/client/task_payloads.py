"""How a Task client sends large task bodies and takes large results.

A task body (or a result) of :data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes or more
does not travel inside the packed message of its batch: the record's frames are ``None``
and the payload rides along in a dict ``{record index: payload}``, so its arrays go as
out-of-band buffers, streamed in chunks or through shared memory. The controller keeps
such payloads (:mod:`ipkernel.wire.kept`) until an engine runs the task, or until the
result is cleared.

Shared memory is used when the controller runs on this host as this user and both sides
can open each other's segments; :meth:`TaskPayloads.negotiate` finds out once per
connection, exchanging probes (:func:`ipkernel.shm.local_probe`). ``transport='stream'``
(or ``IPKERNEL_TRANSPORT=stream``) always streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from ipkernel import shm
from ipkernel.errors import IPKernelError
from ipkernel.frames import Serialized
from ipkernel.interfaces.records import unpack_results
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.received import ReceivedPayload
from ipkernel.wire.shared import SharedPayload
from ipkernel.wire.transfer import payload_for, transport_mode, when_received

__all__ = ["TaskPayloads"]


class TaskPayloads:
    """One Task client's payload policy (see the module docstring).

    :param transport: ``'auto'``, ``'stream'`` or ``'relay'`` (the same as ``'stream'``
        here); default ``$IPKERNEL_TRANSPORT``.
    """

    def __init__(self, transport: str | None = None) -> None:
        self.transport = transport_mode(transport)
        #: True once :meth:`negotiate` found that the controller and this process can
        #: open each other's segments.
        self.share = False

    @inlineCallbacks
    def negotiate(self, call: Callable[..., Deferred]):
        """Find out whether payloads may go through shared memory; fires with :attr:`share`.

        ``call(method, *args)`` calls the controller. Asks ``shm_probe`` with this
        process's probe; the controller answers with its own probe if it could open this
        one (else ``None``), and this side checks that it can open the controller's.
        """
        probe = shm.local_probe() if self.transport == "auto" else None
        if probe is None:
            return False
        answer = yield call("shm_probe", probe.to_wire())
        self.share = shm.same_host(answer)
        return self.share

    # Bodies, out.

    def pack(self, serialized: Serialized) -> Any:
        """What carries ``serialized`` to the controller (see
        :func:`ipkernel.wire.transfer.payload_for`): a segment's handle while sharing
        works, else a stream."""
        payload = payload_for(serialized, self.share)
        if self.share and isinstance(payload, OutgoingPayload):
            self.share = False  # no segment could be made: stream from now on
        return payload

    @staticmethod
    def sent(result: object, payloads: list[Any]) -> object:
        """The ``run_tasks`` call that carried ``payloads`` is answered: close their
        segments (the controller has its own descriptors) and end streams still running.
        Returns ``result`` unchanged (a callback for both outcomes)."""
        for payload in payloads:
            if isinstance(payload, SharedPayload):
                payload.close()
            elif isinstance(payload, OutgoingPayload):
                payload.cancel("the controller answered before the payload was sent")
        return result

    # Results, in.

    def fetch_options(self) -> dict | None:
        """Options for ``get_task_result(s)``: ask for large results through shared
        memory when it works with this controller."""
        return {"shm": True} if self.share else None

    @staticmethod
    def results(answer: object) -> Deferred | list:
        """An answer ``[packed results, {index: payload}]`` to the list of records, each
        record's ``value`` being the payload of its index where one came; fires once every
        streamed payload has arrived (a payload that did not arrive fails its task's
        result, not the call).

        :raises IPKernelError: for an answer of another shape.
        """
        if not isinstance(answer, (list, tuple)) or len(answer) != 2:
            raise IPKernelError("the controller answered with malformed task results")
        packed, payloads = answer
        records = unpack_results(packed)
        if not isinstance(payloads, dict):
            raise IPKernelError("the controller answered with malformed task results")
        for index, payload in payloads.items():
            if isinstance(index, int) and 0 <= index < len(records) and records[index]:
                records[index]["value"] = payload  # type: ignore[index]
        arriving = [p for p in payloads.values() if isinstance(p, ReceivedPayload)]
        if not arriving:
            return records
        # deserialize() raises the TransferError of a payload that did not arrive.
        return when_received(arriving).addBoth(lambda _: records)
