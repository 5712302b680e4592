"""Waiting for engines to register with a controller that is starting.

ipcluster starts the controller and the engines at once; it knows the cluster is up when
it sees every engine's id, asking the controller as a MultiEngine client does (logged in
with the MultiEngine key file once the controller has written it), but without loading
the client's code: the CPU it would take is the engines' while they start.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

__all__ = ["RegistrationTimeout", "wait_for_engines"]

# How often to look for the key file and ask for the engine ids.
_POLL_INTERVAL = 0.025


class RegistrationTimeout(Exception):
    """The deadline passed first; the message says what was missing (no key file, ...)."""


def wait_for_engines(
    reactor: Any,
    mec_key_file: Path,
    count: int,
    deadline: float,
    give_up: Callable[[], bool] = lambda: False,
) -> Deferred:
    """Poll the controller of ``mec_key_file`` until ``count`` engines have registered.

    Fires with the engine ids once there are at least ``count``, or with ``None`` as soon as
    ``give_up()`` is true (the cluster's startup ended otherwise). Errbacks with
    :class:`RegistrationTimeout` once ``reactor.seconds()`` passes ``deadline``, saying
    whether the key file never appeared, the controller could not be reached, or how many
    engines came.
    """
    from ipkernel.security import read_key_file, roles
    from ipkernel.wire.connect import call_controller, login

    def remaining() -> float:
        # A hung connection must not keep ipcluster past its deadline.
        return max(deadline - reactor.seconds(), 0.1)

    source = str(mec_key_file)

    def disconnect(avatar: Any) -> None:
        transport = avatar.broker.transport
        if transport is not None:
            transport.loseConnection()

    @inlineCallbacks
    def poll():
        avatar = None
        last_error = None
        ids: list = []
        try:
            while not give_up():
                if reactor.seconds() > deadline:
                    if avatar is None:
                        raise RegistrationTimeout(
                            f"the controller wrote no key file ({mec_key_file})"
                            if not mec_key_file.exists()
                            else "cannot connect to the controller "
                            f"({last_error or 'its key file came too late to try'})"
                        )
                    raise RegistrationTimeout(f"only {len(ids)} of {count} engines registered")
                if avatar is None and mec_key_file.exists():
                    try:
                        keyfile = read_key_file(mec_key_file)
                        connecting = login(reactor, keyfile, roles.MULTIENGINE, source=source)
                        avatar = yield connecting.addTimeout(remaining(), reactor)
                    except Exception as exc:
                        last_error = exc
                        avatar = None
                if avatar is not None:
                    try:
                        asking = call_controller(avatar, source, "get_ids")
                        ids = yield asking.addTimeout(remaining(), reactor)
                    except Exception as exc:
                        last_error = exc
                        disconnect(avatar)
                        avatar = None
                    else:
                        if len(ids) >= count:
                            return ids
                yield deferLater(reactor, _POLL_INTERVAL, lambda: None)
            return None
        finally:
            if avatar is not None:
                disconnect(avatar)

    return poll()
