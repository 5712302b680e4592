"""How a MultiEngine client sends large payloads to engines and takes large results.

An object of :data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes or more (see
:mod:`ipkernel.wire.transfer`) is sent to an engine on this host (same user) through
shared memory, and to other engines as a stream of chunks: over the client's direct link
to that engine (:mod:`ipkernel.client.direct_links`) when the object goes to that one
engine alone, otherwise (one object for several engines, or no link) relayed by the
controller. One segment serves every engine on this host that gets the same object, and
one stream every other engine (it leaves this process once; the controller fans it out).
Whether an engine can open this process's segments follows from its registration info
(its host identity and probe, asked once per engine with ``get_engine_info``). For
results that may be large (``pull``, ``pull_function``, ``apply``) the client offers its
own probe and its direct links, and releases each engine-made segment it opened as soon
as the answer has been read. ``transport='stream'`` (or ``IPKERNEL_TRANSPORT=stream``)
sends everything over the network; ``transport='relay'`` everything through the
controller.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.spread import pb

from ipkernel import shm
from ipkernel.client.direct_links import DirectLinks
from ipkernel.frames import Serialized
from ipkernel.interfaces.multiengine import check_targets
from ipkernel.wire.direct import DirectPayload
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.shared import SharedPayload
from ipkernel.wire.transfer import is_inline, payload_for, transport_mode

__all__ = ["REPLY_COMMANDS", "EnginePayloads"]

#: Commands whose results may be large: the client offers to take them through shared
#: memory (see IEngine.call's ``options``).
REPLY_COMMANDS = frozenset({"pull", "pull_function", "apply"})


class EnginePayloads:
    """One MultiEngine client's payload policy (see the module docstring).

    :param avatar: the client's logged-in avatar; engine-made segments opened on its
        connection are released through it.
    :param reactor: gives ``callLater``, to send those releases together.
    :param transport: ``'auto'``, ``'stream'`` or ``'relay'``; default
        ``$IPKERNEL_TRANSPORT``, else ``'auto'``. ``ValueError`` for another value.
    """

    def __init__(self, avatar: pb.RemoteReference, reactor: Any, transport: str | None = None):
        self.transport = transport_mode(transport)
        self._avatar = avatar
        self._reactor = reactor
        # Engine registration infos by id, for choosing how to send large payloads.
        self._engines: dict[int, dict] = {}
        self._shared_ok: dict[int, bool] = {}
        # Engine-made shared-memory results opened here, to release: owner -> tokens.
        self._to_release: dict[int, list[str]] = {}
        streams = getattr(avatar.broker, "streams", None)
        if streams is not None:
            streams.on_shared_opened = self._shared_opened
        self.links: DirectLinks | None = None
        if self.transport != "relay":
            self.links = DirectLinks(avatar, reactor)
            avatar.notifyOnDisconnect(lambda _: self.links and self.links.close())

    # Results, in.

    def reply_options(self, command: str, targets: str | int | list[int]) -> dict | None:
        """The ``options`` for an engine ``command`` to ``targets``: offers to take its
        results through shared memory or over this client's direct links, where that can
        work; else ``None``.

        Links to targets that will stream (not on this host) are opened meanwhile, for
        the next answers: this one comes over a link only if it is open by then.
        """
        if command not in REPLY_COMMANDS:
            return None
        options = {}
        if self.transport == "auto":
            probe = shm.local_probe()
            if probe is not None:
                options["reply_to"] = probe.to_wire()
        links = self.links
        if links is not None and not links.closed:
            self._link_soon(targets)
            if links.any_open:
                options["direct"] = links.digest
        return options or None

    def _shared_opened(self, owner: int, token: str) -> None:
        # Called as each engine-made segment is opened here (while the answer is being
        # read); the releases go out together once the answer has been handled.
        if not self._to_release:
            self._reactor.callLater(0, self._release_shared)
        self._to_release.setdefault(owner, []).append(token)

    def _release_shared(self) -> None:
        batch, self._to_release = self._to_release, {}
        if not batch or self._avatar.broker.disconnected:
            return
        owners = list(batch)
        try:
            d = self._avatar.callRemote(
                "call_each", owners, "release_shm", [[batch[o]] for o in owners]
            )
        except pb.DeadReferenceError:
            return
        # An engine that went away has closed its segments already.
        d.addErrback(lambda f: None)

    # Payloads, out.

    @inlineCallbacks
    def engine_ids(self, call: Callable[..., Deferred], targets: str | int | list[int]):
        """Fires with the target ids, in order, once their registration infos are known.

        ``call(method, *args)`` calls the controller: ``get_engine_info`` is asked unless
        every target is known already (its errors, such as
        :class:`~ipkernel.errors.NoEnginesRegistered`, are this Deferred's).
        """
        ids = check_targets(targets)
        if ids is None or any(i not in self._engines for i in ids):
            rows = yield call("get_engine_info", targets)
            for engine_id, info in rows:
                if self._engines.get(engine_id) != info:
                    self._engines[engine_id] = dict(info)
                    self._shared_ok.pop(engine_id, None)
            ids = [engine_id for engine_id, _ in rows]
        yield self._open_links(ids)
        return ids

    def _open_links(self, ids: Sequence[int]) -> Deferred | None:
        """Open the links to those of ``ids`` that get streams (known infos)."""
        if self.links is None:
            return None
        return self.links.open([i for i in ids if not self._can_share(i)])

    def _link_soon(self, targets: str | int | list[int]) -> None:
        """Start opening the links to ``targets`` that get streams; nothing waits."""
        ids = check_targets(targets)
        known = self._engines
        if ids is None and known:
            ids = list(known)  # 'all': the engines known so far
        if ids is not None and all(i in known for i in ids):
            self._open_links(ids)
        else:
            d = self.engine_ids(self._avatar.callRemote, targets)
            d.addErrback(lambda f: None)

    def pack(self, ids: Sequence[int], serialized: Sequence[Serialized]) -> list[Any]:
        """What carries ``serialized[i]`` to ``ids[i]``, for each target (see
        :func:`~ipkernel.wire.transfer.payload_for`): a segment's handle for an engine
        that can open this process's segments, else a stream (small objects inline).
        One object given for several targets makes one segment for those on this host
        and one stream for the others, sent once and fanned out by the controller (put
        the payloads in one message).

        The ids' infos must be known (:meth:`engine_ids`). Pass the result to
        :meth:`sent` once the call that carries it has ended.
        """
        payloads: list[Any] = []
        made: dict[tuple[int, bool], Any] = {}
        # An object for several engines goes through the controller, the place to send
        # one object on to many (over links this client would encrypt it once per
        # engine). One engine's own object takes its link.
        copies = collections.Counter(id(ser) for ser in serialized)
        try:
            for engine_id, ser in zip(ids, serialized, strict=True):
                link = self._link_for(engine_id, ser) if copies[id(ser)] == 1 else None
                if link is not None:
                    payloads.append(DirectPayload(ser, link))
                else:
                    payloads.append(self._payload_for(engine_id, ser, made))
        except BaseException:
            self.sent(payloads)
            raise
        return payloads

    @staticmethod
    def sent(payloads: Sequence[Any]) -> None:
        """The call that carried ``payloads`` has ended (the engines opened their segments
        before running it): close the segments, abort the streams still running."""
        for payload in payloads:
            if isinstance(payload, OutgoingPayload):
                payload.cancel("the call ended before the payload was sent")
        segments = {id(p): p for p in payloads if isinstance(p, SharedPayload)}
        for payload in segments.values():
            payload.close()

    def _link_for(self, engine_id: int, ser: Serialized) -> Any:
        """The open link a large ``ser`` for ``engine_id`` would take, if it streams."""
        if self.links is None or is_inline(ser) or self._can_share(engine_id):
            return None
        return self.links.link(engine_id)

    def _can_share(self, engine_id: int) -> bool:
        """Whether a payload for ``engine_id`` may go through shared memory."""
        if self.transport != "auto" or not shm.available():
            return False
        known = self._shared_ok.get(engine_id)
        if known is None:
            info = self._engines.get(engine_id) or {}
            known = self._shared_ok[engine_id] = shm.same_host(info.get("shm_probe"))
        return known

    def _payload_for(
        self, engine_id: int, ser: Serialized, made: dict[tuple[int, bool], Any]
    ) -> Any:
        """What carries ``ser`` to ``engine_id``; one payload (in ``made``, by the
        object's id and whether it is shared) serves every engine that gets the same
        object the same way."""
        share = self._can_share(engine_id)
        key = (id(ser), share)
        payload = made.get(key)
        if payload is None:
            payload = made[key] = payload_for(ser, share)
            if share and isinstance(payload, OutgoingPayload):
                self._shared_ok[engine_id] = False  # no segment could be made
        return payload
