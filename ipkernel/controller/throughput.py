"""Task throughput over the last minutes: completions per second, in a ring of counters.

The task controller counts each finished task into the second it finished in; a view
reads the counts of the last :attr:`Throughput.seconds` seconds. Counting is one integer
increment (a slot is cleared only when its second comes round again), so it costs the
same whatever the rate, and nothing is kept per task.
"""

from __future__ import annotations

__all__ = ["Throughput"]


class Throughput:
    """Finished tasks per second over the last ``seconds`` seconds (wall-clock seconds)."""

    def __init__(self, seconds: int = 300) -> None:
        if seconds < 1:
            raise ValueError(f"a throughput window of {seconds} seconds")
        self.seconds = seconds
        self._counts = [0] * seconds
        self._latest = 0  # the latest second counted into; older slots hold older seconds

    def count(self, at: float) -> None:
        """One task finished at time ``at`` (seconds since the epoch).

        A time older than the window (the clock went back a long way) is not counted.
        """
        second = int(at)
        latest = self._latest
        if second > latest:
            counts = self._counts
            size = self.seconds
            # Clear the slots of the seconds skipped since the latest count.
            for s in range(max(latest + 1, second - size + 1), second + 1):
                counts[s % size] = 0
            self._latest = second
        elif second <= latest - self.seconds:
            return
        self._counts[second % self.seconds] += 1

    def view(self, now: float) -> dict:
        """``{'end': second, 'counts': [...]}``: the tasks finished in each of the
        ``seconds`` seconds up to and including ``end`` (``int(now)``), oldest first."""
        end = int(now)
        size = self.seconds
        latest = self._latest
        counts = self._counts
        first = end - size + 1
        values = [
            counts[s % size] if latest - size < s <= latest else 0 for s in range(first, end + 1)
        ]
        return {"end": end, "counts": values}
