"""IMultiEngine: run commands on chosen engines, by id.

The controller implements this over its engine registry and per-engine queues
(``ipkernel.controller.multiengine``); the PB adapter exposes it to MultiEngine clients.

``targets`` is ``'all'``, an ``int`` engine id, or a ``list`` of ids, always in the
order given. Methods that act on engines fire with a list of ``(engine_id, outcome)``
pairs (outcomes as in :mod:`ipkernel.interfaces.engine`), one per target in target order,
and errback only for errors of the whole call:

- :class:`ipkernel.errors.InvalidEngineID` if a target id is not registered;
- :class:`ipkernel.errors.NoEnginesRegistered` if there are no engines at all;
- :class:`ValueError` naming a ``targets`` value of the wrong type.

A failure on one engine is that engine's outcome and never disturbs the others.
"""

from zope.interface import Interface


def check_targets(targets: object) -> list[int] | None:
    """Validate a ``targets`` value; ``None`` stands for ``'all'``.

    Raises ``ValueError`` naming the value unless it is ``'all'``, an int, or a list or
    tuple of ints.
    """
    if targets == "all" and isinstance(targets, str):
        return None
    if isinstance(targets, int) and not isinstance(targets, bool):
        return [targets]
    if isinstance(targets, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in targets
    ):
        return list(targets)
    raise ValueError(f"targets must be 'all', an engine id (int) or a list of ids, not {targets!r}")


class IMultiEngine(Interface):
    """The MultiEngine service of one controller."""

    def get_ids():
        """Return the ids of the registered engines, ascending (a list, not a Deferred)."""

    def get_engine_info(targets):
        """Fire with ``[(id, info), ...]``: each target's registration info dict.

        ``info`` is what the engine registered with (``IEngine.info``): ``'pid'``,
        ``'host'``, ``'mpi_rank'``, and for shared memory ``'host_id'`` and
        ``'shm_probe'`` (see :mod:`ipkernel.shm`). Clients use it to choose how to send
        large payloads.
        """

    def call(targets, command, args, options=None):
        """Queue ``command(*args)`` on every target.

        ``command`` is an engine command name (see ``IEngine.call``); ``args`` is the same
        list of wire-safe arguments for every target. Queued commands wait their turn in
        each engine's queue; direct ones are sent at once. ``options`` (None or a dict of
        wire-safe transfer hints, see ``IEngine.call``) goes to each engine with the
        command. Arguments may hold payloads (streams, shared-memory handles), which are
        passed along untouched.

        Returns a Deferred firing with the ``(engine_id, outcome)`` pairs in target order;
        besides the errors of the whole call (module docstring) it errbacks with
        ``ValueError`` if ``command`` is not an engine command, and then nothing is sent.
        """

    def call_each(targets, command, args_per_target, options=None):
        """Like :meth:`call`, but target ``i`` gets ``args_per_target[i]`` (scatter, map).

        ``len(args_per_target)`` must equal the number of targets once ``'all'`` is
        resolved, else the Deferred errbacks with ``ValueError``.
        """

    def queue_status(targets):
        """Fire with ``[(id, {'queue': [command names], 'pending': name or None}), ...]``."""

    def clear_queue(targets):
        """Drop every queued, not yet started command on the targets.

        Each dropped command's outcome becomes ``("error", ("QueueCleared", ...))``.
        Fires with ``[None, ...]``, one per target.
        """

    def kill(targets, controller=False):
        """Stop the target engines; with ``controller=True`` stop the controller afterwards.

        Fires with the ``(engine_id, outcome)`` pairs of the ``kill`` commands.
        """

    def interrupt(targets):
        """Raise ``KeyboardInterrupt`` in the command running on each target, if any.

        Sent at once, past the queues: queued commands still run afterwards, and each
        engine keeps its namespace. There is no argument to name a task: aborting one
        task belongs to the task controller (``ITaskController.abort``). Fires with the
        ``(engine_id, outcome)`` pairs of the ``interrupt`` commands.
        """
