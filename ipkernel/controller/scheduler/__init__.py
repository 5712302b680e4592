"""The task scheduler: a pure state machine that decides where and when each task runs.

Events in, decisions out, no I/O. The task controller feeds the scheduler
(:class:`~ipkernel.controller.scheduler.machine.Scheduler`) what happened (a task was
submitted, an engine arrived or left, an engine finished or declined a task, an engine's
properties changed, an engine became busy or free, a user aborted a task) and carries out
the decisions each event returns (:mod:`~ipkernel.controller.scheduler.decisions`). The
scheduler never touches the network, the reactor or the clock, knows tasks and engines
only by their integer ids, and its state changes only through its event methods, so every
behaviour is pinned down by plain function calls. Nothing in this package imports Twisted
or any other part of ipkernel.

Model
-----
A task is in one of five states (``TaskState``): ``standby`` (a recovery task known
ahead of time and queued only if needed), ``scheduled`` (queued, waiting for an engine),
``pending`` (sent to an engine), ``succeeded`` and ``failed``. As in IPython 0.9's
``queue_status``, *scheduled* tasks wait in the queue and *pending* tasks are on engines.

Each engine has ``slots_per_engine`` slots (1 by default: one task at a time). After every
event the scheduler runs a scheduling pass: while some engine has a free slot, the least
loaded engine (ties by lowest id) gets the first task in queue order that it can take. A
task it cannot take stays where it is and does not hold back the tasks behind it. An
engine marked busy (a batch in flight, say) is skipped by passes until it is free again.

Queue order is first in, first out. A task that goes back to the queue (a retry, or a
decline) keeps its original place, ahead of everything submitted after it: in plain FIFO
that is the front of the queue. A recovery task takes the place of the task it recovers.
Subclasses change the order by overriding ``Scheduler.priority``.

Retries and recovery: ``retries`` counts re-runs, so ``retries=2`` allows three attempts.
A failed attempt, or an engine that leaves while running the task, uses up one retry; a
task with none left finishes failed (``TaskDone`` with reason ``"failed"`` or
``"EngineError"``) and, if it has a recovery task, that task is queued
(``RecoveryQueued``). Recovery tasks may have their own recovery task. When a task
finishes without needing its recovery chain (success or abort), the chain is dropped
(``RecoveryDropped``).

Dependencies: a task submitted with ``has_depend`` carries a ``depend`` function that only
the engine evaluates, against its own properties, as the first step of a run. A
``RunTask`` for such a task is therefore tentative: the engine either runs it (and
reports ``task_finished``) or declines it (``task_declined``, naming the properties
version it judged). The scheduler remembers each verdict per (task, engine, properties
version) and does not offer that task to that engine again until the engine's properties
change (``properties_changed``).

Cost: tasks without ``depend`` live in one shared heap, so each event costs O(log n) in the
number of queued tasks; tasks with ``depend`` are also indexed per engine, so submitting
one costs O(engines * log n) and a property change re-indexes that engine's candidates.
"""
