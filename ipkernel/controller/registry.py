"""The engine registry: which engines are connected, under which ids.

Ids are integers from 0 and are never handed to a second engine while the first holds
them. An engine may ask for an id (its MPI rank, or its old id when it reconnects) and
gets it if no connected engine holds it; otherwise, and when it asks for nothing, it gets
the next id never given out before. A controller restarted from its task store starts
past the ids of its earlier runs (``first_id``), and keeps each new high mark
(``on_new_id``), so that an engine that reconnects late still finds its old id free.
"""

from __future__ import annotations

from collections.abc import Callable

from zope.interface.verify import verifyObject

from ipkernel.errors import InvalidEngineID, NoEnginesRegistered
from ipkernel.interfaces.engine import IEngine
from ipkernel.interfaces.multiengine import check_targets


class EngineRegistry:
    """Engines by id.

    :param first_id: the first id to give an engine that asks for none.
    :param on_new_id: called with the new first id never given out, before an engine is
        given an id at or past the old one (an exception refuses the registration).
    """

    def __init__(self, first_id: int = 0, on_new_id: Callable[[int], None] | None = None) -> None:
        self._engines: dict[int, IEngine] = {}
        self._next_id = first_id
        self._on_new_id = on_new_id

    def register(self, engine: IEngine, requested_id: int | None = None) -> int:
        """Add ``engine``, set ``engine.id`` and return it.

        ``requested_id`` is granted when it is a non-negative int no connected engine
        holds.
        """
        verifyObject(IEngine, engine, tentative=True)
        if (
            isinstance(requested_id, int)
            and not isinstance(requested_id, bool)
            and requested_id >= 0
            and requested_id not in self._engines
        ):
            engine_id = requested_id
        else:
            while self._next_id in self._engines:
                self._next_id += 1
            engine_id = self._next_id
        if engine_id >= self._next_id:
            if self._on_new_id is not None:
                self._on_new_id(engine_id + 1)
            self._next_id = engine_id + 1
        engine.id = engine_id
        self._engines[engine_id] = engine
        return engine_id

    def unregister(self, engine_id: int) -> None:
        """Remove an engine (no error if it is already gone)."""
        self._engines.pop(engine_id, None)

    def ids(self) -> list[int]:
        """The registered ids, ascending."""
        return sorted(self._engines)

    def get(self, engine_id: int) -> IEngine:
        """The engine with that id; :class:`InvalidEngineID` if there is none."""
        try:
            return self._engines[engine_id]
        except KeyError:
            raise InvalidEngineID(
                f"no engine with id {engine_id!r}; registered ids: {self.ids()}"
            ) from None

    def __contains__(self, engine_id: object) -> bool:
        return engine_id in self._engines

    def __len__(self) -> int:
        return len(self._engines)

    def resolve(self, targets: object) -> list[int]:
        """Turn a ``targets`` value into a list of registered ids, in the order given.

        ``'all'`` is every registered id, ascending. Raises :class:`NoEnginesRegistered`
        when no engine is registered, ``ValueError`` naming a value that is not ``'all'``,
        an int or a list of ints, and :class:`InvalidEngineID` for an unknown id.
        """
        ids = check_targets(targets)
        if not self._engines:
            raise NoEnginesRegistered(
                "no engines are registered with the controller; start some with "
                "`ipengine` or `ipcluster -n N`"
            )
        if ids is None:
            return self.ids()
        unknown = [i for i in ids if i not in self._engines]
        if unknown:
            raise InvalidEngineID(f"no engine with id {unknown[0]!r}; registered ids: {self.ids()}")
        return ids
