"""The task scheduler as a state machine: each test feeds events and checks the decisions."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import ipkernel.controller.scheduler as scheduler_package
from ipkernel.controller.scheduler.decisions import (
    ABORTED,
    ENGINE_ERROR,
    FAILED,
    InterruptTask,
    RecoveryDropped,
    RecoveryQueued,
    RunTask,
    TaskDone,
    TaskState,
)
from ipkernel.controller.scheduler.machine import Scheduler


class FifoTests(SynchronousTestCase):
    """Plain tasks, first in, first out, over the engines that are there."""

    def test_fifo_across_two_engines(self) -> None:
        """Tasks go out in submission order to whichever engine frees up first."""
        s = Scheduler()
        self.assertEqual(s.engine_added(0), [])
        self.assertEqual(s.engine_added(1), [])
        self.assertEqual(s.submit(1), [RunTask(1, 0)])
        self.assertEqual(s.submit(2), [RunTask(2, 1)])
        self.assertEqual(s.submit(3), [])
        self.assertEqual(s.submit(4), [])
        self.assertEqual(s.task_finished(2, 1, True), [TaskDone(2, True), RunTask(3, 1)])
        self.assertEqual(s.task_finished(3, 1, True), [TaskDone(3, True), RunTask(4, 1)])
        self.assertEqual(s.task_finished(1, 0, True), [TaskDone(1, True)])
        self.assertEqual(s.task_finished(4, 1, True), [TaskDone(4, True)])
        self.assertEqual(s.attempts(1), 1)
        self.assertEqual(s.engine_of(3), 1)

    def test_tasks_wait_for_the_first_engine(self) -> None:
        """Tasks submitted before any engine exists run once engines arrive, oldest first,
        the lowest engine id first when several engines are idle."""
        s = Scheduler()
        self.assertEqual(s.submit(10), [])
        self.assertEqual(s.submit(11), [])
        self.assertEqual(s.submit(12), [])
        self.assertEqual(s.state(10), TaskState.SCHEDULED)
        self.assertEqual(s.engine_of(10), None)
        self.assertEqual(s.engine_added(5), [RunTask(10, 5)])
        self.assertEqual(s.engine_added(3), [RunTask(11, 3)])
        self.assertEqual(s.state(10), TaskState.PENDING)
        self.assertEqual(s.engine_of(10), 5)

    def test_spin_with_nothing_to_do(self) -> None:
        """A scheduling pass on a settled scheduler decides nothing."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1)
        s.submit(2)
        self.assertEqual(s.spin(), [])

    def test_late_reports_are_harmless(self) -> None:
        """Reports about a task an engine is not running, or from an engine that left,
        change nothing."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        s.submit(1)
        self.assertEqual(s.task_finished(1, 1, True), [])
        self.assertEqual(s.task_finished(99, 0, True), [])
        self.assertEqual(s.task_finished(1, 7, False), [])
        self.assertEqual(s.task_declined(1, 7, 0), [])
        self.assertEqual(s.properties_changed(7, 1), [])
        self.assertEqual(s.state(1), TaskState.PENDING)
        self.assertEqual(s.engine_of(1), 0)

    def test_engine_registry_errors(self) -> None:
        """Registering an engine id twice, or removing an unknown one, is refused."""
        s = Scheduler()
        s.engine_added(0)
        self.assertRaises(ValueError, s.engine_added, 0)
        self.assertRaises(ValueError, s.engine_removed, 1)
        self.assertRaises(ValueError, Scheduler, slots_per_engine=0)


class RetryTests(SynchronousTestCase):
    """Failed attempts and lost engines use up retries."""

    def test_retry_then_success(self) -> None:
        """A task that fails once with one retry runs again and succeeds in two attempts."""
        s = Scheduler()
        s.engine_added(0)
        self.assertEqual(s.submit(1, retries=1), [RunTask(1, 0)])
        self.assertEqual(s.task_finished(1, 0, False), [RunTask(1, 0)])
        self.assertEqual(s.attempts(1), 2)
        self.assertEqual(s.task_finished(1, 0, True), [TaskDone(1, True)])
        self.assertEqual(s.state(1), TaskState.SUCCEEDED)
        self.assertEqual(s.attempts(1), 2)

    def test_retries_exhausted(self) -> None:
        """With retries=2 a task runs three times at most, then fails with "failed"."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        self.assertEqual(s.submit(1, retries=2), [RunTask(1, 0)])
        self.assertEqual(s.task_finished(1, 0, False), [RunTask(1, 0)])
        self.assertEqual(s.task_finished(1, 0, False), [RunTask(1, 0)])
        self.assertEqual(s.task_finished(1, 0, False), [TaskDone(1, False, FAILED)])
        self.assertEqual(s.attempts(1), 3)
        self.assertEqual(s.state(1), TaskState.FAILED)

    def test_retry_keeps_its_place(self) -> None:
        """A retried task goes ahead of the tasks submitted after it, on any engine."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        s.submit(1, retries=1)
        s.submit(2)
        s.submit(3)
        s.submit(4)
        self.assertEqual(s.task_finished(1, 0, False), [RunTask(1, 0)])
        self.assertEqual(s.task_finished(1, 0, False), [TaskDone(1, False, FAILED), RunTask(3, 0)])

    def test_engine_lost_task_retried_at_the_front(self) -> None:
        """A task whose engine leaves is queued again ahead of the waiting tasks and runs on
        the next engine that frees up."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        s.submit(1, retries=1)
        s.submit(2)
        s.submit(3)
        self.assertEqual(s.engine_removed(0), [])
        self.assertEqual(s.state(1), TaskState.SCHEDULED)
        self.assertEqual(s.status()["scheduled"], [1, 3])
        self.assertEqual(s.task_finished(2, 1, True), [TaskDone(2, True), RunTask(1, 1)])
        self.assertEqual(s.attempts(1), 2)

    def test_engine_lost_task_retried_on_an_idle_engine(self) -> None:
        """When another engine is idle, the lost task goes to it at once."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1, retries=1)
        s.engine_added(1)
        self.assertEqual(s.engine_removed(0), [RunTask(1, 1)])

    def test_engine_lost_without_retries(self) -> None:
        """A task with no retries left fails with EngineError when its engine leaves."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        s.submit(1)
        s.submit(2)
        s.submit(3)
        self.assertEqual(s.engine_removed(0), [TaskDone(1, False, ENGINE_ERROR)])
        self.assertEqual(s.engine_of(1), 0)
        self.assertEqual(s.task_finished(2, 1, True), [TaskDone(2, True), RunTask(3, 1)])


