"""Tests for ipkernel.engine.properties: the engine's thread-safe properties."""

from __future__ import annotations

import threading
from collections.abc import MutableMapping

from twisted.trial.unittest import SynchronousTestCase

import ipkernel.engine
from ipkernel.engine import Properties


class Recorder:
    """A listener that records each version it is called with, and from which thread."""

    def __init__(self) -> None:
        self.versions: list[int] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, version: int) -> None:
        self.versions.append(version)
        self.threads.append(threading.current_thread())


class PropertiesTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.props = Properties({"RAM": 2**34, "gpu": True})
        self.recorder = Recorder()
        self.props.add_listener(self.recorder)


class MappingTests(PropertiesTestCase):
    """Properties behave as an ordinary mutable mapping for user code."""

    def test_process_wide_instance(self) -> None:
        """``from ipkernel.engine import properties`` gives a Properties instance."""
        self.assertIsInstance(ipkernel.engine.properties, Properties)

    def test_is_a_mutable_mapping(self) -> None:
        """Properties register as a MutableMapping and convert with dict()."""
        self.assertIsInstance(self.props, MutableMapping)
        self.assertEqual(dict(self.props), {"RAM": 2**34, "gpu": True})

    def test_item_access(self) -> None:
        """Setting, reading, ``in``, ``len``, iteration and ``del`` work as for a dict."""
        self.props["ncores"] = 4
        self.assertEqual(self.props["ncores"], 4)
        self.assertIn("gpu", self.props)
        self.assertNotIn("tpu", self.props)
        self.assertEqual(len(self.props), 3)
        self.assertEqual(list(self.props), ["RAM", "gpu", "ncores"])
        del self.props["gpu"]
        self.assertNotIn("gpu", self.props)
        self.assertRaises(KeyError, self.props.__getitem__, "gpu")
        self.assertRaises(KeyError, self.props.__delitem__, "gpu")

    def test_iteration_is_a_snapshot(self) -> None:
        """Changing the properties while iterating does not break the iteration."""
        for key in self.props:
            self.props[key + "_copy"] = 1
        self.assertEqual(len(self.props), 4)

    def test_string_keys_only(self) -> None:
        """Property names must be strings."""
        self.assertRaises(TypeError, self.props.__setitem__, 1, "x")
        self.assertRaises(TypeError, self.props.update, {1: "x"})
        self.assertRaises(TypeError, Properties, {1: "x"})

    def test_setdefault_and_pop(self) -> None:
        """setdefault sets only a missing key; pop removes and returns."""
        self.assertEqual(self.props.setdefault("gpu", False), True)
        self.assertEqual(self.props.setdefault("disk", 10), 10)
        self.assertEqual(self.props.pop("disk"), 10)
        self.assertNotIn("disk", self.props)


class CommandTests(PropertiesTestCase):
    """The methods behind the engine's property commands."""

    def test_get_all(self) -> None:
        """get() is a new dict of every property."""
        got = self.props.get()
        self.assertEqual(got, {"RAM": 2**34, "gpu": True})
        got["RAM"] = 0
        self.assertEqual(self.props["RAM"], 2**34)

    def test_get_named(self) -> None:
        """get(keys) is a dict of the named properties, for one name or several."""
        self.assertEqual(self.props.get("gpu"), {"gpu": True})
        self.assertEqual(self.props.get(["gpu", "RAM"]), {"gpu": True, "RAM": 2**34})

    def test_get_missing(self) -> None:
        """get() of missing keys is a KeyError naming each of them."""
        exc = self.assertRaises(KeyError, self.props.get, ["gpu", "tpu", "disk"])
        self.assertIn("'tpu'", str(exc))
        self.assertIn("'disk'", str(exc))
        self.assertNotIn("'gpu'", str(exc))

    def test_update(self) -> None:
        """update() sets several properties at once, from a dict or keywords."""
        self.props.update({"a": 1, "b": 2}, c=3)
        self.assertEqual(self.props.get(["a", "b", "c"]), {"a": 1, "b": 2, "c": 3})

    def test_has(self) -> None:
        """has() answers a bool for one key and a list of bools for several."""
        self.assertIs(self.props.has("gpu"), True)
        self.assertIs(self.props.has("tpu"), False)
        self.assertEqual(self.props.has(["gpu", "tpu"]), [True, False])

    def test_delete(self) -> None:
        """delete() removes one key or several."""
        self.props.update({"a": 1, "b": 2})
        self.props.delete("a")
        self.props.delete(["b", "gpu"])
        self.assertEqual(self.props.get(), {"RAM": 2**34})

    def test_delete_missing(self) -> None:
        """delete() of a missing key is a KeyError naming it, and deletes nothing."""
        exc = self.assertRaises(KeyError, self.props.delete, ["gpu", "tpu"])
        self.assertIn("'tpu'", str(exc))
        self.assertIn("gpu", self.props)
        self.assertEqual(self.props.version, 0)

    def test_clear(self) -> None:
        """clear() removes every property."""
        self.props.clear()
        self.assertEqual(self.props.get(), {})
        self.assertEqual(len(self.props), 0)


