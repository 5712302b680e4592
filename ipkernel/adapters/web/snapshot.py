"""The status of the controller as one JSON document: ``/api/status`` and each live event.

Everything comes from the controller service's read-only views (engines, task counts,
throughput, recent failures) and from the wire layer's streams; the document is built
when asked, never on a timer of its own.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from ipkernel.adapters.web.transfers import TransferRates
from ipkernel.controller.engine_status import ENGINE_STATES
from ipkernel.controller.service import ControllerService
from ipkernel.controller.store import STATES

__all__ = ["StatusSnapshot"]

_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class StatusSnapshot:
    """Builds the status document of ``controller``.

    ``now`` is the wall clock the controller dates things with (the same as the
    service's); ``monotonic`` times the transfer rates; ``transfers`` samples the streams
    in flight.
    """

    def __init__(
        self,
        controller: ControllerService,
        *,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        transfers: TransferRates | None = None,
    ) -> None:
        self._controller = controller
        self._now = now
        self._monotonic = monotonic
        self._transfers = transfers if transfers is not None else TransferRates()
        self._started = now()

    def build(self) -> dict[str, Any]:
        """The status as plain data (see ``docs/guide.md`` for the keys)."""
        controller = self._controller
        now = self._now()
        tasks = controller.tasks
        engines = controller.engine_status()
        states = dict.fromkeys(ENGINE_STATES, 0)
        for engine in engines:
            states[engine["state"]] = states.get(engine["state"], 0) + 1
        counts = tasks.queue_status()
        return {
            "time": now,
            "controller": {"pid": os.getpid(), "started": self._started},
            "engines": engines,
            "engine_states": states,
            "tasks": {state: counts[state] for state in STATES},
            "throughput": tasks.throughput(now),
            "failures": tasks.recent_failures(),
            "transfers": self._transfers.sample(self._monotonic()),
        }

    def encode(self) -> bytes:
        """:meth:`build`, as compact JSON (UTF-8)."""
        return _encoder.encode(self.build()).encode("utf-8")