class RecoveryTests(SynchronousTestCase):
    """Recovery tasks wait on standby and run when the task they recover fails for good."""

    def test_recovery_chain(self) -> None:
        """A task's recovery runs when its retries are spent; the recovery's own recovery
        runs when it fails too."""
        s = Scheduler()
        s.engine_added(0)
        self.assertEqual(s.submit(30, standby=True), [])
        self.assertEqual(s.submit(20, standby=True, recovery=30, retries=1), [])
        self.assertEqual(s.state(20), TaskState.STANDBY)
        self.assertEqual(s.submit(10, recovery=20), [RunTask(10, 0)])
        self.assertEqual(
            s.task_finished(10, 0, False),
            [TaskDone(10, False, FAILED), RecoveryQueued(10, 20), RunTask(20, 0)],
        )
        self.assertEqual(s.task_finished(20, 0, False), [RunTask(20, 0)])
        self.assertEqual(
            s.task_finished(20, 0, False),
            [TaskDone(20, False, FAILED), RecoveryQueued(20, 30), RunTask(30, 0)],
        )
        self.assertEqual(s.task_finished(30, 0, True), [TaskDone(30, True)])
        self.assertEqual(s.attempts(20), 2)
        self.assertEqual(s.status()["failed"], [10, 20])

    def test_recovery_after_engine_error(self) -> None:
        """An engine that leaves while running a task with no retries left triggers the
        recovery task, whatever the cause."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        s.submit(2, standby=True)
        s.submit(1, recovery=2)
        self.assertEqual(
            s.engine_removed(0),
            [TaskDone(1, False, ENGINE_ERROR), RecoveryQueued(1, 2), RunTask(2, 1)],
        )

    def test_recovery_takes_the_place_of_its_task(self) -> None:
        """A queued recovery task runs before the tasks submitted after the task it
        recovers."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(9, standby=True)
        s.submit(1, recovery=9)
        s.submit(2)
        s.submit(3)
        self.assertEqual(
            s.task_finished(1, 0, False),
            [TaskDone(1, False, FAILED), RecoveryQueued(1, 9), RunTask(9, 0)],
        )

    def test_unused_chain_dropped_on_success(self) -> None:
        """When a task succeeds its whole standby chain is dropped and forgotten."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(3, standby=True)
        s.submit(2, standby=True, recovery=3)
        s.submit(1, recovery=2)
        self.assertEqual(
            s.task_finished(1, 0, True),
            [TaskDone(1, True), RecoveryDropped(2), RecoveryDropped(3)],
        )
        self.assertRaises(IndexError, s.state, 2)
        self.assertRaises(IndexError, s.state, 3)

    def test_refused_chains(self) -> None:
        """submit refuses a recovery that is unknown, already claimed, already queued,
        itself, or that would close a loop, and leaves everything as it was."""
        s = Scheduler()
        self.assertRaises(ValueError, s.submit, 1, recovery=99)
        self.assertRaises(ValueError, s.submit, 1, recovery=1)
        self.assertRaises(IndexError, s.state, 1)
        s.submit(2, standby=True)
        s.submit(3, recovery=2)
        self.assertRaises(ValueError, s.submit, 4, recovery=2)
        self.assertRaises(ValueError, s.submit, 5, recovery=3)
        # 6 <- 7 exists; submitting 6 again to point at 7 would loop.
        s.submit(6, standby=True)
        s.submit(7, standby=True, recovery=6)
        self.assertRaises(ValueError, s.submit, 6, recovery=7)
        self.assertRaises(ValueError, s.submit, 8, retries=-1)
        self.assertEqual(s.state(7), TaskState.STANDBY)
        self.assertEqual(s.status()["scheduled"], [3])


class DependTests(SynchronousTestCase):
    """Tasks with depend are offered tentatively; declines are remembered per version."""

    def test_declined_task_tried_elsewhere(self) -> None:
        """A task declined by one engine goes to the next engine that frees up, while the
        declining engine takes the task behind it; a decline is not an attempt."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        self.assertEqual(s.submit(1, has_depend=True), [RunTask(1, 0)])
        self.assertEqual(s.submit(2), [RunTask(2, 1)])
        self.assertEqual(s.submit(3), [])
        self.assertEqual(s.task_declined(1, 0, 0), [RunTask(3, 0)])
        self.assertEqual(s.attempts(1), 0)
        self.assertEqual(s.state(1), TaskState.SCHEDULED)
        self.assertEqual(s.task_finished(2, 1, True), [TaskDone(2, True), RunTask(1, 1)])
        self.assertEqual(s.task_finished(1, 1, True), [TaskDone(1, True)])
        self.assertEqual(s.attempts(1), 1)
        self.assertEqual(s.engine_of(1), 1)

    def test_not_resent_until_properties_change(self) -> None:
        """A declined task is not offered to the same engine at the same properties
        version, even on spin; it is as soon as that engine's properties change."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1, has_depend=True)
        self.assertEqual(s.task_declined(1, 0, 0), [])
        self.assertEqual(s.spin(), [])
        self.assertEqual(s.state(1), TaskState.SCHEDULED)
        self.assertEqual(s.properties_changed(0, 1), [RunTask(1, 0)])
        self.assertEqual(s.task_declined(1, 0, 1), [])
        self.assertEqual(s.spin(), [])
        self.assertEqual(s.properties_changed(0, 2), [RunTask(1, 0)])
        self.assertEqual(s.task_finished(1, 0, True), [TaskDone(1, True)])

    def test_decline_at_an_old_version(self) -> None:
        """A verdict on properties that have changed since is stale: the task is offered
        to that engine again at once."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1, has_depend=True)
        self.assertEqual(s.properties_changed(0, 1), [])
        self.assertEqual(s.task_declined(1, 0, 0), [RunTask(1, 0)])

    def test_unrunnable_task_does_not_block(self) -> None:
        """Tasks every engine declined wait without holding back the tasks behind them,
        and run once an engine's properties change."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        self.assertEqual(s.submit(1, has_depend=True), [RunTask(1, 0)])
        self.assertEqual(s.submit(2, has_depend=True), [RunTask(2, 1)])
        self.assertEqual(s.task_declined(1, 0, 0), [])
        self.assertEqual(s.task_declined(2, 1, 0), [RunTask(2, 0), RunTask(1, 1)])
        self.assertEqual(s.task_declined(2, 0, 0), [])
        self.assertEqual(s.task_declined(1, 1, 0), [])
        self.assertEqual(s.spin(), [])
        self.assertEqual(s.submit(3), [RunTask(3, 0)])
        self.assertEqual(s.submit(4), [RunTask(4, 1)])
        self.assertEqual(s.submit(5), [])
        self.assertEqual(s.task_finished(3, 0, True), [TaskDone(3, True), RunTask(5, 0)])
        self.assertEqual(s.status()["scheduled"], [1, 2])
        self.assertEqual(s.properties_changed(1, 1), [])
        self.assertEqual(s.task_finished(4, 1, True), [TaskDone(4, True), RunTask(1, 1)])

    def test_new_engine_gets_waiting_task(self) -> None:
        """A task no engine could take is offered to an engine that joins later."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1, has_depend=True)
        s.task_declined(1, 0, 0)
        self.assertEqual(s.engine_added(1), [RunTask(1, 1)])

    def test_reconnected_engine_forgets_old_verdicts(self) -> None:
        """An engine that leaves and comes back under the same id is a new engine: what
        its predecessor declined is offered to it again."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1, has_depend=True)
        s.task_declined(1, 0, 0)
        s.engine_removed(0)
        self.assertEqual(s.engine_added(0), [RunTask(1, 0)])

    def test_decline_without_depend_refused(self) -> None:
        """Declining a task that has no depend function is a caller error."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1)
        self.assertRaises(ValueError, s.task_declined, 1, 0, 0)
        self.assertEqual(s.state(1), TaskState.PENDING)

    def test_depend_and_plain_keep_fifo_order(self) -> None:
        """Tasks with and without depend share one queue order."""
        s = Scheduler()
        s.submit(1)
        s.submit(2, has_depend=True)
        s.submit(3)
        s.submit(4, has_depend=True)
        self.assertEqual(s.engine_added(0), [RunTask(1, 0)])
        self.assertEqual(s.task_finished(1, 0, True), [TaskDone(1, True), RunTask(2, 0)])
        self.assertEqual(s.task_finished(2, 0, True), [TaskDone(2, True), RunTask(3, 0)])
        self.assertEqual(s.task_finished(3, 0, True), [TaskDone(3, True), RunTask(4, 0)])