class VersionTests(PropertiesTestCase):
    """Every change increases the version and calls the listeners."""

    def test_initial_version(self) -> None:
        """A new Properties (even with initial values) is at version 0."""
        self.assertEqual(self.props.version, 0)
        self.assertEqual(Properties().version, 0)

    def test_each_change_bumps_once(self) -> None:
        """Each changing call bumps the version once; listeners get the new version."""
        self.props["a"] = 1
        self.props.update({"b": 2, "c": 3})
        self.props.delete(["a", "b"])
        del self.props["c"]
        self.props.setdefault("d", 4)
        self.props.clear()
        self.assertEqual(self.props.version, 6)
        self.assertEqual(self.recorder.versions, [1, 2, 3, 4, 5, 6])

    def test_no_change_no_bump(self) -> None:
        """Reads, empty updates, setdefault of a present key and clear() of nothing don't bump."""
        self.props.get()
        self.props.has("gpu")
        self.props.update({})
        self.props.setdefault("gpu", False)
        self.props.clear()
        self.assertEqual(self.props.version, 1)
        self.props.clear()
        self.props.delete([])
        self.assertEqual(self.props.version, 1)
        self.assertEqual(self.recorder.versions, [1])

    def test_remove_listener(self) -> None:
        """A removed listener is no longer called."""
        self.props.remove_listener(self.recorder)
        self.props["a"] = 1
        self.assertEqual(self.recorder.versions, [])
        self.assertRaises(ValueError, self.props.remove_listener, self.recorder)

    def test_failing_listener(self) -> None:
        """A listener that raises is logged; the change and other listeners still happen."""

        def broken(version: int) -> None:
            raise RuntimeError("listener broke")

        props = Properties()
        later = Recorder()
        props.add_listener(broken)
        props.add_listener(later)
        props["a"] = 1
        self.assertEqual(props["a"], 1)
        self.assertEqual(later.versions, [1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_listener_may_read(self) -> None:
        """A listener can read the properties without deadlocking."""
        seen = []
        props = Properties()
        props.add_listener(lambda version: seen.append((version, props.get())))
        props["a"] = 1
        self.assertEqual(seen, [(1, {"a": 1})])

    def test_listener_called_in_changing_thread(self) -> None:
        """Listeners run in the thread that made the change."""
        thread = threading.Thread(target=self.props.__setitem__, args=("a", 1))
        thread.start()
        thread.join()
        self.assertEqual(self.recorder.threads, [thread])

    def test_concurrent_writers(self) -> None:
        """Writers in several threads lose no change and no version."""

        def write(n: int) -> None:
            for i in range(500):
                self.props[f"t{n}_{i}"] = i

        threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len(self.props), 2 + 4 * 500)
        self.assertEqual(self.props.version, 4 * 500)
        self.assertEqual(sorted(self.recorder.versions), list(range(1, 2001)))
