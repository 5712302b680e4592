"""The MultiEngine interface over PB: validate, forward, translate errors.

One :class:`MultiEngineAdapter` per logged-in MultiEngine client. It holds no queueing or
fan-out logic: every remote method checks its arguments and forwards to
:class:`~ipkernel.interfaces.IMultiEngine`.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.spread import pb

from ipkernel.controller.multiengine import CLIENT_COMMANDS
from ipkernel.controller.registry import check_targets
from ipkernel.interfaces.multiengine import IMultiEngine
from ipkernel.wire.errors import WireError, to_wire


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


class MultiEngineAdapter(pb.Referenceable):
    """A MultiEngine client's avatar."""

    def __init__(self, multiengine: IMultiEngine) -> None:
        self._me = multiengine

    def remote_get_ids(self) -> list[int]:
        return self._me.get_ids()

    def remote_call(self, targets: object, command: object, args: object) -> Deferred:
        return _forward(
            self._me.call, _checked_targets(targets), _checked_command(command), _checked_args(args)
        )

    def remote_call_each(
        self, targets: object, command: object, args_per_target: object
    ) -> Deferred:
        per_target = [_checked_args(a) for a in _checked_args(args_per_target)]
        return _forward(
            self._me.call_each, _checked_targets(targets), _checked_command(command), per_target
        )

    def remote_queue_status(self, targets: object) -> Deferred:
        return _forward(self._me.queue_status, _checked_targets(targets))

    def remote_clear_queue(self, targets: object) -> Deferred:
        return _forward(self._me.clear_queue, _checked_targets(targets))

    def remote_kill(self, targets: object, controller: object = False) -> Deferred:
        return _forward(self._me.kill, _checked_targets(targets), bool(controller))
