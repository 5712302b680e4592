"""Engines' verdicts on ``depend`` functions, so a known "no" costs no round trip.

``depend`` runs on the engines, never in the controller. A task with ``depend`` is offered
to an engine, which evaluates ``depend`` against its own properties first and runs the
task or declines it, naming the properties version it judged. The scheduler does not offer
that task to that engine again until its properties change; :class:`DependVerdicts` also
remembers the verdict per ``depend`` function (by the SHA-256 of its frames) and engine,
so that other tasks with the same function are declined in the controller, without a round
trip, until the engine's properties change. A change announced by the engine (set by a
client, or by code running there) makes every waiting task a candidate again.
"""

from __future__ import annotations

__all__ = ["DependVerdicts"]


class DependVerdicts:
    """Each engine's newest properties version and the functions it declined at it."""

    def __init__(self) -> None:
        self._versions: dict[int, int] = {}  # engine -> newest properties version seen
        self._verdicts: dict[int, dict[bytes, int]] = {}  # engine -> digest -> version

    def add_engine(self, engine_id: int) -> None:
        """Engine ``engine_id`` arrived, its properties at version 0, no verdicts yet."""
        self._versions[engine_id] = 0
        self._verdicts[engine_id] = {}

    def remove_engine(self, engine_id: int) -> None:
        """Forget engine ``engine_id`` (no error if unknown)."""
        self._versions.pop(engine_id, None)
        self._verdicts.pop(engine_id, None)

    def version(self, engine_id: int) -> int:
        """The newest properties version of known engine ``engine_id``."""
        return self._versions[engine_id]

    def newer(self, engine_id: int, version: int) -> bool:
        """Note ``version`` of engine ``engine_id``'s properties; True if it is newer than
        any seen (its verdicts then no longer hold), False if it changes nothing."""
        if version <= self._versions.get(engine_id, 0):
            return False
        self._versions[engine_id] = version
        return True

    def declined(self, engine_id: int, digest: bytes, version: int) -> None:
        """Engine ``engine_id`` declined the function ``digest`` at properties ``version``."""
        self._verdicts[engine_id][digest] = version

    def declines(self, engine_id: int, digest: bytes) -> bool:
        """True if engine ``engine_id`` declined ``digest`` at its current properties."""
        return self._verdicts[engine_id].get(digest) == self._versions[engine_id]
