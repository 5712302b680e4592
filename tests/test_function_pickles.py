"""Tests for ipkernel.client.function_pickles and serialization.load_function: which
functions a client pickles once, and an engine unpickles once."""

from __future__ import annotations

import math
import pickle

import cloudpickle
from twisted.trial.unittest import SynchronousTestCase

from ipkernel import serialization
from ipkernel.client.function_pickles import FunctionPickles, dump_plain
from ipkernel.serialization import deserialize, load_function


def _in_module(source: str, name: str, **names: object) -> object:
    """The function ``name`` defined by ``source`` in a fresh ``__main__``-like namespace."""
    namespace: dict = {"__name__": "__main__", **names}
    exec(source, namespace)
    return namespace[name]


class WrapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pickles = FunctionPickles()
        serialization._FUNCTIONS.clear()
        self.addCleanup(serialization._FUNCTIONS.clear)

    def roundtrip(self, wrapped: object) -> object:
        return cloudpickle.loads(cloudpickle.dumps(wrapped, protocol=5))

    def test_stateless_function_pickled_once(self) -> None:
        """A stateless function is wrapped, the same wrapper comes back on the next call,
        and it unpickles into a function that works."""
        f = _in_module("def f(x, n=2):\n    return x * n\n", "f")
        wrapped = self.pickles.wrap(f)
        self.assertIsNot(wrapped, f)
        self.assertIs(self.pickles.wrap(f), wrapped)
        self.assertEqual(self.roundtrip(wrapped)(3), 6)

    def test_same_bytes_same_function(self) -> None:
        """An engine given the same pickle twice reuses the function it made."""
        f = _in_module("def f():\n    return 1\n", "f")
        data = cloudpickle.dumps(f, protocol=5)
        first = load_function(data)
        self.assertIs(load_function(bytes(data)), first)
        self.assertEqual(first(), 1)

    def test_loaded_memory_bounded(self) -> None:
        """The engine keeps at most FUNCTIONS_MEMORY functions."""
        self.patch(serialization, "FUNCTIONS_MEMORY", 2)
        for i in range(5):
            f = _in_module(f"def f():\n    return {i}\n", "f")
            self.assertEqual(load_function(cloudpickle.dumps(f, protocol=5))(), i)
        self.assertLessEqual(len(serialization._FUNCTIONS), 2)

    def test_module_globals_allowed(self) -> None:
        """A function whose globals are modules is wrapped and works once unpickled."""
        f = _in_module("def f(x):\n    return math.sqrt(x)\n", "f", math=math)
        wrapped = self.pickles.wrap(f)
        self.assertIsNot(wrapped, f)
        self.assertEqual(self.roundtrip(wrapped)(9), 3.0)

    def test_stateful_functions_not_wrapped(self) -> None:
        """A closure, a function with a global value, with a mutable default, with
        attributes or annotations, or that assigns a global (by name or through
        globals()), is left as it is."""
        closure = _in_module("def outer():\n    y = 1\n    return lambda: y\n", "outer")()
        data = _in_module("def f():\n    return g[0]\n", "f", g=[1])
        default = _in_module("def f(x=[]):\n    return x\n", "f")
        attribute = _in_module("def f():\n    return 1\n", "f")
        attribute.extra = 1
        annotated = _in_module("def f(x: int) -> int:\n    return x\n", "f")
        assigns = _in_module("def f():\n    global z\n    z = 1\n", "f")
        nested = _in_module("def f():\n    def g():\n        global z\n        z = 1\n", "f")
        by_dict = _in_module("def f():\n    globals()['z'] = 1\n", "f")
        functions = (closure, data, default, attribute, annotated, assigns, nested, by_dict)
        for f in (*functions, len, print):
            self.assertIs(self.pickles.wrap(f), f, f)

    def test_changes_pickle_again(self) -> None:
        """New defaults, a rebound module name or a new code object make a new pickle."""
        f = _in_module("def f(x, n=2):\n    return m.floor(x * n)\n", "f", m=math)
        first = self.pickles.wrap(f)
        f.__defaults__ = (3,)
        second = self.pickles.wrap(f)
        self.assertIsNot(second, first)
        self.assertEqual(self.roundtrip(second)(1), 3)
        f.__globals__["m"] = pickle
        self.assertIsNot(self.pickles.wrap(f), second)
        f.__globals__["m"] = [math]
        self.assertIs(self.pickles.wrap(f), f)
        f.__globals__["m"] = math
        f.__code__ = (lambda x, n=2: m.ceil(x * n)).__code__  # noqa: F821
        third = self.pickles.wrap(f)
        self.assertEqual(self.roundtrip(third)(0.5), 2)

    def test_unpicklable_left_alone(self) -> None:
        """A function that cloudpickle refuses is given back as it is (its task's own
        pickling reports the error)."""
        f = _in_module("def f():\n    return 1\n", "f")
        self.patch(cloudpickle, "dumps", lambda *a, **k: (_ for _ in ()).throw(TypeError("no")))
        self.assertIs(self.pickles.wrap(f), f)


class DumpPlainTests(SynchronousTestCase):
    def test_plain_body(self) -> None:
        """A body of constants and a pickled function is pickled by the standard pickler
        and unpickles to the same values, its function working."""
        f = _in_module("def f(x):\n    return x + 1\n", "f")
        body = {
            "kind": "map",
            "function": FunctionPickles().wrap(f),
            "args": (1, "a", [2.5, None], {"k": b"v"}),
            "kwargs": {"n": True},
            "push": None,
        }
        ser = dump_plain(body)
        self.assertIsNotNone(ser)
        got = deserialize(ser.frames())
        self.assertEqual(got["args"], (1, "a", [2.5, None], {"k": b"v"}))
        self.assertEqual(got["kwargs"], {"n": True})
        self.assertEqual(got["function"](1), 2)

    def test_other_bodies(self) -> None:
        """A body holding a function, an object, a dict with other keys or deeper
        containers is left to cloudpickle (None)."""
        for args in ((len,), (object(),), ({1: 2},), ([[[1]]],), (set(),)):
            self.assertIsNone(dump_plain({"kind": "map", "args": args}), args)
