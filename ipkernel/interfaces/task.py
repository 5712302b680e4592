"""ITaskController: a load-balanced, fault-tolerant pool of engines.

Tasks are opaque to the controller. A task, in its wire form, is a list of
``[retries, body, depend]``: the task itself, then each of its recovery tasks in order.
``body`` is the frames of the serialized task (code or function and arguments, ``push``,
``pull``, ``clear_before``/``clear_after``), ``depend`` the frames of the serialized
``depend`` function or ``None``; only engines decode them. A finished task's result is a
record dict (see :meth:`ITaskController.get_task_result`) whose outcome is as in
:mod:`ipkernel.interfaces.engine`. The scheduler decides where and when each task runs;
the store keeps every record until cleared.

Every method is called in the reactor thread. Ids are ints from 0, never reused.
"""

from zope.interface import Interface


class ITaskController(Interface):
    """The Task service of one controller."""

    def reserve_ids(count):
        """Return the first of ``count`` new consecutive task ids, to submit tasks under.

        Raises ``ValueError`` if ``count`` is less than 1.
        """

    def reclaim_ids(first, count):
        """Check that the ``count`` ids from ``first`` were handed out by ``reserve_ids``
        (maybe before a restart), for a client to submit under them again; ``ValueError``
        if some never were."""

    def committed(now=False):
        """Return a Deferred that fires with ``None`` once the task store keeps every
        change made so far (tasks accepted, outcomes); with ``now``, the store writes
        them at once rather than when it next would."""

    def run(task, taskid=None):
        """Submit ``task``; return its integer id at once (not a Deferred).

        ``taskid`` is a reserved id not used yet; by default a new one is taken. Raises
        ``ValueError`` if the task (or its chain of recovery tasks) is malformed, or the
        id is in use.
        """

    def run_many(items):
        """Submit ``(taskid, task)`` pairs at once; return, per pair, ``None`` if it was
        accepted or the ``ValueError`` that refused it."""

    def get_task_result(taskid, block=False):
        """Return a Deferred firing with the task's record dict once it is finished.

        With ``block=False`` fire at once, with ``None`` if the task is not finished.
        The record has ``taskid``, ``state`` (``'succeeded'`` or ``'failed'``),
        ``status`` and ``value`` (the outcome: ``'ok'``/``'raised'`` with frames, or
        ``'error'`` with ``[type_name, message]``, e.g. ``EngineError``,
        ``TaskAborted``), ``engine_id``, ``submitted``, ``started``, ``completed``
        (seconds since the epoch), ``duration`` (seconds on the engine, or ``None``),
        ``attempts`` and ``recovered`` (0, or which recovery task's outcome it is).
        Raises ``IndexError`` for an unknown id, at once (not through the Deferred).
        """

    def get_task_results(taskids, block=False):
        """Like :meth:`get_task_result` for several ids: fire with a list, in order.

        With ``block=True`` wait until all are finished. Raises ``IndexError`` naming the
        first unknown id, at once, before waiting for anything.
        """

    def barrier(taskids):
        """Return a Deferred firing with ``None`` once every task in ``taskids`` has
        finished. Raises ``IndexError`` naming the first unknown id, at once."""

    def abort(taskid):
        """Cancel a task that has not finished (queued or running); return at once.

        The task finishes failed with ``TaskAborted``; a running one is interrupted on
        its engine, which stays usable. Raises ``IndexError`` ("task ... already
        completed") if it had finished, and ``IndexError`` for an unknown id.
        """

    def queue_status(verbose=False):
        """Return ``{'scheduled': n, 'pending': n, 'succeeded': n, 'failed': n}``.

        *scheduled*: waiting for an engine; *pending*: on an engine; *failed* includes
        aborted tasks. With ``verbose=True`` each value is the ascending list of ids.
        """

    def spin():
        """Run one scheduling pass now (every event runs one already)."""

    def clear():
        """Forget the records of finished tasks."""

    def engine_count():
        """Return how many engines can take tasks now."""
