"""Progress bars for client waits that last: barriers, maps, blocking fetches.

A wait still going after :data:`DELAY` seconds shows a bar through ``tqdm.auto``: a
widget in Jupyter, a text bar on a terminal. The bar is started from the waiting
thread's own timeout, so a wait that ends sooner costs one timed wait on a future and
nothing else (no thread, no timer, nothing per item). Once shown, the waiting thread
redraws it every :data:`REFRESH` seconds from counts that the reactor thread keeps.

No bar is shown when the call says ``progress=False``, when ``IPKERNEL_PROGRESS`` is
``0`` (or ``false``, ``no``, ``off``), when stderr is not a terminal outside a Jupyter
kernel, or when tqdm (in Jupyter: tqdm and ipywidgets) is not installed.

Nothing here imports Twisted: the reactor and the calls to wrap are passed in.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "DELAY",
    "REFRESH",
    "TaskCounter",
    "call_with_progress",
    "wait_all",
    "wait_for",
    "waiting_call",
    "wanted",
]

#: Seconds a wait lasts before its bar shows.
DELAY = 1.0
#: Seconds between redraws of a bar that shows.
REFRESH = 0.25
#: Most ``barrier`` calls a bar makes to count its tasks (each counts a group).
COUNT_GROUPS = 32

_OFF = frozenset({"0", "false", "no", "off"})


def wanted(show: bool = True) -> bool:
    """Whether a wait may show a bar: ``show`` is true, ``IPKERNEL_PROGRESS`` does not
    turn bars off, and stderr is a terminal or this is a Jupyter kernel."""
    if not show:
        return False
    if os.environ.get("IPKERNEL_PROGRESS", "").strip().lower() in _OFF:
        return False
    return _in_jupyter() or _is_terminal(sys.stderr)


def _is_terminal(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False  # replaced, closed or detached: not a terminal


def _in_jupyter() -> bool:
    if "ipykernel.zmqshell" not in sys.modules:
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


def _new_bar(label: str, total: int | None, unit: str) -> Any:
    """A tqdm bar, or ``None`` where none can be drawn."""
    try:
        if _in_jupyter() and importlib.util.find_spec("ipywidgets") is None:
            return None  # tqdm would fall back to text, with a warning
        from tqdm.auto import tqdm

        return tqdm(desc=label, total=total, unit=unit, dynamic_ncols=True)
    except Exception:  # tqdm missing, or a widget that cannot be built here
        return None


def _draw(bar: Any, done: int, total: int | None) -> None:
    if bar.total != total:
        bar.reset(total=total)  # a widget learns its new length only this way
    if done > bar.n:
        bar.update(done - bar.n)
    else:
        bar.refresh()  # the elapsed time moves on


def _show_while(
    finished: Callable[[float | None], bool],
    counts: Callable[[], tuple[int, int | None]],
    label: str,
    unit: str,
    on_show: Callable[[], None] | None = None,
) -> None:
    """Block until ``finished(timeout)`` says so; show a bar if that takes a while.

    ``finished(timeout)`` waits at most ``timeout`` seconds (``None``: for good) and
    tells whether the wait is over; ``counts()`` gives ``(done, total)`` for the bar;
    ``on_show`` is called once the bar shows. ``KeyboardInterrupt`` propagates at once.
    """
    if finished(DELAY):
        return
    done, total = counts()
    bar = _new_bar(label, total, unit)
    if bar is None:
        finished(None)
        return
    if on_show is not None:
        on_show()
    try:
        while True:
            over = finished(REFRESH)
            _draw(bar, *counts())
            if over:
                return
    finally:
        bar.close()


def _succeeded(future: concurrent.futures.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _future_finished(future: concurrent.futures.Future[Any]) -> Callable[[float | None], bool]:
    def finished(timeout: float | None) -> bool:
        concurrent.futures.wait([future], timeout)
        return future.done()

    return finished


def wait_for(future: concurrent.futures.Future[Any], label: str, show: bool = True) -> None:
    """Block until ``future`` is done (its outcome is not looked at); a bar after
    :data:`DELAY` seconds if :func:`wanted`."""
    if future.done():
        return
    if not wanted(show):
        concurrent.futures.wait([future])
        return
    _show_while(_future_finished(future), lambda: (int(_succeeded(future)), 1), label, "call")


def wait_all(
    futures: Iterable[concurrent.futures.Future[Any]], label: str, show: bool = True
) -> None:
    """Block until every future is done; a bar counting them after :data:`DELAY`
    seconds if :func:`wanted`."""
    pending = {f for f in futures if not f.done()}
    if not pending:
        return
    if not wanted(show):
        concurrent.futures.wait(pending)
        return
    total = len(pending)

    def finished(timeout: float | None) -> bool:
        nonlocal pending
        _, pending = concurrent.futures.wait(pending, timeout)
        return not pending

    _show_while(finished, lambda: (total - len(pending), total), label, "call")


class TaskCounter:
    """How many of a wait's tasks have finished, learnt only once its bar shows.

    When the bar shows (:meth:`show`, any thread), the reactor thread asks the
    controller for at most :data:`COUNT_GROUPS` barriers over groups of the task ids;
    each answer adds its group to :attr:`done`. The ids are given at once, or later by
    calling the counter with them from the reactor thread (the ``watch`` hook of a
    ``map`` that makes its tasks while it runs).
    """

    def __init__(
        self,
        reactor: Any,
        barrier: Callable[[list[int]], Any],
        taskids: Sequence[int] | None = None,
    ) -> None:
        self._reactor = reactor
        self._barrier = barrier
        self._taskids: list[int] | None = None
        self._shown = False
        self.done = 0
        self.total: int | None = None
        if taskids is not None:
            self._set_ids(taskids)

    def _set_ids(self, taskids: Sequence[int]) -> None:
        self._taskids = list(taskids)
        self.total = len(self._taskids)

    def __call__(self, taskids: Sequence[int]) -> None:
        """The tasks waited for (reactor thread)."""
        self._set_ids(taskids)
        if self._shown:
            self._count()

    def show(self) -> None:
        """The bar shows: start counting (any thread)."""
        self._reactor.callFromThread(self._start)

    def _start(self) -> None:
        self._shown = True
        if self._taskids is not None:
            self._count()

    def _count(self) -> None:
        taskids = self._taskids or []
        size = max(1, math.ceil(len(taskids) / COUNT_GROUPS))
        for start in range(0, len(taskids), size):
            group = taskids[start : start + size]
            d = self._barrier(group)
            d.addCallback(self._add, len(group))
            d.addErrback(lambda _: None)  # the wait itself reports what went wrong

    def _add(self, _: object, count: int) -> None:
        self.done += count


def call_with_progress(
    bridge: Any,
    fn: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    label: str,
    show: bool = True,
    counter: Callable[[], TaskCounter] | None = None,
    watch: str | None = None,
) -> Any:
    """``bridge.call(fn, *args, **kwargs)``, with a bar if it lasts and :func:`wanted`.

    :param counter: makes a :class:`TaskCounter` for the bar (only if one may show);
        without it the bar counts the one call.
    :param watch: the keyword under which ``fn`` takes that counter, to tell it the
        task ids once it knows them.
    :raises: what ``fn`` fails with, as ``bridge.call`` raises it; ``KeyboardInterrupt``
        cancels the call, as in ``bridge.call``.
    """
    kwargs = dict(kwargs or {})
    if not wanted(show):
        return bridge.call(fn, *args, **kwargs)
    tasks = counter() if counter is not None else None
    if tasks is not None and watch is not None:
        kwargs[watch] = tasks
    future, cancel = bridge.start(fn, *args, **kwargs)

    def counts() -> tuple[int, int | None]:
        if tasks is None:
            return int(_succeeded(future)), 1
        return (tasks.total or 0) if _succeeded(future) else tasks.done, tasks.total

    try:
        _show_while(
            _future_finished(future),
            counts,
            label,
            "call" if tasks is None else "task",
            None if tasks is None else tasks.show,
        )
    except KeyboardInterrupt:
        cancel()
        raise
    try:
        return future.result()
    except Exception as exc:
        # As in bridge.call: the traceback starts at the user's call.
        raise exc.with_traceback(None) from exc.__cause__


def waiting_call(bridge: Any, label: str, show: bool = True) -> Callable[..., Any]:
    """A ``bridge.call`` look-alike for the blocking forwarders whose wait shows a bar."""

    def wait(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call_with_progress(bridge, fn, args, kwargs, label=label, show=show)

    return wait
