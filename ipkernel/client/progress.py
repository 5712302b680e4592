"""Progress bars for client waits that last: barriers, maps, blocking fetches.

A wait still going after :data:`DELAY` seconds shows a bar through ``tqdm.auto``: a
widget in Jupyter, a text bar on a terminal. The bar is started from the waiting
thread's own timeout, so a wait that ends sooner costs one timed wait on a future and
nothing else (no thread, no timer). Once shown, the waiting thread redraws it every
:data:`REFRESH` seconds from a count, never once per result, and nothing waits for it.

The count of a task wait costs the controller no extra work per task
(:class:`TaskCounter`): a wait over many tasks is itself asked for in at most
:data:`COUNT_GROUPS` groups, and each answer counts its group; a wait over a few is
asked for whole, and counted by barriers over its tasks only if its bar shows. The
count of a wait over futures (:func:`wait_all`) is how many of them, in order, are done:
the waiting thread waits on one future at a time.

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
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "COUNT_GROUPS",
    "DELAY",
    "REFRESH",
    "SPLIT_ABOVE",
    "TaskCounter",
    "call_with_progress",
    "task_groups",
    "wait_all",
    "wait_for",
    "waiting_call",
    "wanted",
]

#: Seconds a wait lasts before its bar shows.
DELAY = 1.0
#: Seconds between redraws of a bar that shows.
REFRESH = 0.25
#: Most groups a counted wait over many tasks is asked for in (each answer counts one).
COUNT_GROUPS = 32
#: A counted wait over more tasks than this is asked for in groups from its start (a
#: few dozen more calls); one over fewer is asked for whole, and counted once its bar
#: shows by barriers over its tasks (which cost the controller per task, so only few).
SPLIT_ABOVE = 1000

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
    """Block until every future is done; a bar after :data:`DELAY` seconds if
    :func:`wanted`, counting the futures done in their order (the first not done stops
    the count)."""
    futures = list(futures)
    if all(f.done() for f in futures):
        return
    if not wanted(show):
        concurrent.futures.wait(futures)
        return
    # Each future is waited on alone, when it is first in line: a redraw costs one
    # timed wait, whatever their number.
    done = 0

    def finished(timeout: float | None) -> bool:
        nonlocal done
        end = None if timeout is None else time.monotonic() + timeout
        while done < len(futures):
            if futures[done].done():
                done += 1
                continue
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            concurrent.futures.wait(futures[done : done + 1], left)
        return True

    _show_while(finished, lambda: (done, len(futures)), label, "call")


def _groups(taskids: list[int], size: int) -> list[list[int]]:
    return [taskids[i : i + size] for i in range(0, len(taskids), size)]


def task_groups(taskids: list[int], most: int | None = None) -> list[list[int]]:
    """The groups of ``taskids`` in which a wait asks for them when nothing counts them:
    one, or groups of at most ``most``."""
    if most is None or len(taskids) <= most:
        return [taskids]
    return _groups(taskids, most)


class TaskCounter:
    """How many of a wait's tasks have finished: :attr:`done` of :attr:`total`.

    The reactor thread keeps the count; the waiting thread reads it to draw the bar.
    The wait itself is asked for through :meth:`wait`, which chooses its groups so that
    counting costs the controller nothing per task.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._shown = False
        self._on_show: Callable[[], None] | None = None
        self.done = 0
        self.total: int | None = None

    def wait(
        self,
        taskids: list[int],
        call: Callable[[list[int]], Any],
        barrier: Callable[[list[int]], Any],
        most: int | None = None,
    ) -> list[Any]:
        """Start the wait for ``taskids`` (reactor thread): ``call(group)`` for each of
        its groups, of at most ``most`` tasks; returns their Deferreds, in order.

        Over more than :data:`SPLIT_ABOVE` tasks the groups are :data:`COUNT_GROUPS` at
        most, and each answer counts its group. Fewer tasks are asked for whole, and if
        the bar shows, ``barrier(group)`` over groups of them counts them.
        """
        self.total = len(taskids)
        if len(taskids) > SPLIT_ABOVE:
            size = math.ceil(len(taskids) / COUNT_GROUPS)
            groups = _groups(taskids, min(size, most or size))
            return [call(group).addCallback(self._finished, len(group)) for group in groups]
        self._when_shown(lambda: self._count(taskids, barrier))
        return [call(group) for group in task_groups(taskids, most)]

    def show(self) -> None:
        """The bar shows (any thread)."""
        self._reactor.callFromThread(self._start)

    def _start(self) -> None:
        self._shown = True
        if self._on_show is not None:
            self._on_show()

    def _when_shown(self, start: Callable[[], None]) -> None:
        if self._shown:
            start()
        else:
            self._on_show = start

    def _count(self, taskids: list[int], barrier: Callable[[list[int]], Any]) -> None:
        for group in _groups(taskids, math.ceil(len(taskids) / COUNT_GROUPS) or 1):
            d = barrier(group)
            d.addCallback(self._finished, len(group))
            d.addErrback(lambda _: None)  # the wait itself reports what went wrong

    def _finished(self, result: Any, count: int) -> Any:
        self.done += count
        return result


def call_with_progress(
    bridge: Any,
    fn: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    label: str,
    show: bool = True,
    counted: bool = False,
) -> Any:
    """``bridge.call(fn, *args, **kwargs)``, with a bar if it lasts and :func:`wanted`.

    :param counted: ``fn`` takes a :class:`TaskCounter` as ``count=`` (only if a bar
        may show), and the bar counts its tasks; otherwise the bar counts the one call.
    :raises: what ``fn`` fails with, as ``bridge.call`` raises it; ``KeyboardInterrupt``
        cancels the call, as in ``bridge.call``.
    """
    kwargs = dict(kwargs or {})
    if not wanted(show):
        return bridge.call(fn, *args, **kwargs)
    tasks = TaskCounter(bridge.reactor) if counted else None
    if tasks is not None:
        kwargs["count"] = tasks
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
