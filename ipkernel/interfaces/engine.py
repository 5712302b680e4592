"""IEngine: what the controller can ask of one engine.

The controller holds one provider of :class:`IEngine` per registered engine: over the
network that is a proxy to a remote engine process (``ipkernel.adapters.pb_engine``), in
one process the engine itself (``ipkernel.engine.core.EngineCore``), in tests also a fake.
Either way the controller never looks inside user data:

- *frames* are ``list[bytes]``, the output of :func:`ipkernel.serialization.serialize`:
  an opaque, chunked pickle that only clients and engines decode. A large value may
  travel as a *payload* object standing for its frames instead (a stream or a
  shared-memory handle, :mod:`ipkernel.wire.transfer`).
- Every command fires with an **outcome**, a wire-safe tuple ``(status, value)``:

  ``("ok", frames)``
      the command ran; ``frames`` (or a payload) holds its serialized value.
  ``("raised", frames)``
      the command raised on the engine (user code, or arguments the command refused);
      ``frames`` holds the serialized remote failure (exception, type name, message,
      traceback text) built by the engine.
  ``("error", (type_name, message))``
      the command did not run to completion for a reason the engine or the controller
      knows, for example ``("EngineError", "engine 3 died")`` or ``("QueueCleared",
      ...)``. ``type_name`` names a class of :data:`ipkernel.errors.WIRE_ERRORS` (one of
      :mod:`ipkernel.errors` or a builtin exception).
  ``("tasks", entries)`` or ``("tasks", entries, apart)``
      only from ``run_task``, which runs a batch of tasks for the task controller:
      ``entries`` is one packed message (:data:`ipkernel.interfaces.records.TASK_REPLY`)
      with one wire-safe entry per task, in order, so the controller reads each task's
      fate without unpickling anything: its status ``ok`` or ``raised`` (with frames, as
      above), ``declined`` (the task's ``depend`` function was false, or raised, for the
      engine's properties at the version given; nothing else ran) or ``error`` (type
      name and message, e.g. ``TaskAborted`` for a task aborted before it started), and
      how long it took on the engine. ``apart`` is ``{entry index: payload}`` for the
      large values that left apart (the controller's engine proxy hands on what it kept
      of each, or the message saying why it could not). See :mod:`ipkernel.engine.tasks`.

The commands, their arguments (``args``) and the value an ``ok`` outcome carries:

====================  ==================================  ================================
command               args                                ``ok`` value
====================  ==================================  ================================
``execute``           ``[code]``                          the result dict
``push``              ``[frames of {name: value}]``,      ``None``
                      or ``[frames, True]``: read-only
``pull``              ``[name]`` or ``[[names]]``         the value, or a list of them
``push_function``     ``[frames of {name: function}]``    ``None``
``pull_function``     ``[name]`` or ``[[names]]``         as ``pull``
``get_result``        ``[]`` or ``[number]``              that execution's result dict
``reset``             ``[]``                              ``None``
``keys``              ``[]``                              the names in the namespace
``apply``             ``[frames of (function, items)]``   ``[function(x) for x in items]``
``run_task``          ``[batch]`` or ``[batch, bodies]``  (a ``tasks`` outcome)
``get_properties``    ``[]``, ``[None]``, ``[key(s)]``    a dict of properties
``set_properties``    ``[frames of {key: value}]``        ``None``
``has_properties``    ``[key]`` or ``[[keys]]``           a bool, or a list of them
``del_properties``    ``[key]`` or ``[[keys]]``           ``None``
``clear_properties``  ``[]``                              ``None``
``ping``              ``[]``                              ``"pong"``
``release_shm``       ``[[segment tokens]]``              how many segments it closed
``introduce``         ``[certificate PEM]``               ``[host, port, fingerprint]``
``interrupt``         ``[]`` or ``[taskid]``              ``None``
``kill``              ``[]``                              ``None`` (then the engine stops)
====================  ==================================  ================================

``interrupt()`` raises ``KeyboardInterrupt`` in the running command; ``interrupt(taskid)``
aborts one task of a ``run_task`` batch: skipped if it has not started, interrupted if it
is running, and no other task is touched.

``introduce(certificate)`` is how the controller introduces a MultiEngine client to the
engine for direct links (:mod:`ipkernel.wire.direct`): the engine accepts links from the
holder of that certificate and answers where to dial it and which certificate it will
show. It fails (``raised``) where the engine takes no direct links.

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
        "interrupt",
        "kill",
        "ping",
        "release_shm",
        "introduce",
    }
)


class IEngine(Interface):
    """One engine, as the controller sees it."""

    id = Attribute(
        "The engine's integer id, unique within the controller's life; set by the "
        "controller's registry when the engine registers."
    )
    info = Attribute(
        "A dict describing the engine: 'pid', 'host', 'mpi_rank' (or None), and for shared "
        "memory 'host_id' and 'shm_probe' (absent or None where it is not available)."
    )

    def call(command, args, options=None):
        """Run ``command`` with the positional arguments ``args`` on the engine.

        ``command`` is a name from :data:`QUEUED_COMMANDS` or :data:`DIRECT_COMMANDS`.
        Queued commands must be sent one at a time (the per-engine queue does this);
        direct commands may be sent at any time, also while a queued command runs, and
        are answered without waiting for it.

        ``args`` is a list of wire-safe values, the command's arguments as listed in the
        module docstring. Where a command takes frames, ``args`` may hold a payload object
        instead (a stream or a shared-memory handle, :mod:`ipkernel.wire.transfer`), and
        ``run_task`` may take a second argument ``{record index: body payload}`` for the
        task bodies that travel apart; the controller passes payloads on untouched.

        ``options`` is ``None`` or a dict of wire-safe transfer hints: ``reply_to``, the
        requester's shared-memory probe, so that the engine may answer a large result
        through shared memory; ``direct``, the requesting client's certificate digest, so
        that it may answer over that client's direct link (see ``introduce`` and
        :mod:`ipkernel.wire.direct`). Every implementation takes ``options``.

        Returns a Deferred that fires with an outcome (see the module docstring): ``ok``
        with the frames (or a payload object standing for them) of the command's value,
        ``tasks`` for ``run_task``. It never errbacks. A command that raises on the
        engine, wrong arguments included (``TypeError``), fires with ``("raised",
        frames)``. It fires with ``("error", (type_name, message))`` when the command did
        not run:

        - ``EngineError``: the engine was gone, or went away before answering, or
          answered something that is not an outcome;
        - ``ValueError``: ``command`` is not an engine command;
        - ``TransferError``: an argument that travels apart did not arrive whole;
        - ``TypeError``: a malformed ``run_task`` batch, or a call whose ``command`` is
          not a string or whose ``args`` is not a list.
        """

    def notify_on_disconnect(callback):
        """Call ``callback(engine)`` when the engine goes away (died, stopped, lost, or
        :meth:`disconnect` was called); the controller then forgets it.

        An engine reached over the network answers every later command with ``("error",
        ("EngineError", message))``.
        """

    def disconnect():
        """Drop the connection to the engine without asking it to stop; return nothing.

        The :meth:`notify_on_disconnect` callbacks are called once the connection is down
        (at once for an engine in this process).
        """
