"""Tests for ipkernel.engine.core: when a push frees the values it replaces."""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.engine.core import EngineCore
from ipkernel.engine.interpreter import Interpreter
from ipkernel.engine.properties import Properties
from ipkernel.serialization import serialize


class _Value:
    """A value that can be watched with a weak reference."""


class _List(list):
    """A list that can be watched with a weak reference."""


class PushFreeingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.jobs: list[tuple[Any, tuple, Deferred]] = []

        def held(fn: Any, *args: Any) -> Deferred:
            d: Deferred = Deferred()
            self.jobs.append((fn, args, d))
            return d

        self.core = EngineCore(Interpreter(), Properties(), held)

    def run_job(self) -> None:
        fn, args, d = self.jobs.pop(0)
        d.callback(fn(*args))

    def push_over(self, old: Any) -> list[tuple[str, bool]]:
        """Push ``a = 1`` over ``a = old``; return the answer's kind and whether ``old``
        was still alive when the answer was handled. ``old`` must be freed by then."""
        self.core.interpreter.push({"a": old})
        ref = weakref.ref(old)
        del old
        seen: list[tuple[str, bool]] = []
        d = self.core.call("push", [serialize({"a": 1})])
        d.addCallback(lambda outcome: seen.append((outcome[0], ref() is not None)))
        self.run_job()
        self.assertIsNone(ref())
        self.assertEqual(self.core.interpreter.pull("a"), 1)
        return seen

    def test_replaced_list_freed_after_the_answer(self) -> None:
        """A push answers while the list it replaced is still alive (freeing a long list
        takes time), and that list is freed once the answer has been handled."""
        self.assertEqual(self.push_over(_List([_Value()])), [("ok", True)])

    def test_replaced_value_freed_before_the_answer(self) -> None:
        """Any other value a push replaces (an array's memory) is freed before it
        answers, so the engine holds one copy of a large value once a push returns."""
        self.assertEqual(self.push_over(_Value()), [("ok", False)])

    def test_failed_push_keeps_the_value(self) -> None:
        """A push that cannot be read answers with its error and replaces nothing."""
        value = _Value()
        self.core.interpreter.push({"a": value})
        outcomes = []
        self.core.call("push", [[b"not a header"]]).addCallback(outcomes.append)
        self.run_job()
        self.assertEqual(outcomes[0][0], "raised")
        self.assertIs(self.core.interpreter.pull("a"), value)
