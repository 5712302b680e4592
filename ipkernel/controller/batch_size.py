"""The adaptive batch size: how many tasks go to an engine in one ``run_task`` command.

A controller-engine round trip costs far more than running a tiny task, so tasks go to an
engine in batches. After every batch the size is set to::

    min(max_batch, batch_seconds / run time, queued / (balance_factor * engines))

(at least 1), and to 1 while the run time is unknown. The run time is the engines' own
measurement, smoothed so that it rises fast and falls slowly, and forgotten whenever the
controller is idle, since the next burst may be nothing like the last. So long tasks go
one at a time to whichever engine is free, thousands of tiny tasks go :attr:`max_batch` at
a time, and while the queue is short every engine that frees up still finds work. When
batches hold more than one task, an engine may have a second batch waiting in its queue
(:attr:`BatchSizer.batches_per_engine`).
"""

from __future__ import annotations

__all__ = ["BatchSizer"]


class BatchSizer:
    """The current batch size, from the run times observed and the queue's length."""

    #: Most tasks in one batch to one engine.
    max_batch = 64
    #: How much work (seconds, by the smoothed run time) a batch of short tasks aims at.
    batch_seconds = 0.004
    #: A batch takes at most 1 / (balance_factor * engines) of the queued tasks, so that
    #: while the queue is short every engine that frees up finds work left.
    balance_factor = 4

    def __init__(self) -> None:
        #: Tasks per batch now (at least 1).
        self.size = 1
        self._estimate: float | None = None  # smoothed seconds per task on an engine

    @property
    def batches_per_engine(self) -> int:
        """How many batches an engine may have in flight: 2 for batches of short tasks,
        so that the engine does not idle while the controller reads an answer; else 1, so
        that nothing waits behind a running task."""
        return 2 if self.size > 1 else 1

    @property
    def slots(self) -> int:
        """How many tasks an engine may hold at once: the scheduler's slots per engine."""
        return self.size * self.batches_per_engine

    def observe(self, seconds: float | None) -> None:
        """An engine ran a task in ``seconds`` (``None``: unknown, ignored)."""
        if seconds is None:
            return
        estimate = self._estimate
        if estimate is None:
            self._estimate = seconds
        elif seconds > estimate:
            self._estimate = estimate + 0.5 * (seconds - estimate)
        else:
            self._estimate = estimate + 0.05 * (seconds - estimate)

    def retune(self, queued: int, pending: int, engines: int) -> bool:
        """Set :attr:`size` for ``queued`` tasks waiting, ``pending`` on the ``engines``;
        return True if it changed."""
        if not queued and not pending:
            # Idle: the next burst of tasks may be nothing like the last; learn afresh.
            self._estimate = None
        if self._estimate is None:
            size = 1
        else:
            by_time = int(self.batch_seconds / max(self._estimate, 1e-6))
            by_queue = queued // (self.balance_factor * max(1, engines))
            size = max(1, min(self.max_batch, by_time, by_queue))
        if size == self.size:
            return False
        self.size = size
        return True
