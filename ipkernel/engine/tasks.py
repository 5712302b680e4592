"""TaskRunner: how an engine runs the task controller's batches (``run_task``).

A batch is a packed message (:data:`ipkernel.interfaces.records.TASK_RUN`) of tasks, each with
its body frames, its ``depend`` frames (or none) and the digest of those. The runner runs
them in order, in the engine's main thread, against the engine's interpreter, and answers
with one packed entry per task (:data:`ipkernel.interfaces.records.TASK_REPLY`): ``ok``,
``raised``, ``declined`` (``depend`` false or raising, with the properties version judged)
or ``error`` (aborted before it started). One task's failure affects only itself.

Large payloads: a task body of the batch may come apart from the packed message (its
frames ``None``, the payload in the command's second argument, ``{record index:
payload}``), and a return value or pulled names of
:data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes or more leave the same way, through
the engine's payload policy (shared memory when the request's options say the controller
can read it, a stream otherwise): the answer is then ``("tasks", entries, {entry index:
payload})``.

Aborts
------
The controller aborts a task with the direct command ``interrupt(taskid)``, answered in
the engine's reactor thread: the runner remembers the id, so the task is skipped if its
batch has not reached it, and if the task is running the engine sends SIGINT to its main
thread. While a batch runs, the runner's own SIGINT handler is in place: it runs in the
main thread, between two bytecodes, and decides there whether the task running *now* is
the aborted one, so a signal that arrives after its task has finished never interrupts
the next. Before the engine's usual handler is put back (for which SIGINT on an idle
engine means "stop"), the runner waits briefly for signals already on their way.
"""

from __future__ import annotations

import _signal
import pickle
import threading
import time
from typing import Any

from ipkernel.frames import KIND_OBJECT, Serialized
from ipkernel.interfaces.records import STATUSES, TASK_REPLY, TASK_RUN, MalformedRecords
from ipkernel.serialization import deserialize, dump, serialize_failure

__all__ = ["TaskRunner"]

_OK, _RAISED, _DECLINED, _ERROR = (STATUSES.index(k) for k in ("ok", "raised", "declined", "error"))
_NO_DIGEST = bytes(32)
#: Return values that the standard pickler gives back as cloudpickle would, faster.
_CONSTANT_TYPES = frozenset((type(None), bool, int, float, complex, str, bytes))


def _dump_result(result: tuple[dict, Any]) -> Serialized:
    """A task's ``(pulled names, return value)``, serialized."""
    if not result[0] and type(result[1]) in _CONSTANT_TYPES:
        return Serialized(KIND_OBJECT, pickle.dumps(result, protocol=5), [])
    return dump(result)


