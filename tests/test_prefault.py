"""The helper thread that makes a received part's pages present ahead of its data."""

from __future__ import annotations

import ctypes
import gc
import mmap
import sys
import weakref

from twisted.trial.unittest import SynchronousTestCase

from ipkernel.wire import prefault
from ipkernel.wire.buffers import allocate_part
from tests.commands import wait_for

MiB = 1024 * 1024


def resident_pages(part: mmap.mmap) -> int:
    """How many of ``part``'s pages are in memory (``mincore``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (len(part) + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    anchor = ctypes.c_char.from_buffer(part)
    try:
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(len(part)), vec):
            raise OSError(ctypes.get_errno(), "mincore failed")
    finally:
        del anchor
    return sum(v & 1 for v in vec)


class PrefaultTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise self.skipTest("MADV_POPULATE_WRITE is Linux's")

    def test_pages_are_made_present(self):
        """A large part's pages become present without anything written to it."""
        part = allocate_part(3 * prefault.STEP + 5 * MiB)
        self.assertEqual(resident_pages(part), 0)
        prefault.prefault(part)
        if not prefault._helper.works:
            raise self.skipTest("this kernel has no MADV_POPULATE_WRITE (Linux 5.14)")
        total = len(part) // mmap.PAGESIZE
        wait_for(
            lambda: prefault._helper.works is False or resident_pages(part) == total,
            "the pages to be present",
        )
        if not prefault._helper.works:
            raise self.skipTest("this kernel has no MADV_POPULATE_WRITE (Linux 5.14)")

    def test_a_dropped_part_is_freed(self):
        """The helper does not keep a part alive: one dropped before its turn is freed."""
        parts = [allocate_part(2 * prefault.STEP) for _ in range(4)]
        refs = [weakref.ref(p) for p in parts]
        for part in parts:
            prefault.prefault(part)
        del part, parts
        gc.collect()
        wait_for(lambda: all(r() is None for r in refs), "the parts to be freed")

    def test_small_buffers_are_left_alone(self):
        """Buffers that are not anonymous mappings are not touched."""
        prefault.prefault(bytearray(10))
        prefault.prefault(memoryview(b"x"))
