"""What client calls give back: result lists, per-target outcomes, pending results.

- :class:`ResultList`: the list of execute result dicts, shown as the ``<Results List>``
  view;
- :func:`outcomes_to_results`: the per-target outcomes of one MultiEngine call turned into
  the per-target results, or a :class:`~ipkernel.errors.CompositeError`;
- :class:`PendingResult`: the answer of a non-blocking call, fetched later.

Nothing here touches Twisted or the wire format of user data: decoding is passed in.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Generator, Sequence
from typing import Any

from ipkernel.client.awaiting import awaitable
from ipkernel.client.progress import wait_for
from ipkernel.errors import CompositeError, IPKernelError, error_from_wire, format_error_line

__all__ = ["PendingResult", "ResultList", "outcomes_to_results"]

Frames = list[bytes]


def _block(prefix: str, text: str) -> list[str]:
    """``text`` after ``prefix``, continuation lines indented to align under the first.

    Lines that are empty stay empty, so the view has no trailing blanks.
    """
    lines = text.splitlines() or [""]
    indent = " " * len(prefix)
    out = [f"{prefix}{lines[0]}" if lines[0] else prefix.rstrip()]
    out.extend(f"{indent}{line}" if line else "" for line in lines[1:])
    return out


def _input_text(entry: dict[str, Any]) -> str:
    source = entry.get("input") or {}
    code = source.get("translated") or source.get("raw") or ""
    lines = code.splitlines()
    # Blank lines around the code (from triple-quoted strings) only push it out of line.
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


class ResultList(list):
    """A list of execute result dicts whose repr is the ``<Results List>`` view.

    Each item is ``{'id', 'number', 'input': {'raw', 'translated'}, 'stdout', 'stderr'}``
    as returned by ``execute`` and ``get_result``. ``repr()`` and ``str()`` give::

        <Results List>
        [0] In [4]: print(c)
        [0] Out[4]: 15

        [1] In [4]: print(c)
        [1] Out[4]: -5

    The rules, after IPython 0.9:

    - one ``[id] In [n]: code`` line per item; the code is ``input['translated']``
      (``input['raw']`` if that is empty), blank lines around it dropped;
    - ``[id] Out[n]: ...`` only if ``stdout`` is not empty, and ``[id] Err[n]: ...`` only
      if ``stderr`` is not empty; one trailing newline of the output is not shown;
    - continuation lines of code and output are indented to align under the first line's
      text (the three prompts have the same width);
    - an item that showed output is followed by a blank line unless it is the last, so
      items without output stay on consecutive lines;
    - an item that is an exception (a failed engine's place, as in
      ``CompositeError.results``) shows as ``[id] Failed: ExcType: message``, with the id
      taken from the exception's ``engine_id`` attribute (``?`` if it has none);
    - the view has no trailing newline, and an empty list is just ``<Results List>``.
    """

    def __repr__(self) -> str:
        lines = ["<Results List>"]
        for index, entry in enumerate(self):
            lines.extend(self._entry_lines(entry, last=index == len(self) - 1))
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # IPython's pretty printer would otherwise lay the list out item by item.
        printer.text(repr(self))

    @staticmethod
    def _entry_lines(entry: Any, last: bool) -> list[str]:
        if isinstance(entry, BaseException):
            engine_id = getattr(entry, "engine_id", "?")
            return [f"[{engine_id}] Failed: {format_error_line(entry)}"]
        if not isinstance(entry, dict):
            return [f"[?] {entry!r}"]
        engine_id = entry.get("id", "?")
        number = entry.get("number", "?")
        lines = _block(f"[{engine_id}] In [{number}]: ", _input_text(entry))
        shown = False
        for label, key in (("Out", "stdout"), ("Err", "stderr")):
            text = entry.get(key) or ""
            if text:
                lines.extend(_block(f"[{engine_id}] {label}[{number}]: ", text))
                shown = True
        if shown and not last:
            lines.append("")
        return lines


def outcomes_to_results(
    outcomes: Sequence[tuple[str, Any]],
    targets: Sequence[int],
    method: str,
    decode: Callable[[Frames], object],
    decode_failure: Callable[[Frames], BaseException],
    *,
    container: Callable[[list[Any]], list[Any]] = list,
) -> list[Any]:
    """Turn one MultiEngine call's per-target outcomes into its per-target results.

    :param outcomes: one outcome per target, in target order: ``("ok", frames)``,
        ``("raised", frames)`` (a failure of user code) or ``("error", (type_name,
        message))`` (the controller's own error, such as ``EngineError``).
    :param targets: the engine ids the outcomes belong to, same order and length.
    :param method: the name of the call (``"execute"``, ``"pull"``, ...), for messages.
    :param decode: frames to object (``ipkernel.serialization.deserialize``).
    :param decode_failure: frames to exception (``ipkernel.serialization
        .deserialize_failure``); the exception carries ``remote_traceback``.
    :param container: builds the returned list (and ``CompositeError.results``) from a
        plain list; pass :class:`ResultList` for ``execute`` and ``get_result``.
    :return: ``container([result for each target])`` if every outcome is ``"ok"``.
    :raises CompositeError: if any target failed. Its ``elist`` has one
        ``(engine_id, method, exception)`` per failure, in target order, and its
        ``results`` has every successful result in place with the exceptions where
        targets failed. A ``decode`` or ``decode_failure`` that raises counts as that
        target's failure, so one unreadable result loses nothing else; a malformed
        outcome becomes an :class:`~ipkernel.errors.IPKernelError` the same way. Every
        exception placed gets an ``engine_id`` attribute naming its engine.
    :raises ValueError: if ``outcomes`` and ``targets`` differ in length (a bug, not a
        remote failure).
    """
    if len(outcomes) != len(targets):
        raise ValueError(
            f"{method}: got {len(outcomes)} outcomes for {len(targets)} targets {list(targets)!r}"
        )
    results: list[Any] = []
    elist: list[tuple[int, str, BaseException]] = []
    for engine_id, outcome in zip(targets, outcomes, strict=True):
        failure = _outcome_failure(outcome, engine_id, decode, decode_failure, results)
        if failure is not None:
            try:
                failure.engine_id = engine_id  # type: ignore[attr-defined]
            except AttributeError:
                # An exception class with __slots__ and no __dict__: the id is still in elist.
                pass
            results.append(failure)
            elist.append((engine_id, method, failure))
    if elist:
        raise CompositeError(elist, container(results))
    return container(results)


def _outcome_failure(
    outcome: Any,
    engine_id: int,
    decode: Callable[[Frames], object],
    decode_failure: Callable[[Frames], BaseException],
    results: list[Any],
) -> BaseException | None:
    """Append the result of a good outcome to ``results``, or return the failure."""
    try:
        kind, payload = outcome
    except (TypeError, ValueError):
        return IPKernelError(f"malformed outcome from engine {engine_id}: {outcome!r:.200}")
    if kind == "ok":
        try:
            value = decode(payload)
        except Exception as exc:
            return exc
        results.append(value)
        return None
    if kind == "raised":
        try:
            failure = decode_failure(payload)
        except Exception as exc:
            return exc
        if not isinstance(failure, BaseException):
            return IPKernelError(
                f"engine {engine_id} failed with a non-exception {type(failure).__name__}"
            )
        return failure
    if kind == "error":
        try:
            type_name, message = payload
        except (TypeError, ValueError):
            return IPKernelError(f"malformed error outcome from engine {engine_id}: {payload!r}")
        return error_from_wire(str(type_name), str(message))
    return IPKernelError(f"unknown outcome kind {kind!r} from engine {engine_id}")


class PendingResult:
    """The result of a non-blocking call, to be fetched later.

    Wraps a :class:`concurrent.futures.Future` that the client completes (from its
    reactor thread) with the call's result or exception. The result is held here until
    fetched, and fetching is idempotent: every fetch after completion returns the same
    object, or raises the same exception (for example a ``CompositeError``).

    A blocking fetch can be interrupted: ``KeyboardInterrupt`` (Ctrl-C) propagates at once
    and the ``PendingResult`` stays usable; the remote work is not cancelled by this.
    """

    def __init__(self, future: concurrent.futures.Future[Any], client: Any = None) -> None:
        self._future = future
        self._client = client

    @property
    def future(self) -> concurrent.futures.Future[Any]:
        """The underlying future (for waiting on many at once, as ``barrier`` does)."""
        return self._future

    @property
    def client(self) -> Any:
        """The client that made the call; pending results belong to it."""
        return self._client

    def done(self) -> bool:
        """True once the result (or failure) has arrived."""
        return self._future.done()

    def get_result(self, default: Any = None, block: bool = True, progress: bool = True) -> Any:
        """The call's result, waiting for it if ``block`` is true.

        :param default: returned when ``block`` is false and the result has not arrived.
        :param block: wait until the result arrives (the default).
        :param progress: a wait that lasts may show a bar (:mod:`ipkernel.client.progress`).
        :raises: the call's exception, for example ``CompositeError``, every time it is
            fetched; ``concurrent.futures.CancelledError`` if the call was cancelled.
        """
        if not block and not self._future.done():
            return default
        wait_for(self._future, "result", progress)
        return self._future.result()

    @property
    def r(self) -> Any:
        """Shorthand for ``get_result(block=True)``."""
        return self.get_result(block=True)

    def forget(self) -> None:
        """Drop the result (``flush``): fetching it afterwards raises ``IPKernelError``."""
        flushed: concurrent.futures.Future[Any] = concurrent.futures.Future()
        flushed.set_exception(
            IPKernelError("this result was dropped by flush() before it was fetched")
        )
        self._future = flushed

    def __repr__(self) -> str:
        return f"<PendingResult {'ready' if self._future.done() else 'pending'}>"

    def __await__(self) -> Generator[Any, None, Any]:
        """``await pr`` in a running asyncio loop: the result, or the call's exception,
        without blocking the loop (see :mod:`ipkernel.client.awaiting`)."""
        return awaitable(self._future).__await__()