class TaskRunner:
    """Runs batches of tasks for one engine (see the module docstring).

    :param core: the :class:`~ipkernel.engine.core.EngineCore` whose ``interpreter``,
        ``properties`` and ``id`` the tasks use.
    """

    #: How many aborted task ids are remembered (an abort that arrives after its task
    #: has finished leaves its id behind).
    ABORTED_MEMORY = 4096
    #: How many depend verdicts are cached (by digest) before the cache starts afresh.
    VERDICT_MEMORY = 1024

    def __init__(self, core: Any) -> None:
        self.core = core
        # The reactor thread (aborts) and the main thread (batches) share this state.
        self._lock = threading.Lock()
        self._running: int | None = None
        self._aborted: dict[int, None] = {}  # an ordered set: the oldest can go
        # SIGINTs sent to abort the running task and not yet handled.
        self._signals = 0
        self._verdicts: dict[bytes, tuple[int, bool]] = {}  # digest -> (version, verdict)
        # The batch running (main thread): its options and its last task's id.
        self._options: dict | None = None
        self._last: int | None = None

    # The reactor thread's side.

    def abort(self, taskid: int, can_signal: bool) -> bool:
        """Remember that ``taskid`` is aborted; return True if it is running now and the
        caller must interrupt the main thread (which ``can_signal`` says it can)."""
        if not isinstance(taskid, int):
            raise TypeError(f"interrupt() needs a task id (int), not {taskid!r}")
        with self._lock:
            self._aborted[taskid] = None
            if len(self._aborted) > self.ABORTED_MEMORY:
                del self._aborted[next(iter(self._aborted))]
            running = can_signal and self._running == taskid
            if running:
                self._signals += 1
        return running

    # The main thread's side.

    def run_command(self, args: list, options: dict | None = None) -> tuple:
        """The ``run_task`` command: ``args`` is ``[packed batch]`` or ``[packed batch,
        {record index: body payload}]``; never raises for a task's failure, and answers a
        malformed batch with an ``error`` outcome. ``options`` may carry ``reply_to``
        (see :class:`~ipkernel.wire.transfer.EnginePayloads`)."""
        if len(args) not in (1, 2) or (len(args) == 2 and not isinstance(args[1], dict)):
            return ("error", ("TypeError", "run_task needs a packed batch (and a dict of bodies)"))
        try:
            return self.run(args[0], args[1] if len(args) == 2 else None, options)
        except MalformedRecords as exc:
            return ("error", ("TypeError", f"run_task: malformed batch: {exc}"))

    def run(
        self, message: object, bodies: dict | None = None, options: dict | None = None
    ) -> tuple:
        """Run a packed batch in order; return ``("tasks", packed entries)``, or
        ``("tasks", packed entries, {entry index: payload})`` when large values leave apart.

        Each task's body is the frames of a dict: ``kind`` ``"string"`` with ``code``, or
        ``"map"`` with ``function``, ``args``, ``kwargs``; and ``push``, ``pull`` (a list
        of names), ``clear_before``, ``clear_after``. A body that is ``None`` in the batch
        is ``bodies[record index]``. Its ``ok`` value is ``(pulled names dict, return
        value)`` (``None`` for code), serialized.

        :raises MalformedRecords: if ``message`` is not a packed batch.
        """
        specs = []
        for index, (fields, groups) in enumerate(TASK_RUN.unpack(message)):
            # A body that came neither inline nor apart fails its own task (deserialize
            # refuses None), unless the task was aborted, which it then most likely was.
            body = groups[0] if groups[0] is not None else (bodies or {}).get(index)
            specs.append((fields[0], fields[1], body, groups[1]))
        self._options = options
        self._last = specs[-1][0] if specs else None
        entries: list[tuple] = []
        in_main = threading.current_thread() is threading.main_thread()
        # _signal, not signal, for every batch: the latter's wrappers turn each handler
        # into an enum member through a lookup that fails, about 30 us a call.
        previous = _signal.signal(_signal.SIGINT, self._on_sigint) if in_main else None
        if previous is None:  # a handler not set from Python: put Python's default back
            previous = _signal.default_int_handler
        try:
            while len(entries) < len(specs):
                try:
                    for spec in specs[len(entries) :]:
                        entries.append(self._run_guarded(*spec))
                except KeyboardInterrupt:
                    # Raised by an abort between the bookkeeping steps of a task rather
                    # than inside it: that task counts as interrupted, the rest run.
                    if len(entries) < len(specs):
                        entries.append(self._raised(specs[len(entries)][0], KeyboardInterrupt()))
        finally:
            with self._lock:
                self._running = None
                for spec in specs:
                    self._aborted.pop(spec[0], None)
            if in_main:
                self._settle_signals()
                _signal.signal(_signal.SIGINT, previous)
        # A large value is a payload where frames would be: it leaves apart, by index.
        apart = {}
        for index, (fields, (value,)) in enumerate(entries):
            if value is not None and not isinstance(value, list):
                apart[index] = value
                entries[index] = (fields, (None,))
        packed = TASK_REPLY.pack(entries)
        return ("tasks", packed, apart) if apart else ("tasks", packed)

    def _settle_signals(self) -> None:
        # An abort may have decided to signal a task that has finished since: its SIGINT
        # must reach _on_sigint (which drops it), not the handler put back after the
        # batch. No task runs now, so no new abort signal is decided; wait briefly for
        # those already sent.
        deadline = time.monotonic() + 0.05
        while self._signals and time.monotonic() < deadline:
            time.sleep(0.001)  # a signal interrupts the sleep and runs the handler
        self._signals = 0

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # A SIGINT that no abort sent (Ctrl-C in the engine's terminal, interrupt()
        # without a task id) interrupts the running task, as it would any command.
        running = self._running
        if self._signals:
            self._signals = 0
            if running is not None and running in self._aborted:
                raise KeyboardInterrupt
            return
        if running is not None:
            raise KeyboardInterrupt

    def _run_guarded(self, taskid: int, digest: bytes, body: Any, depend: Any) -> tuple:
        with self._lock:
            aborted = taskid in self._aborted
            if not aborted:
                self._running = taskid
        if aborted:
            message = f"task {taskid} was aborted with abort() before it started"
            return (taskid, _ERROR, 0.0, 0), ([b"TaskAborted", message.encode()],)
        try:
            return self._run_one(taskid, digest, body, depend)
        finally:
            with self._lock:
                self._running = None

    def _run_one(self, taskid: int, digest: bytes, body: Any, depend: Any) -> tuple:
        start = time.perf_counter()
        if depend is not None:
            version = self.core.properties.version
            if not self._depend_allows(depend, digest, version):
                return (taskid, _DECLINED, time.perf_counter() - start, version), (None,)
        task: Any = None
        try:
            task = deserialize(body)
            code, value = _OK, self._pack(taskid, _dump_result(self._run_body(task)))
        except BaseException as exc:  # user code may raise anything, KeyboardInterrupt too
            if isinstance(exc, SystemExit):
                exc = RuntimeError(f"user code called sys.exit({exc.code!r})")
            code, value = _RAISED, serialize_failure(exc, engine_id=self.core.id, method="task")
        finally:
            if isinstance(task, dict) and task.get("clear_after"):
                self.core.interpreter.reset()
        return (taskid, code, time.perf_counter() - start, 0), (value,)

    def _run_body(self, task: Any) -> tuple[dict, Any]:
        if not isinstance(task, dict) or task.get("kind") not in ("string", "map"):
            raise TypeError("malformed task: expected a task dict made by the Task client")
        interp = self.core.interpreter
        if task.get("clear_before"):
            interp.reset()
        if task.get("push"):
            interp.push(task["push"])
        value = None
        if task["kind"] == "string":
            interp.execute(task["code"])
        else:
            func, args, kwargs = task["function"], task["args"], task["kwargs"]
            # apply() puts the user's __main__ in place while the function runs.
            value = interp.apply(lambda _: func(*args, **kwargs), (None,))[0]
        names = task.get("pull") or []
        results = dict(zip(names, interp.pull(list(names)), strict=True)) if names else {}
        return results, value

    def _pack(self, taskid: int, serialized: Serialized) -> Any:
        """Frames for a small value; a payload for a large one (see :meth:`run`)."""
        payloads = self.core.payloads
        if payloads is None:
            return serialized.frames()
        # A stream reads the value's buffers after the batch: unless this is the batch's
        # last task, a later one could change them meanwhile.
        return payloads.pack(serialized, self._options, stable=taskid == self._last)

    def _depend_allows(self, depend: Any, digest: bytes, version: int) -> bool:
        """Evaluate ``depend`` on a copy of the properties; an exception means False."""
        cached = self._verdicts.get(digest)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            verdict = bool(deserialize(depend)(self.core.properties.get()))
        except Exception:
            verdict = False
        if digest != _NO_DIGEST:
            if len(self._verdicts) >= self.VERDICT_MEMORY:
                self._verdicts.clear()
            self._verdicts[digest] = (version, verdict)
        return verdict

    def _raised(self, taskid: int, exc: BaseException) -> tuple:
        frames = serialize_failure(exc, engine_id=self.core.id, method="task")
        return (taskid, _RAISED, 0.0, 0), (frames,)
