"""Tests for ipkernel.wire.heap: the controller gives freed buffers back once idle."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.wire.heap import TRIM_FROM, IdleTrim

MiB = 2**20


class IdleTrimTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.busy = False
        self.free = 0
        self.trimmed = 0

        def trim() -> None:
            self.trimmed += 1

        self.trim = IdleTrim(
            self.clock, busy=lambda: self.busy, free_bytes=lambda: self.free, trim=trim
        )
        self.trim.startService()
        self.addCleanup(self.trim.stopService)

    def test_trims_once_idle_after_memory_was_freed(self):
        """Freed memory is given back at the first check with no stream open, once; not
        while streams are open, and not again until more has been freed."""
        self.free = TRIM_FROM + MiB
        self.busy = True
        self.clock.advance(1)
        self.assertEqual(self.trimmed, 0)
        self.busy = False
        self.clock.advance(1)
        self.assertEqual(self.trimmed, 1)
        self.clock.advance(5)
        self.assertEqual(self.trimmed, 1)
        self.free += TRIM_FROM
        self.clock.advance(1)
        self.assertEqual(self.trimmed, 2)

    def test_small_or_reused_memory_is_left(self):
        """Less than TRIM_FROM newly freed is left alone; memory reused lowers the mark,
        so what is freed after counts from there."""
        self.free = TRIM_FROM - 1
        self.clock.advance(3)
        self.assertEqual(self.trimmed, 0)
        self.free = 0
        self.clock.advance(1)
        self.free = TRIM_FROM
        self.clock.advance(1)
        self.assertEqual(self.trimmed, 1)

    def test_stops_with_the_service(self):
        """No check runs once the service has stopped."""
        self.trim.stopService()
        self.free = 10 * TRIM_FROM
        self.clock.advance(10)
        self.assertEqual((self.trimmed, self.clock.getDelayedCalls()), (0, []))
