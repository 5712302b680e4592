"""EngineCore: an :class:`~ipkernel.interfaces.IEngine` over one interpreter, in process.

It decodes the frames a command carries, runs it against the
:class:`~ipkernel.engine.interpreter.Interpreter` and the engine's properties, and encodes
the reply as an outcome. Queued commands run through an *executor* (in ``ipengine``, the
process's main thread; in tests, synchronously); direct commands run at once in the
caller's thread. No network code: ``ipkernel.engine.service`` puts it on the wire, and
tests drive it directly or hand it to a controller service as a fake engine.

Large results: with a *payload policy* (``payloads``, see
:class:`ipkernel.wire.transfer.EnginePayloads`) a result of
:data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes or more is answered as a stream or
through shared memory instead of inline frames; without one (tests) every result is
frames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from zope.interface import implementer

from ipkernel.engine.interpreter import Interpreter
from ipkernel.engine.properties import Properties
from ipkernel.engine.tasks import TaskRunner
from ipkernel.errors import TransferError
from ipkernel.frames import Serialized
from ipkernel.interfaces.engine import DIRECT_COMMANDS, QUEUED_COMMANDS, IEngine
from ipkernel.serialization import deserialize, dump, serialize, serialize_failure

Executor = Callable[..., Deferred]

# Values that pushes replaced and that are freed after the answer (see cmd_push).
_CONTAINERS = (list, tuple, dict, set)


class PayloadPolicy(Protocol):
    """How an engine sends large results (see :class:`ipkernel.wire.transfer.EnginePayloads`).

    A policy that takes direct links from clients also has ``introduce(certificate)``
    (see :class:`ipkernel.wire.direct_listener.LinkedEnginePayloads`), which the
    ``introduce`` command calls; without it the command fails.
    """

    def pack(self, serialized: Serialized, options: dict | None, stable: bool = True) -> Any:
        """Frames or a payload object for ``serialized``, given the request's ``options``;
        ``stable=False`` says its buffers may change before the payload is sent (a later
        task of the same batch runs first), so a payload that reads them late must copy."""

    def release(self, tokens: list[str]) -> int:
        """Close the shared-memory segments named by ``tokens``; return how many."""


def run_inline(fn: Callable, *args: Any) -> Deferred:
    """The executor for tests: run ``fn(*args)`` now, in this thread."""
    return maybeDeferred(fn, *args)


def _keys(value: object) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(k, str) for k in value):
        return list(value)
    raise TypeError(f"keys must be a string or a list of strings, not {value!r}")


@implementer(IEngine)
class EngineCore:
    """One engine's commands, as outcomes.

    ``on_kill`` and ``on_interrupt`` are called for the ``kill`` and ``interrupt``
    commands; the process that hosts the engine decides what they do.
    """

    def __init__(
        self,
        interpreter: Interpreter,
        properties: Properties,
        executor: Executor = run_inline,
        on_kill: Callable[[], Any] | None = None,
        on_interrupt: Callable[[], Any] | None = None,
        payloads: PayloadPolicy | None = None,
    ) -> None:
        self.interpreter = interpreter
        #: How large results leave (None: always as inline frames).
        self.payloads = payloads
        self.properties = properties
        self.info: dict = {}
        self._executor = executor
        self._on_kill = on_kill
        self._on_interrupt = on_interrupt
        self._disconnect_listeners: list[Callable[[Any], None]] = []
        # Values that pushes replaced, freed after their answers (_free_replaced_after).
        self._replaced: list[Any] = []
        #: Runs the task controller's batches (run_task) and their aborts.
        self.tasks = TaskRunner(self)

    @property
    def id(self) -> int:
        return self.interpreter.engine_id

    @id.setter
    def id(self, value: int) -> None:
        self.interpreter.engine_id = value

    # IEngine

    def call(self, command: str, args: list, options: dict | None = None) -> Deferred:
        handler = getattr(self, f"cmd_{command}", None)
        if handler is None or (command not in QUEUED_COMMANDS and command not in DIRECT_COMMANDS):
            return succeed(("error", ("ValueError", f"unknown engine command {command!r}")))
        if command == "run_task":
            # Each task of the batch gets its own wire-safe outcome (see cmd_run_task).
            return self._executor(self.tasks.run_command, args, options)
        if command in QUEUED_COMMANDS:
            d = self._executor(self._outcome, command, handler, args, options)
            if command == "push":
                d = self._free_replaced_after(d)
        else:
            d = succeed(self._outcome(command, handler, args, options))
        return d

    def _free_replaced_after(self, d: Deferred) -> Deferred:
        """``d``'s result, passed on; the containers that pushes replaced are freed once
        the callbacks that send the answer have run (freeing a long list, such as the
        previous part of a scatter, takes milliseconds: the client need not wait)."""
        answered: Deferred = Deferred()

        def pass_on(result: Any) -> None:
            replaced, self._replaced = self._replaced, []
            answered.callback(result)
            replaced.clear()

        d.addBoth(pass_on)
        return answered

    def notify_on_disconnect(self, callback: Callable[[Any], None]) -> None:
        self._disconnect_listeners.append(callback)

    def disconnect(self) -> None:
        for listener in list(self._disconnect_listeners):
            listener(self)

    def _outcome(
        self, command: str, handler: Callable, args: list, options: dict | None = None
    ) -> tuple:
        try:
            value = handler(*args)
            if self.payloads is None:
                return ("ok", serialize(value))
            # Packing runs here (the main thread for queued commands), so writing a
            # shared-memory segment never holds up the reactor.
            return ("ok", self.payloads.pack(dump(value), options))
        except BaseException as exc:  # user code may raise anything, KeyboardInterrupt too
            if isinstance(exc, SystemExit):
                exc = RuntimeError(f"user code called sys.exit({exc.code!r})")
            return ("raised", serialize_failure(exc, engine_id=self.id, method=command))

    # Queued commands: the engine's namespace.

    def cmd_execute(self, code: str) -> dict:
        if not isinstance(code, str):
            raise TypeError(f"execute() needs a string of code, not {type(code).__name__}")
        return self.interpreter.execute(code)

    def cmd_push(self, frames: list, readonly: object = False) -> None:
        """Bind the pushed names; with ``readonly`` (a ``share=True`` push) their buffers
        stay read-only: numpy arrays on the shared pages, never copied by a write."""
        if not isinstance(readonly, bool):
            raise TypeError(f"push's read-only flag must be a bool, not {readonly!r}")
        replaced = self.interpreter.push(_namespace(deserialize(frames, readonly=readonly)))
        # A container is freed item by item, milliseconds for a long list (a scatter's
        # previous part): after the answer. Other values (arrays) are freed now, so
        # that the engine holds one copy of a large array once the push has returned.
        self._replaced.extend(value for value in replaced if isinstance(value, _CONTAINERS))

    def cmd_pull(self, keys: object) -> Any:
        return self.interpreter.pull(_keys(keys))

    def cmd_push_function(self, frames: list) -> None:
        self.interpreter.push_function(_namespace(deserialize(frames)))

    def cmd_pull_function(self, keys: object) -> Any:
        return self.interpreter.pull_function(_keys(keys))

    def cmd_get_result(self, i: int | None = None) -> dict:
        return self.interpreter.get_result(i)

    def cmd_reset(self) -> None:
        self.interpreter.reset()

    def cmd_keys(self) -> list[str]:
        return self.interpreter.keys()

    def cmd_apply(self, frames: list) -> list:
        func, seq = deserialize(frames)
        return self.interpreter.apply(func, seq)

    def cmd_run_task(self, message: list) -> tuple:
        """Run a batch of tasks: see :meth:`ipkernel.engine.tasks.TaskRunner.run`."""
        return self.tasks.run(message)

    # Direct commands: answered at once, even while user code runs.

    def cmd_get_properties(self, keys: object = None) -> dict:
        return self.properties.get(None if keys is None else _keys(keys))

    def cmd_set_properties(self, frames: list) -> None:
        self.properties.update(_namespace(deserialize(frames)))

    def cmd_has_properties(self, keys: object) -> Any:
        return self.properties.has(_keys(keys))

    def cmd_del_properties(self, keys: object) -> None:
        self.properties.delete(_keys(keys))

    def cmd_clear_properties(self) -> None:
        self.properties.clear()

    def cmd_ping(self) -> str:
        return "pong"

    def cmd_release_shm(self, tokens: object) -> int:
        """A client has opened the shared-memory results named by ``tokens``: close them."""
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
            raise TypeError("release_shm needs a list of segment tokens")
        return 0 if self.payloads is None else self.payloads.release(list(tokens))

    def cmd_introduce(self, certificate: object) -> list:
        """A client is introduced (its certificate, PEM): take direct links from it;
        return ``[host, port, fingerprint]`` of this engine's data listener."""
        introduce = getattr(self.payloads, "introduce", None)
        if introduce is None:
            raise TransferError("this engine takes no direct links")
        return introduce(certificate)  # type: ignore[no-any-return]

    def cmd_kill(self) -> None:
        if self._on_kill is not None:
            self._on_kill()

    def cmd_interrupt(self, taskid: int | None = None) -> None:
        """Interrupt the running command; with ``taskid``, abort only that task.

        An aborted task that has not started yet is skipped when its batch reaches it;
        if it is running, ``KeyboardInterrupt`` is raised in it, never in another task.
        """
        if taskid is not None and not self.tasks.abort(taskid, self._on_interrupt is not None):
            return
        if self._on_interrupt is not None:
            self._on_interrupt()


def _namespace(value: object) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError("expected a dict with string keys")
    return value
