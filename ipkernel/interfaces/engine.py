"""IEngine: what the controller can ask of one engine.

The controller holds one provider of :class:`IEngine` per registered engine: over the
network that is a proxy to a remote engine process (``ipkernel.adapters.pb_engine``), in
tests it is an in-memory fake. Either way the controller never looks inside user data:

- *frames* are ``list[bytes]``, the output of :func:`ipkernel.serialization.serialize`:
  an opaque, chunked pickle that only clients and engines decode.
- Every command fires with an **outcome**, a wire-safe tuple ``(status, value)``:

  ``("ok", frames)``
      the command ran; ``frames`` holds its serialized result.
  ``("raised", frames)``
      user code raised; ``frames`` holds the serialized remote failure (exception,
      type name, message, traceback text) built by the engine.
  ``("error", (type_name, message))``
      the command did not run to completion for a reason the controller knows, for
      example ``("EngineError", "engine 3 died")`` or ``("QueueCleared", ...)``.
      ``type_name`` names a class in :mod:`ipkernel.errors`.
  ``("tasks", entries)``
      only from ``run_task(batch)``, which runs a batch of tasks for the task controller:
      ``entries`` is one packed message (:data:`ipkernel.interfaces.records.TASK_REPLY`) with
      one wire-safe entry per task, in order, so the controller reads each task's fate
      without unpickling anything: its status ``ok`` or ``raised`` (with frames, as
      above), ``declined`` (the task's ``depend`` function was false, or raised, for the
      engine's properties at the version given; nothing else ran) or ``error`` (type
      name and message, e.g. ``TaskAborted`` for a task aborted before it started), and
      how long it took on the engine. See :mod:`ipkernel.engine.tasks`.

``interrupt()`` raises ``KeyboardInterrupt`` in the running command; ``interrupt(taskid)``
aborts one task of a ``run_task`` batch: skipped if it has not started, interrupted if it
is running, and no other task is touched.

A command that fails affects only itself.
"""

from zope.interface import Attribute, Interface

#: Commands that touch the engine's namespace: they go through the engine's queue and
#: run one at a time, in order.
QUEUED_COMMANDS = frozenset(
    {
        "execute",
        "push",
        "pull",
        "push_function",
        "pull_function",
        "get_result",
        "reset",
        "keys",
        "apply",
        "run_task",
    }
)

#: Commands an engine answers at once, even while user code runs.
DIRECT_COMMANDS = frozenset(
    {
        "get_properties",
        "set_properties",
        "has_properties",
        "del_properties",
        "clear_properties",
        "check_depend",
        "interrupt",
        "kill",
        "ping",
        "release_shm",
    }
)


class IEngine(Interface):
    """One engine, as the controller sees it."""

    id = Attribute("The engine's integer id, unique within the controller's life.")
    info = Attribute(
        "A dict describing the engine: 'pid', 'host', 'mpi_rank' (or None), and for shared "
        "memory 'host_id' and 'shm_probe' (absent or None where it is not available)."
    )

    def call(command, args):
        """Run ``command`` with positional ``args`` (a list of wire-safe values) on the engine.

        ``command`` is a name from :data:`QUEUED_COMMANDS` or :data:`DIRECT_COMMANDS`.
        Queued commands must be sent one at a time (the per-engine queue does this);
        direct commands may be sent at any time.

        Returns a Deferred that fires with an outcome (see the module docstring). It never
        errbacks for user-code failures; if the engine goes away before answering it fires
        with ``("error", ("EngineError", message))``.

        Large payloads: arguments and outcomes may hold payload objects instead of frames
        (streams and shared-memory handles, :mod:`ipkernel.wire.transfer`); the
        controller passes them on untouched. An implementation may accept a third
        argument, ``options``: a dict of wire-safe transfer hints, for now ``reply_to``
        (the requesting client's shared-memory probe, so that the engine may answer
        through shared memory). Callers pass it only when they have hints, so engines
        that take two arguments keep working.
        """

    def notify_on_disconnect(callback):
        """Call ``callback(engine)`` once when the engine goes away (died, stopped, lost)."""

    def disconnect():
        """Drop the connection to the engine without asking it to stop."""
