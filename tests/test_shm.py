"""Shared-memory segments (ipkernel.shm) and shared payloads through brokers in memory."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import time

import numpy as np
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel import shm
from ipkernel.errors import SharedMemoryError
from ipkernel.serialization import deserialize, dump
from ipkernel.shm import segment as segment_module
from ipkernel.wire.shared import SharedPayload
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

    def test_same_host(self) -> None:
        """same_host takes a probe or its wire form: true for this process's own probe,
        false for another host's, a forged one, None or anything malformed."""
        probe = shm.local_probe()
        assert probe is not None
        self.assertTrue(shm.same_host(probe))
        self.assertTrue(shm.same_host(probe.to_wire()))
        elsewhere = shm.Handle("another-host", probe.pid, probe.fd, probe.token, 0)
        self.assertFalse(shm.same_host(elsewhere))
        self.assertFalse(shm.same_host(shm.Handle(probe.host, probe.pid, probe.fd, "cd" * 16, 0)))
        for bad in (None, [1, 2], "probe", {"reply_to": probe.to_wire()}):
            self.assertFalse(shm.same_host(bad))

    def test_pieces_map_back_contiguous(self) -> None:
        """A segment written in pieces (in parallel) maps each large part as one
        contiguous private buffer across them, and reads small parts across them."""
        self.patch(segment_module, "_piece_count", lambda size: 3)
        large = np.random.default_rng(5).random(300_000)  # 2.4 MB: over pieces 0 and 1
        smalls = [bytes([i]) * 200_000 for i in range(6)]  # the first over pieces 1 and 2
        parts = [b"head", large, *smalls]
        segment = shm.Segment.write(parts)
        self.addCleanup(segment.close)
        self.assertEqual(len(segment.handle.fds), 3)
        self.assertEqual(shm.Handle.from_wire(segment.handle.to_wire()), segment.handle)
        lengths = [memoryview(p).nbytes for p in parts]
        got = shm.map_parts(segment.handle, segment.offsets, lengths)
        self.assertEqual(bytes(got[0]), b"head")
        array = np.frombuffer(got[1], dtype=np.float64)
        self.assertTrue(np.array_equal(array, large))
        self.assertEqual([bytes(p) for p in got[2:]], smalls)
        names = mapped_segments()
        for suffix in ("", "-1"):
            self.assertIn(f"/memfd:ipkernel-{segment.token}{suffix}", names)
        array[:] = -1.0  # private: the segment is unchanged
        again = shm.map_parts(segment.handle, segment.offsets, lengths)[1]
        self.assertTrue(np.array_equal(np.frombuffer(again, dtype=np.float64), large))

    def test_wrong_pieces_are_refused(self) -> None:
        """A handle whose pieces are not the segment's, in its order, is refused."""
        self.patch(segment_module, "_piece_count", lambda size: 3)
        segment = shm.Segment.write([np.ones(200_000)])
        other = shm.Segment.write([np.zeros(200_000)])
        self.addCleanup(segment.close)
        self.addCleanup(other.close)
        h, o = segment.handle, other.handle
        lengths = [1_600_000]
        for bad in (
            shm.Handle(h.host, h.pid, h.fd, h.token, h.size, (h.more[0], o.more[1])),
            shm.Handle(h.host, h.pid, h.fd, h.token, h.size, (h.more[1], h.more[0])),
            shm.Handle(h.host, h.pid, h.fd, h.token, h.size, h.more[:1]),
            shm.Handle(h.host, h.pid, h.fd, h.token, h.size, (*h.more, o.fd)),
            shm.Handle(h.host, h.pid, h.fd, h.token, 10, h.more),
            shm.Handle(h.host, h.pid, h.fd, h.token, h.size),
        ):
            self.assertRaises(SharedMemoryError, shm.map_parts, bad, [0], lengths)
            self.assertRaises(SharedMemoryError, shm.open_segment, bad)
        fds = shm.open_segment(h)  # every piece, checked
        self.assertEqual(len(fds), len(h.fds))
        self.assertEqual(sum(os.fstat(fd).st_size for fd in fds), h.size)
        shm.close_segment(fds, 0)
        for fd in fds:
            self.assertRaises(OSError, os.fstat, fd)
        for bad_wire in (h.to_wire()[:5] + [[]], h.to_wire()[:5] + [[-1]]):
            self.assertRaises(ValueError, shm.Handle.from_wire, bad_wire)

    def test_large_regions_and_segments_are_released_in_the_background(self) -> None:
        """Unmapping a large region and closing a large segment (which frees its pages)
        happen in a background thread, shortly after."""
        data = np.arange(1_000_000, dtype=np.float64)  # 8 MB
        segment = shm.Segment.write([data])
        held = {os.readlink(f"/proc/self/fd/{fd}") for fd in segment.fds}
        view = np.frombuffer(shm.map_parts(segment.handle, segment.offsets, [data.nbytes])[0])
        segment.close()
        self.assertTrue(segment.closed)
        del view
        gc.collect()

        def released() -> bool:
            names = set()
            for fd in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError):
                    names.add(os.readlink(f"/proc/self/fd/{fd}"))
            return not (held & names) and not any(segment.token in n for n in mapped_segments())

        deadline = time.monotonic() + 10
        while not released():
            self.assertLess(time.monotonic(), deadline, "the segment is still held")
            time.sleep(0.01)

    def test_segments_dropped_at_exit_do_not_hang_the_process(self) -> None:
        """A program that ends holding large segments and mappings exits at once: what
        is dropped while the interpreter shuts down is freed there, not handed to a
        thread that can no longer start."""
        code = (
            "import numpy as np\n"
            "from ipkernel import shm\n"
            "data = np.ones(5_000_000)\n"
            "segment = shm.Segment.write([data])\n"
            "view = shm.map_parts(segment.handle, segment.offsets, [data.nbytes])[0]\n"
        )
        result = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True)
        self.assertEqual(result.returncode, 0, result.stderr)

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

    def test_pieces_through_the_relay(self) -> None:
        """A segment in pieces crosses the controller (its handle lists every piece)."""
        self.patch(segment_module, "_piece_count", lambda size: 2)
        chain = Chain()
        data = np.random.default_rng(4).random(100_000)
        payload = SharedPayload.write(dump({"a": data}))
        self.addCleanup(payload.close)
        self.assertEqual(len(payload.handle.fds), 2)
        d = chain.remote.callRemote("push", payload)
        chain.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertTrue(np.array_equal(chain.engine.taken[0]["a"], data))

    def test_unopenable_payload_fails_on_open(self) -> None:
        """A handle that cannot be opened fails when the receiver rebuilds the object."""
        payload = SharedPayload.write(dump(np.zeros(100_000)))
        payload.close()
        received = SharedPayload(payload.header, payload.handle, payload.offsets)
        self.assertRaises(SharedMemoryError, deserialize, received)
