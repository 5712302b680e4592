"""Shared-memory segments (ipkernel.shm) and shared payloads through brokers in memory."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel import shm
from ipkernel.errors import SharedMemoryError
from ipkernel.serialization import deserialize, dump
from ipkernel.wire.transfer import SharedPayload
from tests.cluster import poll
from tests.test_transfer import Chain

if not shm.available():  # pragma: no cover - Linux with memfd_create in CI
    skip = "shared memory is not available here"


def mapped_segments() -> set[str]:
    """The ipkernel segments this process has mapped (from /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return {line.split()[-2] for line in f if "memfd:ipkernel-" in line}


def dev_shm() -> set[str]:
    """The entries of /dev/shm, less multiprocessing's semaphores (``sem.mp-*``): other
    programs on the machine make and remove those at any time, ipkernel never does."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.mp-")}


class SegmentTests(SynchronousTestCase):
    def test_write_and_map(self) -> None:
        """A segment holds the parts at their offsets; large parts map without a copy."""
        small, large = b"stream bytes", np.arange(100_000, dtype=np.float64)
        before = dev_shm()
        segment = shm.Segment.write([small, large])
        self.addCleanup(segment.close)
        offsets = segment.offsets
        self.assertEqual(offsets[0], 0)
        self.assertEqual(offsets[1] % 4096, 0)
        parts = shm.map_parts(segment.handle, offsets, [len(small), large.nbytes])
        self.assertEqual(bytes(parts[0]), small)
        self.assertIsInstance(parts[0], bytearray)
        self.assertTrue(np.array_equal(np.frombuffer(parts[1], dtype=np.float64), large))
        self.assertEqual(dev_shm(), before)  # memfd segments never show in /dev/shm

    def test_mappings_are_private(self) -> None:
        """Two receivers of one segment each get their own copy-on-write view."""
        data = np.arange(50_000, dtype=np.float64)
        segment = shm.Segment.write([data])
        self.addCleanup(segment.close)
        lengths = [data.nbytes]
        first = np.frombuffer(shm.map_parts(segment.handle, segment.offsets, lengths)[0])
        second = np.frombuffer(shm.map_parts(segment.handle, segment.offsets, lengths)[0])
        first[:] = -1.0
        self.assertTrue(np.array_equal(second, data))
        self.assertTrue((first == -1.0).all())

    def test_mapping_outlives_the_segment_and_goes_with_its_views(self) -> None:
        """The receiver's mapping stays valid after the sender closes, and is unmapped
        once the last object viewing it is gone."""
        data = np.arange(200_000, dtype=np.float64)
        segment = shm.Segment.write([data])
        token = segment.token
        view = np.frombuffer(shm.map_parts(segment.handle, segment.offsets, [data.nbytes])[0])
        segment.close()
        self.assertTrue(np.array_equal(view, data))
        self.assertTrue(any(token in name for name in mapped_segments()))
        del view
        gc.collect()
        self.assertFalse(any(token in name for name in mapped_segments()))

    def test_wrong_handles_are_refused(self) -> None:
        """A handle whose token, size, host or descriptor does not match is refused."""
        segment = shm.Segment.write([b"x" * 10])
        self.addCleanup(segment.close)
        h = segment.handle
        for bad in (
            shm.Handle(h.host, h.pid, h.fd, "0" * 32, h.size),
            shm.Handle(h.host, h.pid, h.fd, h.token, h.size + 1),
            shm.Handle("another-host", h.pid, h.fd, h.token, h.size),
            shm.Handle(h.host, h.pid, 999_999, h.token, h.size),
        ):
            self.assertRaises(SharedMemoryError, shm.map_parts, bad, [0], [10])
        self.assertRaises(SharedMemoryError, shm.map_parts, h, [0], [11])
        segment.close()
        self.assertRaises(SharedMemoryError, shm.map_parts, h, [0], [10])

    def test_handle_wire_form(self) -> None:
        """Handles cross PB as plain values and are checked on the way back."""
        segment = shm.Segment.write([b"abc"])
        self.addCleanup(segment.close)
        self.assertEqual(shm.Handle.from_wire(segment.handle.to_wire()), segment.handle)
        for bad in (None, [1, 2], ["h", 1, 2, "not hex!", 3], ["h", -1, 2, "ab", 3]):
            self.assertRaises(ValueError, shm.Handle.from_wire, bad)

    def test_probe(self) -> None:
        """This process can open its own probe; a forged one is refused."""
        probe = shm.local_probe()
        assert probe is not None
        self.assertTrue(shm.can_open(probe))
        self.assertFalse(shm.can_open(shm.Handle(probe.host, probe.pid, probe.fd, "ab" * 16, 0)))

    def test_keeper_release_and_close_all(self) -> None:
        """A keeper holds segments until released (by token) or closed all at once."""
        keeper = shm.SegmentKeeper()
        first, second = shm.Segment.write([b"1"]), shm.Segment.write([b"2"])
        keeper.keep(first, os.getpid())
        keeper.keep(second, os.getpid())
        self.assertEqual(len(keeper), 2)
        self.assertEqual(keeper.release([first.token, "unknown"]), 1)
        self.assertTrue(first.closed)
        self.assertFalse(second.closed)
        keeper.close_all()
        self.assertTrue(second.closed)
        self.assertEqual(len(keeper), 0)


class KeeperWatchTests(TestCase):
    @inlineCallbacks
    def test_segments_of_a_dead_reader_are_closed(self) -> None:
        """When the reader's process exits without releasing, its segments are closed."""
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        self.addCleanup(child.wait)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        keeper = shm.SegmentKeeper(reactor)
        self.addCleanup(keeper.close_all)
        segment = shm.Segment.write([b"payload"])
        keeper.keep(segment, child.pid)
        mine = shm.Segment.write([b"other"])
        keeper.keep(mine, os.getpid())
        yield poll(lambda: child.pid in keeper._watchers, "the watcher")
        self.assertFalse(segment.closed)
        child.stdin.close()
        yield poll(lambda: segment.closed, "the dead reader's segment to close")
        self.assertFalse(mine.closed)


class SharedPayloadTests(SynchronousTestCase):
    def test_through_the_relay(self) -> None:
        """A shared payload crosses the controller as a handle and is mapped on arrival."""
        chain = Chain()
        data = np.random.default_rng(3).random(100_000)
        payload = SharedPayload.write(dump({"a": data}))
        self.addCleanup(payload.close)
        d = chain.remote.callRemote("push", payload)
        chain.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(chain.controller.seen, [SharedPayload])
        self.assertTrue(np.array_equal(chain.engine.taken[0]["a"], data))

    def test_unopenable_payload_fails_on_open(self) -> None:
        """A handle that cannot be opened fails when the receiver rebuilds the object."""
        payload = SharedPayload.write(dump(np.zeros(100_000)))
        payload.close()
        received = SharedPayload(payload.header, payload.handle, payload.offsets)
        self.assertRaises(SharedMemoryError, deserialize, received)
