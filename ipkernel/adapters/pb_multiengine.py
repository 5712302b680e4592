"""The MultiEngine interface over PB: validate, forward, translate errors.

One :class:`MultiEngineAdapter` per logged-in MultiEngine client. It holds no queueing or
fan-out logic: every remote method checks its arguments and forwards to
:class:`~ipkernel.interfaces.IMultiEngine`.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.spread import pb

from ipkernel.controller.multiengine import CLIENT_COMMANDS
from ipkernel.interfaces.multiengine import IMultiEngine, check_targets
from ipkernel.wire.errors import WireError, to_wire
from ipkernel.wire.stream_table import stream_stats


def _forward(method, *args) -> Deferred:
    return maybeDeferred(method, *args).addErrback(to_wire)


def _checked_targets(targets: object) -> object:
    try:
        check_targets(targets)
    except ValueError as exc:
        raise WireError("ValueError", str(exc)) from None
    return targets


def _checked_command(command: object) -> str:
    if not isinstance(command, str) or command not in CLIENT_COMMANDS:
        raise WireError("ValueError", f"unknown command {command!r}")
    return command


def _checked_args(args: object) -> list:
    if not isinstance(args, (list, tuple)):
        raise WireError("TypeError", "command arguments must be a list")
    return list(args)


#: The transfer hints a client may send with a command (see IEngine.call).
_OPTION_KEYS = frozenset({"reply_to", "direct"})


def _checked_options(options: object) -> dict | None:
    if options is None:
        return None
    if not isinstance(options, dict) or not set(options) <= _OPTION_KEYS:
        raise WireError("TypeError", f"unknown call options {options!r:.200}")
    reply_to = options.get("reply_to")
    if reply_to is not None and (
        not isinstance(reply_to, (list, tuple))
        or len(reply_to) > 8
        or not all(isinstance(v, (bytes, str, int)) for v in reply_to)
    ):
        raise WireError("TypeError", "reply_to must be a short list of plain values")
    direct = options.get("direct")
    if direct is not None and not (isinstance(direct, bytes) and len(direct) == 32):
        raise WireError("TypeError", "direct must be a certificate digest (32 bytes)")
    return dict(options)


class MultiEngineAdapter(pb.Referenceable):
    """A MultiEngine client's avatar."""

    def __init__(self, multiengine: IMultiEngine) -> None:
        self._me = multiengine

    def remote_get_ids(self) -> list[int]:
        return self._me.get_ids()

    def remote_get_engine_info(self, targets: object) -> Deferred:
        return _forward(self._me.get_engine_info, _checked_targets(targets))

    def remote_transfer_stats(self) -> dict[str, int]:
        """The controller's open streams and the bytes it holds for them (all clients)."""
        return stream_stats()

    def remote_call(
        self, targets: object, command: object, args: object, options: object = None
    ) -> Deferred:
        return _forward(
            self._me.call,
            _checked_targets(targets),
            _checked_command(command),
            _checked_args(args),
            _checked_options(options),
        )

    def remote_call_each(
        self, targets: object, command: object, args_per_target: object, options: object = None
    ) -> Deferred:
        per_target = [_checked_args(a) for a in _checked_args(args_per_target)]
        return _forward(
            self._me.call_each,
            _checked_targets(targets),
            _checked_command(command),
            per_target,
            _checked_options(options),
        )

    def remote_queue_status(self, targets: object) -> Deferred:
        return _forward(self._me.queue_status, _checked_targets(targets))

    def remote_clear_queue(self, targets: object) -> Deferred:
        return _forward(self._me.clear_queue, _checked_targets(targets))

    def remote_kill(self, targets: object, controller: object = False) -> Deferred:
        return _forward(self._me.kill, _checked_targets(targets), bool(controller))

    def remote_interrupt(self, targets: object) -> Deferred:
        """Interrupt the targets' running commands (no task ids: see IMultiEngine.interrupt)."""
        return _forward(self._me.interrupt, _checked_targets(targets))
