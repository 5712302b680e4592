"""ITaskController: a load-balanced, fault-tolerant pool of engines.

Tasks are opaque to the controller: a task is a dict of wire-safe fields produced by the
client (``frames`` for the serialized task body, ``retries``, ``recovery`` for a chained
recovery task, ``has_depend``, ``clear_before``/``clear_after``), and its result is an
outcome as in :mod:`ipkernel.interfaces.engine`. The scheduler decides where and when each
task runs; the store keeps every record until cleared.
"""

from zope.interface import Interface


class ITaskController(Interface):
    """The Task service of one controller."""

    def run(task):
        """Submit ``task``; return its integer id at once (not a Deferred).

        Raises ``ValueError`` if the task (or its chain of recovery tasks) is malformed
        or loops.
        """

    def get_task_result(taskid, block=False):
        """Return a Deferred firing with the task's record dict once it is finished.

        With ``block=False`` fire at once with ``None`` if the task is not finished.
        Errbacks with ``IndexError`` for an unknown id.
        """

    def barrier(taskids):
        """Fire with ``None`` once every task in ``taskids`` has finished."""

    def abort(taskid):
        """Cancel a task that has not finished (queued or running).

        Raises ``IndexError`` ("task already completed") if it had finished, or for an
        unknown id.
        """

    def queue_status(verbose=False):
        """Return ``{'scheduled': n, 'pending': n, 'succeeded': n, 'failed': n}``.

        With ``verbose=True`` each value is the list of task ids instead of a count.
        """

    def spin():
        """Run one scheduling pass now."""

    def clear():
        """Forget the records of finished tasks."""
