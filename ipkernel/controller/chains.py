"""Recovery chains: the unfinished tasks' records and the scheduler ids of their links.

A task and its recovery tasks share one record and one id, the task's: as in IPython 0.9,
when a task fails for good its recovery task takes over its id, and the result under that
id is the outcome of the last task of the chain that ran. The scheduler knows the recovery
tasks under negative ids of their own; :class:`Chains` maps each scheduler id back to its
record and link, and keeps the records current in the store as the links move on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from ipkernel.controller.scheduler.decisions import Decision, TaskState
from ipkernel.controller.scheduler.machine import Scheduler
from ipkernel.controller.store import ITaskStore, TaskRecord, TaskSpec, close_held

__all__ = ["Chain", "Chains"]


@dataclass(slots=True, eq=False)
class Chain:
    """An unfinished record and the scheduler ids of its links (None: not submitted)."""

    record: TaskRecord
    sids: list[int | None]

    @property
    def active(self) -> int:
        """The scheduler id of the link in charge (``record.link``)."""
        sid = self.sids[self.record.link]
        assert sid is not None
        return sid


class Chains:
    """The unfinished tasks, by task id and by the scheduler ids of their links.

    Every change made to a record here is saved to ``store`` at once.
    """

    def __init__(self, store: ITaskStore) -> None:
        self._store = store
        self._link_ids = itertools.count(-1, -1)
        self._chains: dict[int, Chain] = {}  # task id -> its chain, while unfinished
        self._links: dict[int, tuple[Chain, int]] = {}  # scheduler id -> (chain, index)

    def start(self, record: TaskRecord, scheduler: Scheduler) -> list[Decision]:
        """Submit ``record``'s links from ``record.link`` on to ``scheduler``.

        The link in charge keeps the task's id; the recovery links after it get new
        negative ids and go in first, from the end of the chain, on standby (each naming
        the next). Returns the decisions of the last submission, which queues the task.
        """
        first = record.link
        sids: list[int | None] = [None] * len(record.chain)
        for index in range(first, len(record.chain)):
            sids[index] = record.taskid if index == first else next(self._link_ids)
        chain = Chain(record, sids)
        decisions: list[Decision] = []
        for index in range(len(record.chain) - 1, first - 1, -1):
            spec = record.chain[index]
            sid = sids[index]
            assert sid is not None
            self._links[sid] = (chain, index)
            decisions = scheduler.submit(
                sid,
                retries=spec.retries,
                recovery=sids[index + 1] if index + 1 < len(sids) else None,
                has_depend=spec.depend is not None,
                standby=index != first,
            )
        self._chains[record.taskid] = chain
        return decisions

    def get(self, taskid: int) -> Chain | None:
        """The chain of unfinished task ``taskid``, or ``None`` (finished or unknown)."""
        return self._chains.get(taskid)

    def __contains__(self, sid: object) -> bool:
        """True while scheduler id ``sid`` stands for a link of an unfinished task."""
        return sid in self._links

    def spec(self, sid: int) -> TaskSpec | None:
        """The spec of the link scheduler id ``sid`` stands for, or ``None``."""
        found = self._links.get(sid)
        if found is None:
            return None
        chain, index = found
        return chain.record.chain[index]

    def active_record(self, sid: int) -> TaskRecord | None:
        """The record of ``sid``'s task if ``sid`` is the link in charge, else ``None``."""
        found = self._links.get(sid)
        if found is None:
            return None
        chain, index = found
        return chain.record if chain.record.link == index else None

    def assigned(self, sid: int, engine_id: int, attempts: int) -> None:
        """Link ``sid`` goes to engine ``engine_id`` (its ``attempts``-th run): the
        record is pending there."""
        record = self._links[sid][0].record
        record.state = "pending"
        record.engine_id = engine_id
        record.attempts = attempts
        self._store.save(record)

    def sent(self, sid: int, now: float) -> TaskSpec:
        """Link ``sid`` leaves for its engine at ``now``; return its spec."""
        chain, index = self._links[sid]
        chain.record.started = now
        return chain.record.chain[index]

    def recovery_queued(self, sid: int, recovery_sid: int) -> None:
        """Link ``sid`` failed for good and ``recovery_sid`` takes over its record."""
        self._links.pop(sid, None)
        chain, index = self._links[recovery_sid]
        record = chain.record
        record.link = index
        record.state = "scheduled"
        record.engine_id = None
        record.attempts = 0
        self._store.save(record)

    def dropped(self, sid: int) -> None:
        """Standby link ``sid`` will never run."""
        self._links.pop(sid, None)

    def requeued(self, sids: Iterable[int], scheduler: Scheduler) -> None:
        """Copy the scheduler's state of these links into their records: after events that
        may have put them back in the queue without a decision (retries, declines)."""
        for sid in sids:
            record = self.active_record(sid)
            if record is None or record.finished:
                continue
            try:
                state = scheduler.state(sid)
            except IndexError:
                continue
            if state is TaskState.SCHEDULED and record.state != "scheduled":
                record.state = "scheduled"
                record.engine_id = None
                self._store.save(record)

    def finish(self, record: TaskRecord) -> None:
        """``record`` is finished (state and outcome set): save it, forget its chain, and
        free its links' large bodies (no link of a finished task runs again)."""
        self._store.save(record)
        chain = self._chains.pop(record.taskid, None)
        if chain is not None:
            for sid in chain.sids:
                if sid is not None:
                    self._links.pop(sid, None)
        for spec in record.chain:
            close_held(spec.body)
