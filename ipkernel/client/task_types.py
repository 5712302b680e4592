"""What a Task client user builds and gets back: tasks, their wire form, results.

A task is a :class:`StringTask` (code; ``Task`` is the same class) or a :class:`MapTask`
(a function call). Every option is a constructor keyword and an attribute, read when the
task is submitted: :func:`task_to_wire` checks the options and serializes the task's body
and its ``depend`` function, separately, into what the controller takes (it sees only
``retries`` and the shape of the recovery chain). A :class:`TaskResult` is built from the
controller's record of a finished task.

The clients that submit tasks are in :mod:`ipkernel.client.task_async` and
:mod:`ipkernel.client.task_blocking`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from typing import Any

from ipkernel.client.function_pickles import FunctionPickles, dump_plain
from ipkernel.errors import IPKernelError, SerializationError, error_from_wire, format_error_line
from ipkernel.frames import Serialized
from ipkernel.serialization import (
    deserialize,
    deserialize_failure,
    dump,
    serialize,
)
from ipkernel.wire.transfer import is_inline

__all__ = [
    "BaseTask",
    "MapTask",
    "ResultNS",
    "StringTask",
    "Task",
    "TaskResult",
    "task_to_wire",
]

_FUNCTIONS = FunctionPickles()


# -- tasks ----------------------------------------------------------------------------------


class BaseTask:
    """What every kind of task has: data in and out, clean-up, fault tolerance, placement.

    :param pull: a name or a list of names whose values, after the task ran, make its
        result (:attr:`TaskResult.results`).
    :param push: a dict of names and values bound in the engine's namespace first.
    :param clear_before: reset the engine's namespace before the task.
    :param clear_after: reset it after the task (whether it succeeded or not).
    :param retries: how many times a failed task is run again (on any engine) before it
        counts as failed. An engine that dies while running it uses up one retry too.
    :param recovery_task: another task, run if this one fails for good; its result then
        stands under this task's id. It may have its own; a chain that loops is refused
        by ``run``.
    :param depend: a function of one argument, an engine's properties dict; the task runs
        only on engines where it returns true (an exception counts as false). It is
        evaluated on the engines.
    """

    def __init__(
        self,
        *,
        pull: str | Sequence[str] | None = None,
        push: dict[str, Any] | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], Any] | None = None,
    ) -> None:
        self.pull = pull
        self.push = push
        self.clear_before = clear_before
        self.clear_after = clear_after
        self.retries = retries
        self.recovery_task = recovery_task
        self.depend = depend

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    def _options_repr(self) -> str:
        parts = []
        for name, default in (
            ("pull", None),
            ("push", None),
            ("clear_before", False),
            ("clear_after", False),
            ("retries", 0),
            ("recovery_task", None),
            ("depend", None),
        ):
            value = getattr(self, name)
            if value != default:
                parts.append(f", {name}={value!r}")
        return "".join(parts)


class StringTask(BaseTask):
    """A task that runs code in an engine's namespace, as ``execute`` does.

    ``StringTask("a = f(x)", push={'x': 3}, pull="a")``; the other options are those of
    :class:`BaseTask`. ``client.Task`` is this class.
    """

    def __init__(
        self,
        expression: str,
        pull: str | Sequence[str] | None = None,
        push: dict[str, Any] | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], Any] | None = None,
    ) -> None:
        super().__init__(
            pull=pull,
            push=push,
            clear_before=clear_before,
            clear_after=clear_after,
            retries=retries,
            recovery_task=recovery_task,
            depend=depend,
        )
        self.expression = expression

    def _body(self) -> dict[str, Any]:
        if not isinstance(self.expression, str):
            raise TypeError(
                f"StringTask needs a string of code, not {type(self.expression).__name__}"
            )
        return {"kind": "string", "code": self.expression}

    def __repr__(self) -> str:
        return f"StringTask({self.expression!r}{self._options_repr()})"


#: IPython 0.9's name for a task made of code.
Task = StringTask


class MapTask(BaseTask):
    """A task that calls ``function(*args, **kwargs)`` on an engine.

    The return value is :attr:`TaskResult.result`; ``pull`` and the other options are
    those of :class:`BaseTask`. The function travels by value (closures and lambdas too).
    """

    def __init__(
        self,
        function: Callable[..., Any],
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        pull: str | Sequence[str] | None = None,
        push: dict[str, Any] | None = None,
        clear_before: bool = False,
        clear_after: bool = False,
        retries: int = 0,
        recovery_task: BaseTask | None = None,
        depend: Callable[[dict], Any] | None = None,
    ) -> None:
        super().__init__(
            pull=pull,
            push=push,
            clear_before=clear_before,
            clear_after=clear_after,
            retries=retries,
            recovery_task=recovery_task,
            depend=depend,
        )
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def _body(self) -> dict[str, Any]:
        if not callable(self.function):
            raise TypeError(f"MapTask needs a callable, not {type(self.function).__name__}")
        args = () if self.args is None else self.args
        if not isinstance(args, (list, tuple)):
            raise TypeError(f"MapTask args must be a list or tuple, not {type(args).__name__}")
        kwargs = {} if self.kwargs is None else self.kwargs
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise TypeError("MapTask kwargs must be a dict with string keys")
        # A function sent in many tasks is pickled once (see ipkernel.client.function_pickles).
        function = _FUNCTIONS.wrap(self.function)
        return {"kind": "map", "function": function, "args": tuple(args), "kwargs": kwargs}

    def __repr__(self) -> str:
        name = getattr(self.function, "__name__", repr(self.function))
        return f"MapTask({name}, args={self.args!r}, kwargs={self.kwargs!r}{self._options_repr()})"


def _pull_names(pull: object) -> list[str]:
    if pull is None:
        return []
    if isinstance(pull, str):
        return [pull]
    if isinstance(pull, (list, tuple)) and all(isinstance(name, str) for name in pull):
        return list(pull)
    raise TypeError(f"pull must be a name or a list of names, not {pull!r}")


def _serialize_body(body: dict[str, Any]) -> list[bytes] | Serialized:
    """The body as frames, or as a :class:`Serialized` payload from
    :data:`~ipkernel.wire.transfer.INLINE_LIMIT` bytes on (it then travels apart from
    the message, streamed or through shared memory, and the controller keeps it)."""
    try:
        ser = dump_plain(body) or dump(body)
        return ser.frames() if is_inline(ser) else ser
    except SerializationError:
        # Find the part that cannot be pickled, so the error names it.
        for key, value in (body.get("push") or {}).items():
            serialize(value, name=key)
        for key in ("function", "args", "kwargs"):
            if key in body:
                serialize(body[key], name=f"the task's {key}")
        raise


def task_to_wire(task: BaseTask) -> list[list]:
    """Check ``task`` and its recovery chain; return the wire form the controller takes.

    The form is ``[[retries, body, depend frames or None], ...]``: the task, then each of
    its recovery tasks in order; ``body`` is frames, or a :class:`Serialized` payload for
    a large one.

    :raises ValueError: for negative ``retries`` or a recovery chain that loops.
    :raises TypeError: for an option of the wrong type (the message names it).
    :raises SerializationError: naming the value that cannot be pickled.
    """
    wires: list[list] = []
    seen: set[int] = set()
    node: object = task
    while node is not None:
        if not isinstance(node, BaseTask):
            raise TypeError(
                f"expected a StringTask or MapTask, not {type(node).__name__}"
                + (" (as recovery_task)" if wires else "")
            )
        if id(node) in seen:
            raise ValueError("the chain of recovery tasks loops: a task cannot recover itself")
        seen.add(id(node))
        retries = node.retries
        if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries < 2**31:
            raise ValueError(f"retries must be an int from 0 to 2**31 - 1, not {retries!r}")
        push = node.push
        if push is not None and (
            not isinstance(push, dict) or not all(isinstance(k, str) for k in push)
        ):
            raise TypeError("push must be a dict of names (strings) to values")
        if node.depend is not None and not callable(node.depend):
            raise TypeError(f"depend must be a function, not {type(node.depend).__name__}")
        body = node._body()
        body.update(
            push=push or None,
            pull=_pull_names(node.pull),
            clear_before=bool(node.clear_before),
            clear_after=bool(node.clear_after),
        )
        depend = None if node.depend is None else serialize(node.depend, name="depend")
        wires.append([retries, _serialize_body(body), depend])
        node = node.recovery_task
    return wires


# -- results --------------------------------------------------------------------------------


class ResultNS:
    """The pulled names of a task as attributes: ``tr.ns.a``."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.__dict__.update(results)

    def __repr__(self) -> str:
        return f"ResultNS({self.__dict__!r})"