class AbortTests(SynchronousTestCase):
    """abort cancels a task that has not finished, without retry or recovery."""

    def test_abort_queued(self) -> None:
        """A queued task is finished as aborted at once and never runs."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1)
        s.submit(2, retries=3)
        s.submit(3)
        self.assertEqual(s.abort(2), [TaskDone(2, False, ABORTED)])
        self.assertEqual(s.task_finished(1, 0, True), [TaskDone(1, True), RunTask(3, 0)])
        self.assertEqual(s.attempts(2), 0)

    def test_abort_running(self) -> None:
        """A running task is interrupted and finished as aborted; its engine's slot is
        freed when the engine reports back, whatever it reports."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(8, standby=True)
        s.submit(1, retries=2, recovery=8)
        s.submit(2)
        self.assertEqual(
            s.abort(1),
            [InterruptTask(1, 0), TaskDone(1, False, ABORTED), RecoveryDropped(8)],
        )
        self.assertEqual(s.state(1), TaskState.FAILED)
        self.assertEqual(s.spin(), [])
        self.assertEqual(s.task_finished(1, 0, False), [RunTask(2, 0)])
        self.assertEqual(s.state(1), TaskState.FAILED)

    def test_abort_tentative_then_declined(self) -> None:
        """An aborted depend task that its engine then declines only frees the slot."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1, has_depend=True)
        s.submit(2)
        s.abort(1)
        self.assertEqual(s.task_declined(1, 0, 0), [RunTask(2, 0)])

    def test_abort_running_then_engine_leaves(self) -> None:
        """An aborted task's engine leaving does not fail it a second time."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1)
        s.abort(1)
        self.assertEqual(s.engine_removed(0), [])

    def test_abort_finished_or_unknown(self) -> None:
        """Aborting a finished task, an aborted one or an unknown id raises IndexError."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1)
        s.task_finished(1, 0, True)
        e = self.assertRaises(IndexError, s.abort, 1)
        self.assertEqual(str(e), "task already completed")
        s.submit(2)
        s.abort(2)
        self.assertRaises(IndexError, s.abort, 2)
        e = self.assertRaises(IndexError, s.abort, 3)
        self.assertEqual(str(e), "no task 3")

    def test_abort_standby(self) -> None:
        """An aborted standby recovery task is cut from its chain: the task it would have
        recovered just fails."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(3, standby=True)
        s.submit(2, standby=True, recovery=3)
        s.submit(1, recovery=2)
        self.assertEqual(s.abort(2), [TaskDone(2, False, ABORTED), RecoveryDropped(3)])
        self.assertEqual(s.task_finished(1, 0, False), [TaskDone(1, False, FAILED)])


