"""Tests for :mod:`ipkernel.client.partition`: scatter's parts and gather's join."""

from __future__ import annotations

import pickle
from collections import deque

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ipkernel.client.partition import (
    ListPart,
    join,
    join_owned,
    partition_sizes,
    split,
    split_lazily,
)

try:
    import numpy
except ImportError:  # numpy is optional for ipkernel
    numpy = None


class PartitionSizesTests(SynchronousTestCase):
    def test_examples(self) -> None:
        """Near-equal sizes, larger parts first, as SPEC §4 gives them."""
        self.assertEqual(partition_sizes(10, 4), [3, 3, 2, 2])
        self.assertEqual(partition_sizes(2, 4), [1, 1, 0, 0])
        self.assertEqual(partition_sizes(0, 3), [0, 0, 0])
        self.assertEqual(partition_sizes(16, 4), [4, 4, 4, 4])
        self.assertEqual(partition_sizes(5, 1), [5])

    def test_rule_holds(self) -> None:
        """For many n and p: p sizes, summing to n, differing by at most one, non-increasing."""
        for n in range(40):
            for p in range(1, 9):
                sizes = partition_sizes(n, p)
                self.assertEqual(len(sizes), p)
                self.assertEqual(sum(sizes), n)
                self.assertLessEqual(max(sizes) - min(sizes), 1)
                self.assertEqual(sizes, sorted(sizes, reverse=True))

    def test_bad_arguments(self) -> None:
        """p < 1 or n < 0 is a ValueError; a non-integer is a TypeError."""
        self.assertRaises(ValueError, partition_sizes, 10, 0)
        self.assertRaises(ValueError, partition_sizes, 10, -1)
        self.assertRaises(ValueError, partition_sizes, -1, 2)
        self.assertRaises(TypeError, partition_sizes, 10, 2.5)


class SplitJoinTests(SynchronousTestCase):
    def test_range_on_four(self) -> None:
        """range(10) on 4 engines gives 3, 3, 2, 2 contiguous items, as lists."""
        self.assertEqual(split(range(10), 4), [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]])

    def test_fewer_items_than_parts(self) -> None:
        """range(2) on 4 engines gives [0], [1], [], []."""
        self.assertEqual(split(range(2), 4), [[0], [1], [], []])

    def test_empty(self) -> None:
        """An empty sequence gives p empty parts; they join back to an empty list."""
        parts = split([], 3)
        self.assertEqual(parts, [[], [], []])
        self.assertEqual(join(parts), [])
        self.assertEqual(join([]), [])

    def test_list_round_trip(self) -> None:
        """Lists split into lists and join back to the original."""
        seq = list(range(17))
        for p in range(1, 20):
            parts = split(seq, p)
            self.assertTrue(all(type(part) is list for part in parts))
            self.assertEqual(join(parts), seq)

    def test_other_sequences_become_lists(self) -> None:
        """Tuples, deques and generators are split into lists of their items."""
        self.assertEqual(split((1, 2, 3), 2), [[1, 2], [3]])
        self.assertEqual(split(deque([1, 2, 3]), 2), [[1, 2], [3]])
        self.assertEqual(split((x * x for x in range(3)), 2), [[0, 1], [4]])
        self.assertEqual(join([(1, 2), (3,)]), [1, 2, 3])

    def test_strings_split_into_substrings(self) -> None:
        """str and bytes split into substrings of their type and join back to the original."""
        self.assertEqual(split("abcdefg", 3), ["abc", "de", "fg"])
        self.assertEqual(join(split("abcdefg", 3)), "abcdefg")
        self.assertEqual(join(split(b"abcde", 2)), b"abcde")
        self.assertEqual(join(split(bytearray(b"abc"), 2)), bytearray(b"abc"))

    def test_not_sequences_refused(self) -> None:
        """Mappings, sets and other non-sequences are a TypeError naming the type."""
        exc = self.assertRaises(TypeError, split, {"a": 1}, 2)
        self.assertIn("dict", str(exc))
        self.assertRaises(TypeError, split, {1, 2}, 2)
        self.assertRaises(TypeError, split, 5, 2)

    def test_bad_part_count(self) -> None:
        """p < 1 is a ValueError, checked before an iterator is consumed."""
        items = iter([1, 2, 3])
        self.assertRaises(ValueError, split, items, 0)
        self.assertEqual(list(items), [1, 2, 3])

    def test_join_mixed(self) -> None:
        """Parts of mixed kinds are joined as one list of all their items."""
        self.assertEqual(join([[1, 2], (3,), "ab"]), [1, 2, 3, "a", "b"])

    def test_join_non_iterable(self) -> None:
        """A part that is not a sequence is a TypeError naming its index and type."""
        exc = self.assertRaises(TypeError, join, [[1], None])
        self.assertIn("part 1", str(exc))
        self.assertIn("NoneType", str(exc))

    def test_split_lazily_views_of_a_list(self) -> None:
        """A list's lazy parts are ListPart views that pickle as the slices split()
        gives (exact lists, empty parts included), and iterate over the same items."""
        items = [1, "a", (2, 3), None, 4.5]
        parts = split_lazily(items, 3)
        self.assertTrue(all(type(part) is ListPart for part in parts))
        self.assertEqual([list(part) for part in parts], split(items, 3))
        for part, want in zip(parts, split(items, 3), strict=True):
            back = pickle.loads(pickle.dumps(part, protocol=5))
            self.assertIs(type(back), list)
            self.assertEqual(back, want)
        self.assertEqual(pickle.loads(pickle.dumps(split_lazily([1], 2)[1])), [])

    def test_split_lazily_other_sequences(self) -> None:
        """Anything but a list is split as split() does; bad counts are refused."""
        self.assertEqual(split_lazily((1, 2, 3), 2), [[1, 2], [3]])
        self.assertEqual(split_lazily("abc", 2), ["ab", "c"])
        self.assertRaises(ValueError, split_lazily, [1, 2], 0)
        self.assertRaises(TypeError, split_lazily, [1, 2], 1.5)

    def test_join_owned_reuses_first_list(self) -> None:
        """join_owned extends the first part when every part is a list: the result is
        that list object, holding every item in order."""
        first = [1, 2]
        joined = join_owned([first, [3], [], [4, 5]])
        self.assertIs(joined, first)
        self.assertEqual(joined, [1, 2, 3, 4, 5])

    def test_join_owned_other_parts(self) -> None:
        """Parts that are not all lists are joined as join() does; no parts give []."""
        self.assertEqual(join_owned(["ab", "c"]), "abc")
        self.assertEqual(join_owned([[1], (2,)]), [1, 2])
        self.assertEqual(join_owned([]), [])


