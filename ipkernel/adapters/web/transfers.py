"""Data transfers in flight, with their rates: streams sampled, rates from one sample to the next.

The wire layer says what each stream open in this process has moved so far
(:func:`~ipkernel.wire.stream_table.streams_in_flight`); a :class:`TransferRates` keeps
the previous sample and turns the difference into bytes per second. It samples only when
asked (by the status page), so nothing runs while no page is open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ipkernel.wire.stream_table import streams_in_flight

__all__ = ["TransferRates"]

#: Samples closer together than this (seconds) keep the rates of the previous one: a
#: difference over a few milliseconds says little.
MIN_INTERVAL = 0.25
#: The most streams listed one by one (the largest first); totals count them all.
MAX_LISTED = 50


class TransferRates:
    """Streams in flight and their rates, from one :meth:`sample` to the next.

    ``streams`` lists the open streams (by default this process's, from the wire
    layer), as :func:`~ipkernel.wire.stream_table.streams_in_flight` does.
    """

    def __init__(self, streams: Callable[[], list[dict[str, Any]]] = streams_in_flight) -> None:
        self._streams = streams
        self._previous: dict[tuple[int, int, str], int] = {}
        self._rates: dict[tuple[int, int, str], float] = {}
        self._at: float | None = None

    def sample(self, now: float) -> dict[str, Any]:
        """The transfers at ``now`` (seconds, any monotonic clock).

        ``{'streams': [...], 'incoming': n, 'outgoing': n, 'held': bytes,
        'rate_in': bytes/s, 'rate_out': bytes/s}``; each stream listed is a dict of
        ``direction``, ``total``, ``done``, ``held`` and ``rate`` (bytes/s, ``None``
        until a stream has been seen twice). The largest :data:`MAX_LISTED` are listed.
        """
        streams = self._streams()
        fresh = self._at is None or now - self._at >= MIN_INTERVAL
        elapsed = now - self._at if self._at is not None else 0.0
        previous, rates = self._previous, self._rates
        current: dict[tuple[int, int, str], int] = {}
        new_rates: dict[tuple[int, int, str], float] = {}
        totals = {"incoming": 0, "outgoing": 0, "held": 0, "rate_in": 0.0, "rate_out": 0.0}
        listed = []
        for stream in streams:
            key = (stream["connection"], stream["sid"], stream["direction"])
            done = stream["done"]
            current[key] = done
            if fresh:
                before = previous.get(key)
                rate = (done - before) / elapsed if before is not None and elapsed > 0 else None
            else:
                rate = rates.get(key)
            if rate is not None:
                new_rates[key] = rate
            incoming = stream["direction"] == "in"
            totals["incoming" if incoming else "outgoing"] += 1
            totals["held"] += stream["held"]
            totals["rate_in" if incoming else "rate_out"] += rate or 0.0
            listed.append(
                {
                    "direction": stream["direction"],
                    "total": stream["total"],
                    "done": done,
                    "held": stream["held"],
                    "rate": rate,
                }
            )
        if fresh:
            self._previous, self._at = current, now
            self._rates = new_rates
        listed.sort(key=lambda s: s["total"], reverse=True)
        return {"streams": listed[:MAX_LISTED], **totals}