class Prioritised(Scheduler):
    """Runs the task with the highest priority first; equal priorities in FIFO order."""

    def __init__(self, priorities: dict[int, int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.priorities = priorities

    def priority(self, taskid: int) -> Any:
        return -self.priorities.get(taskid, 0)


class PriorityTests(SynchronousTestCase):
    """A subclass overriding priority() changes the queue order and nothing else."""

    def test_highest_priority_first(self) -> None:
        """Queued tasks run by priority, then in submission order."""
        s = Prioritised({3: 5, 4: 5, 5: 9})
        for taskid in (1, 2, 3, 4, 5):
            s.submit(taskid)
        self.assertEqual(s.status()["scheduled"], [5, 3, 4, 1, 2])
        self.assertEqual(s.engine_added(0), [RunTask(5, 0)])
        self.assertEqual(s.task_finished(5, 0, True), [TaskDone(5, True), RunTask(3, 0)])
        self.assertEqual(s.task_finished(3, 0, True), [TaskDone(3, True), RunTask(4, 0)])
        self.assertEqual(s.task_finished(4, 0, True), [TaskDone(4, True), RunTask(1, 0)])

    def test_retry_keeps_its_priority(self) -> None:
        """A retried low-priority task waits behind higher-priority tasks."""
        s = Prioritised({2: 1})
        s.engine_added(0)
        s.submit(1, retries=1)
        s.submit(2)
        self.assertEqual(s.task_finished(1, 0, False), [RunTask(2, 0)])
        self.assertEqual(s.task_finished(2, 0, True), [TaskDone(2, True), RunTask(1, 0)])

    def test_priorities_with_depend(self) -> None:
        """Priorities order tasks with depend among the others."""
        s = Prioritised({2: 1})
        s.submit(1)
        s.submit(2, has_depend=True)
        self.assertEqual(s.engine_added(0), [RunTask(2, 0)])


class SlotTests(SynchronousTestCase):
    """Several slots per engine: the least loaded engine is served first."""

    def test_two_slots_balanced(self) -> None:
        """With two slots each, tasks alternate between engines until all slots are full,
        and a freed slot takes the next task."""
        s = Scheduler(slots_per_engine=2)
        for taskid in range(1, 7):
            s.submit(taskid)
        self.assertEqual(s.engine_added(0), [RunTask(1, 0), RunTask(2, 0)])
        self.assertEqual(s.engine_added(1), [RunTask(3, 1), RunTask(4, 1)])
        self.assertEqual(s.task_finished(1, 0, True), [TaskDone(1, True), RunTask(5, 0)])
        self.assertEqual(s.task_finished(3, 1, True), [TaskDone(3, True), RunTask(6, 1)])

    def test_least_loaded_first(self) -> None:
        """New tasks go to the engine with the most free slots, ties by lowest id."""
        s = Scheduler(slots_per_engine=2)
        s.engine_added(0)
        s.engine_added(1)
        self.assertEqual(s.submit(1), [RunTask(1, 0)])
        self.assertEqual(s.submit(2), [RunTask(2, 1)])
        self.assertEqual(s.submit(3), [RunTask(3, 0)])
        s.task_finished(2, 1, True)
        self.assertEqual(s.submit(4), [RunTask(4, 1)])
        self.assertEqual(s.submit(5), [RunTask(5, 1)])
        self.assertEqual(s.submit(6), [])

    def test_engine_lost_with_two_tasks(self) -> None:
        """An engine leaving with two tasks requeues or fails each of them."""
        s = Scheduler(slots_per_engine=2)
        s.engine_added(0)
        s.submit(1, retries=1)
        s.submit(2)
        s.engine_added(1)
        self.assertEqual(s.engine_removed(0), [TaskDone(2, False, ENGINE_ERROR), RunTask(1, 1)])


class CapacityTests(SynchronousTestCase):
    """The capacity events: slots per engine, and engines busy with a batch in flight."""

    def test_busy_engines_get_nothing(self) -> None:
        """A busy engine is skipped by scheduling passes until it is free again; neither
        event runs a pass itself."""
        s = Scheduler(slots_per_engine=4)
        s.engine_added(0)
        self.assertIsNone(s.engine_busy(0))
        self.assertEqual(s.submit(1), [])
        self.assertIsNone(s.engine_free(0))
        self.assertEqual(s.state(1), TaskState.SCHEDULED)
        self.assertEqual(s.spin(), [RunTask(1, 0)])

    def test_busy_engine_keeps_its_tasks(self) -> None:
        """Busy engines still report on the tasks they hold, and other engines take the
        queue meanwhile."""
        s = Scheduler(slots_per_engine=2)
        s.engine_added(0)
        self.assertEqual(s.submit(1), [RunTask(1, 0)])
        s.engine_busy(0)
        s.submit(2)
        self.assertEqual(s.task_finished(1, 0, True), [TaskDone(1, True)])
        self.assertEqual(s.engine_added(1), [RunTask(2, 1)])

    def test_returned_task_keeps_its_place_and_attempts(self) -> None:
        """A task handed back unstarted goes back to its place in the queue, and the run
        that never started is not counted as an attempt."""
        s = Scheduler(slots_per_engine=2)
        s.engine_added(0)
        self.assertEqual(s.submit(1), [RunTask(1, 0)])
        self.assertEqual(s.submit(2), [RunTask(2, 0)])
        s.submit(3)
        s.engine_busy(0)
        self.assertEqual(s.task_returned(2, 0), [])
        self.assertEqual((s.attempts(2), s.status()["scheduled"]), (0, [2, 3]))
        self.assertEqual(s.task_returned(2, 0), [])
        self.assertEqual(s.task_returned(9, 5), [])
        s.engine_free(0)
        self.assertEqual(s.spin(), [RunTask(2, 0)])

    def test_busy_mark_leaves_with_the_engine(self) -> None:
        """An engine that leaves busy and comes back under the same id is not busy; busy
        events about unknown engines change nothing."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_busy(0)
        s.engine_removed(0)
        s.engine_busy(7)
        s.submit(1)
        self.assertEqual(s.engine_added(0), [RunTask(1, 0)])
        s.engine_free(7)
        self.assertEqual(s.engine_added(7), [])

    def test_set_slots(self) -> None:
        """More slots let an engine hold more tasks once its load changes; setting them
        decides nothing by itself; fewer than one are refused, and nothing changes then."""
        s = Scheduler()
        s.engine_added(0)
        self.assertEqual(s.submit(1), [RunTask(1, 0)])
        s.submit(2)
        s.submit(3)
        self.assertIsNone(s.set_slots(2))
        self.assertEqual(s.slots_per_engine, 2)
        self.assertEqual(
            s.task_finished(1, 0, True), [TaskDone(1, True), RunTask(2, 0), RunTask(3, 0)]
        )
        self.assertRaises(ValueError, s.set_slots, 0)
        self.assertEqual(s.slots_per_engine, 2)


class StatusTests(SynchronousTestCase):
    """status() and counts() report tasks by state, as queue_status does."""

    def test_status_and_counts(self) -> None:
        """Queued tasks are 'scheduled', running ones 'pending', aborted ones 'failed';
        standby recovery tasks are not listed."""
        s = Scheduler()
        s.engine_added(0)
        s.engine_added(1)
        s.submit(9, standby=True)
        for taskid in range(6):
            s.submit(taskid, recovery=9 if taskid == 5 else None)
        s.task_finished(0, 0, True)
        s.task_finished(1, 1, False)
        s.abort(5)
        self.assertEqual(
            s.status(),
            {"scheduled": [4], "pending": [2, 3], "succeeded": [0], "failed": [1, 5]},
        )
        self.assertEqual(s.counts(), {"scheduled": 1, "pending": 2, "succeeded": 1, "failed": 2})

    def test_forget_finished(self) -> None:
        """forget_finished drops finished tasks and keeps the others; a slot held by a
        forgotten aborted task is still freed when its engine reports back."""
        s = Scheduler()
        s.engine_added(0)
        s.submit(1)
        s.submit(2)
        s.submit(3)
        s.abort(1)
        s.abort(2)
        self.assertEqual(s.forget_finished(), [1, 2])
        self.assertRaises(IndexError, s.state, 1)
        self.assertEqual(s.counts()["failed"], 0)
        self.assertEqual(s.task_finished(1, 0, True), [RunTask(3, 0)])


class PurityTests(SynchronousTestCase):
    def test_imports_nothing_of_twisted_or_ipkernel(self) -> None:
        """Every module of the scheduler package imports only the standard library and
        its own package (relative imports): no Twisted, no other part of ipkernel."""
        package = Path(scheduler_package.__file__).parent
        for path in sorted(package.glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    self.assertNotIn(top, ("twisted", "ipkernel", "zope"), f"{path.name}: {name}")