class NumpyTests(SynchronousTestCase):
    def setUp(self) -> None:
        if numpy is None:
            raise SkipTest("numpy is not installed")

    def test_split_views(self) -> None:
        """A 1-D array splits into arrays of 3, 3, 2, 2 that are views of it (no copy)."""
        arr = numpy.arange(10)
        parts = split(arr, 4)
        self.assertEqual([len(part) for part in parts], [3, 3, 2, 2])
        for part in parts:
            self.assertIsInstance(part, numpy.ndarray)
            self.assertTrue(numpy.shares_memory(part, arr))
        numpy.testing.assert_array_equal(join(parts), arr)

    def test_two_dimensional(self) -> None:
        """A 2-D array splits along axis 0, keeping rows whole, and joins back equal."""
        arr = numpy.arange(21, dtype=numpy.float32).reshape(7, 3)
        parts = split(arr, 3)
        self.assertEqual([part.shape for part in parts], [(3, 3), (2, 3), (2, 3)])
        joined = join(parts)
        self.assertEqual(joined.dtype, numpy.float32)
        numpy.testing.assert_array_equal(joined, arr)

    def test_fewer_rows_than_parts(self) -> None:
        """Empty parts of an array keep its dtype and trailing shape."""
        arr = numpy.ones((2, 4), dtype=numpy.int16)
        parts = split(arr, 4)
        self.assertEqual([part.shape for part in parts], [(1, 4), (1, 4), (0, 4), (0, 4)])
        self.assertTrue(all(part.dtype == numpy.int16 for part in parts))
        numpy.testing.assert_array_equal(join(parts), arr)

    def test_all_empty(self) -> None:
        """An empty array's parts join back to an empty array of the same dtype and shape."""
        arr = numpy.empty((0, 5), dtype=numpy.complex128)
        joined = join(split(arr, 3))
        self.assertIsInstance(joined, numpy.ndarray)
        self.assertEqual(joined.shape, (0, 5))
        self.assertEqual(joined.dtype, numpy.complex128)

    def test_zero_dimensional_refused(self) -> None:
        """A 0-d array has no axis to cut: TypeError."""
        self.assertRaises(TypeError, split, numpy.array(3.0), 2)

    def test_mixed_with_lists(self) -> None:
        """Arrays mixed with lists join as one list of items."""
        self.assertEqual(join([numpy.array([1, 2]), [3]]), [1, 2, 3])