def _when(seconds: float | None) -> datetime.datetime | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds)


class TaskResult:
    """The outcome of a finished task, with what is known of its run.

    Attributes: :attr:`taskid`, :attr:`engineid` (the engine of the attempt that finished,
    or ``None``), :attr:`submitted` and :attr:`completed` (datetimes), :attr:`duration`
    (seconds the finishing attempt took on its engine, ``None`` if none ran to the end),
    :attr:`attempts` (runs of the task in charge), :attr:`recovered` (0, or how far down
    the recovery chain the task in charge is), :attr:`failure` (``None``, or the exception,
    with the remote traceback text in its ``remote_traceback``).

    The pulled values read three ways: ``tr['a']``, ``tr.ns.a`` and ``tr.results['a']``;
    ``'a' in tr`` says whether ``a`` was pulled.

    A failed task's result is returned, not raised: reading :attr:`results`, :attr:`ns`,
    :attr:`result` or ``tr[name]`` (or asking ``name in tr``) raises its failure, and so
    does :meth:`raise_exception`.
    """

    # Item access does not make a sequence of it: iter() would try tr[0], tr[1], ...
    __iter__ = None

    def __init__(
        self,
        taskid: int,
        *,
        results: dict[str, Any] | None = None,
        result: Any = None,
        failure: BaseException | None = None,
        engineid: int | None = None,
        submitted: datetime.datetime | None = None,
        completed: datetime.datetime | None = None,
        duration: float | None = None,
        attempts: int = 0,
        recovered: int = 0,
    ) -> None:
        self.taskid = taskid
        self._results = results if results is not None else {}
        self._result = result
        self.failure = failure
        self.engineid = engineid
        self.submitted = submitted
        self.completed = completed
        self.duration = duration
        self.attempts = attempts
        self.recovered = recovered

    @classmethod
    def from_wire(cls, record: dict[str, Any]) -> TaskResult:
        """Build a result from the controller's record of a finished task."""
        status, value = record.get("status"), record.get("value")
        results: dict[str, Any] = {}
        result = None
        failure: BaseException | None = None
        try:
            if status == "ok":
                results, result = deserialize(value)
            elif status == "raised":
                failure = deserialize_failure(value)
            elif status == "error":
                failure = error_from_wire(str(value[0]), str(value[1]))
            else:
                failure = IPKernelError(f"the controller sent a result with status {status!r}")
        except Exception as exc:  # a result that cannot be rebuilt here is its failure
            failure = exc
        if failure is not None and record.get("engine_id") is not None:
            try:
                if getattr(failure, "engine_id", None) is None:
                    failure.engine_id = record["engine_id"]  # type: ignore[attr-defined]
            except AttributeError:
                pass
        return cls(
            record["taskid"],
            results=results,
            result=result,
            failure=failure,
            engineid=record.get("engine_id"),
            submitted=_when(record.get("submitted")),
            completed=_when(record.get("completed")),
            duration=record.get("duration"),
            attempts=record.get("attempts") or 0,
            recovered=record.get("recovered") or 0,
        )

    @property
    def results(self) -> dict[str, Any]:
        """The pulled names and their values; raises the failure of a failed task."""
        self.raise_exception()
        return self._results

    @property
    def ns(self) -> ResultNS:
        """:attr:`results` by attribute (``tr.ns.a``); raises the failure of a failed task."""
        return ResultNS(self.results)

    @property
    def result(self) -> Any:
        """A :class:`MapTask`'s return value (``None`` for code); raises the failure."""
        self.raise_exception()
        return self._result

    def __getitem__(self, name: str) -> Any:
        """``tr['a']``: the value of the pulled name ``a``.

        :raises KeyError: naming ``name`` and the names the task pulled.
        :raises: the task's failure, if it failed.
        """
        results = self.results
        try:
            return results[name]
        except KeyError:
            pulled = ", ".join(map(repr, results)) or "none"
            raise KeyError(
                f"{name!r} is not a name task {self.taskid} pulled (its names: {pulled})"
            ) from None

    def __contains__(self, name: object) -> bool:
        """``'a' in tr``: whether the task pulled ``a``; raises the failure of a failed
        task."""
        return name in self.results

    def raise_exception(self) -> None:
        """Raise the task's failure, if it failed; do nothing otherwise."""
        if self.failure is not None:
            raise self.failure

    def __repr__(self) -> str:
        if self.failure is not None:
            return f"TaskResult[ID:{self.taskid}]:{format_error_line(self.failure)}"
        if self._result is not None and not self._results:
            return f"TaskResult[ID:{self.taskid}]:{self._result!r}"
        return f"TaskResult[ID:{self.taskid}]:{self._results!r}"
