"""The login gate: the root object of each listening port.

A connection gets a :class:`Gate` of its own. Its one remote method,
``login(secret, role)``, checks the secret in constant time against every role the port
serves and hands back that role's avatar if it is the role asked for
(:mod:`ipkernel.security.roles`). Until then the connection's broker keeps its small
pre-authentication limits; after a good login both ends raise them (the client does so on
its side). A wrong secret is answered with ``StaleKeyFile``, the secret of another role
with ``WrongKeyFile`` naming both roles; either way the connection is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.spread import pb
from twisted.spread.flavors import IPBRoot
from zope.interface import implementer

from ipkernel.security import check_secret
from ipkernel.security.roles import wrong_role_message
from ipkernel.wire.errors import WireError

AvatarFactory = Callable[[pb.Broker], pb.Referenceable]


@implementer(IPBRoot)
class GateRoot:
    """One per listening port: ``roles`` lists ``(name, secret, avatar factory)`` for
    each role the port serves (names from :mod:`ipkernel.security.roles`).

    ``clock`` (an ``IReactorTime``) is what each connection's :class:`Gate` uses to hang
    up after a refusal has been sent.
    """

    def __init__(self, roles: list[tuple[str, str, AvatarFactory]], clock: IReactorTime) -> None:
        self.roles = roles
        self._clock = clock

    def rootObject(self, broker: pb.Broker) -> Gate:  # noqa: N802 - Twisted's name
        return Gate(self.roles, broker, self._clock)


class Gate(pb.Referenceable):
    """A connection's way in: one ``login`` attempt."""

    def __init__(
        self,
        roles: list[tuple[str, str, AvatarFactory]],
        broker: pb.Broker,
        clock: IReactorTime,
    ) -> None:
        self._roles = roles
        self._broker = broker
        self._clock = clock
        self._tried = False

    def remote_login(self, secret: object, role: object) -> pb.Referenceable:
        """Return the avatar of ``role`` if ``secret`` is its secret; fail with
        ``StaleKeyFile`` for a secret of no role here, ``WrongKeyFile`` for another
        role's."""
        if self._tried:
            raise WireError("StaleKeyFile", "only one login is allowed per connection")
        self._tried = True
        chosen = None
        # Check every role so the time taken does not depend on which one matched.
        for name, expected, factory in self._roles:
            if check_secret(secret, expected) and chosen is None:
                chosen = name, factory
        if chosen is None or chosen[0] != role:
            # Hang up once the refusal below has been sent.
            self._clock.callLater(0, self._broker.transport.loseConnection)
            if chosen is not None:
                raise WireError("WrongKeyFile", wrong_role_message(chosen[0], role))
            raise WireError(
                "StaleKeyFile",
                "the controller refused the key file's secret: the key file is stale "
                "(from another controller or an earlier run); copy the current one from "
                "the controller's security directory",
            )
        raise_limits = getattr(self._broker, "raise_limits", None)
        if raise_limits is not None:
            raise_limits()
        return chosen[1](self._broker)
