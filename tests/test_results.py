"""Tests for :mod:`ipkernel.client.results`: the Results List view, outcomes, pending results."""

from __future__ import annotations

import concurrent.futures
import pickle
import signal
import threading
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ipkernel.client.results import PendingResult, ResultList, outcomes_to_results
from ipkernel.errors import CompositeError, EngineError, IPKernelError, RemoteError


def entry(engine_id, number, code, stdout="", stderr=""):
    """An execute result dict as the engine returns it."""
    return {
        "id": engine_id,
        "number": number,
        "input": {"raw": code, "translated": code},
        "stdout": stdout,
        "stderr": stderr,
    }


class ResultListTests(SynchronousTestCase):
    def test_spec_example(self) -> None:
        """The SPEC §4 view, byte for byte: Out lines, a blank line between items."""
        results = ResultList([entry(0, 4, "print(c)", "15\n"), entry(1, 4, "print(c)", "-5\n")])
        expected = (
            "<Results List>\n"
            "[0] In [4]: print(c)\n"
            "[0] Out[4]: 15\n"
            "\n"
            "[1] In [4]: print(c)\n"
            "[1] Out[4]: -5"
        )
        self.assertEqual(repr(results), expected)
        self.assertEqual(str(results), expected)

    def test_no_output_items_are_consecutive(self) -> None:
        """Items without output show only their In line, with no blank lines between."""
        results = ResultList([entry(i, 1, "a=5") for i in range(4)])
        self.assertEqual(
            repr(results),
            "<Results List>\n[0] In [1]: a=5\n[1] In [1]: a=5\n[2] In [1]: a=5\n[3] In [1]: a=5",
        )

    def test_mixed_output(self) -> None:
        """A blank line follows an item that showed output, and only such an item."""
        results = ResultList(
            [entry(0, 2, "x=1"), entry(1, 3, "print(1)", "1\n"), entry(2, 2, "x=1")]
        )
        self.assertEqual(
            repr(results),
            "<Results List>\n"
            "[0] In [2]: x=1\n"
            "[1] In [3]: print(1)\n"
            "[1] Out[3]: 1\n"
            "\n"
            "[2] In [2]: x=1",
        )

    def test_multiline_input_and_output_aligned(self) -> None:
        """Continuation lines of code and of output are indented under the first line's text."""
        code = "\na = 10\nfor i in range(2):\n    print(i)\n"
        results = ResultList([entry(12, 7, code, "0\n\n1\n")])
        self.assertEqual(
            repr(results),
            "<Results List>\n"
            "[12] In [7]: a = 10\n"
            "             for i in range(2):\n"
            "                 print(i)\n"
            "[12] Out[7]: 0\n"
            "\n"
            "             1",
        )

    def test_stderr_shown_as_err(self) -> None:
        """Non-empty stderr is shown on an Err line after Out, aligned the same way."""
        results = ResultList(
            [entry(0, 5, "f()", "done\n", "warning: x\nmore\n"), entry(1, 5, "f()")]
        )
        self.assertEqual(
            repr(results),
            "<Results List>\n"
            "[0] In [5]: f()\n"
            "[0] Out[5]: done\n"
            "[0] Err[5]: warning: x\n"
            "            more\n"
            "\n"
            "[1] In [5]: f()",
        )

    def test_blank_print_output(self) -> None:
        """Output that is one empty line still shows an Out line, without trailing spaces."""
        results = ResultList([entry(0, 1, "print()", "\n")])
        self.assertEqual(repr(results), "<Results List>\n[0] In [1]: print()\n[0] Out[1]:")

    def test_failure_entry(self) -> None:
        """An exception in a failed engine's place shows as [id] Failed: Type: message."""
        exc = ZeroDivisionError("division by zero")
        exc.engine_id = 1
        results = ResultList([entry(0, 4, "1/c"), exc])
        self.assertEqual(
            repr(results),
            "<Results List>\n[0] In [4]: 1/c\n[1] Failed: ZeroDivisionError: division by zero",
        )

    def test_empty(self) -> None:
        """An empty list is just the header."""
        self.assertEqual(repr(ResultList()), "<Results List>")

    def test_still_a_list(self) -> None:
        """A ResultList is a list of the dicts: equal to one, indexable, picklable."""
        items = [entry(0, 1, "a=1")]
        results = ResultList(items)
        self.assertEqual(results, items)
        self.assertEqual(results[0]["number"], 1)
        self.assertEqual(pickle.loads(pickle.dumps(results)), items)
        self.assertIsInstance(pickle.loads(pickle.dumps(results)), ResultList)

    def test_ipython_pretty_printer(self) -> None:
        """IPython's pretty printer is given the same view as repr()."""
        texts = []

        class Printer:
            def text(self, value):
                texts.append(value)

        results = ResultList([entry(0, 1, "a=1")])
        results._repr_pretty_(Printer(), False)
        self.assertEqual(texts, [repr(results)])


def decode(frames):
    """Stand-in for serialization.deserialize."""
    return pickle.loads(b"".join(frames))


def decode_failure(frames):
    """Stand-in for serialization.deserialize_failure."""
    exc_type, args, tb = pickle.loads(b"".join(frames))
    exc = exc_type(*args)
    exc.remote_traceback = tb
    return exc


def ok(value):
    return ("ok", [pickle.dumps(value)])


def raised(exc_type, *args, tb="Traceback ...\n"):
    return ("raised", [pickle.dumps((exc_type, args, tb))])


class OutcomesTests(SynchronousTestCase):
    def convert(self, outcomes, targets, method="pull", **kwargs):
        return outcomes_to_results(outcomes, targets, method, decode, decode_failure, **kwargs)

    def test_all_ok(self) -> None:
        """All outcomes ok: the decoded results, one per target, in target order."""
        self.assertEqual(self.convert([ok(1), ok([2]), ok(None)], [3, 1, 0]), [1, [2], None])

    def test_no_targets(self) -> None:
        """No targets, no outcomes: an empty list."""
        self.assertEqual(self.convert([], []), [])

    def test_container(self) -> None:
        """container builds the returned list, e.g. a ResultList for execute."""
        result = self.convert([ok(entry(0, 1, "a=1"))], [0], "execute", container=ResultList)
        self.assertIsInstance(result, ResultList)

    def test_failures_make_composite_error(self) -> None:
        """Any failure raises CompositeError listing each failed target in order."""
        outcomes = [
            ok(10),
            raised(ZeroDivisionError, "division by zero"),
            ok(30),
            ("error", ("EngineError", "engine 7 died")),
        ]
        error = self.assertRaises(CompositeError, self.convert, outcomes, [5, 6, 8, 7], "execute")
        self.assertEqual(
            str(error),
            "one or more exceptions from call to method: execute\n"
            "[6:execute]: ZeroDivisionError: division by zero\n"
            "[7:execute]: EngineError: engine 7 died",
        )
        self.assertEqual([(i, m) for i, m, _ in error.elist], [(6, "execute"), (7, "execute")])

    def test_composite_results_keep_successes(self) -> None:
        """CompositeError.results has the successes in place and the exceptions elsewhere."""
        outcomes = [ok(10), raised(ValueError, "bad"), ok(30)]
        error = self.assertRaises(CompositeError, self.convert, outcomes, [0, 1, 2])
        self.assertEqual(error.results[0], 10)
        self.assertEqual(error.results[2], 30)
        self.assertIsInstance(error.results[1], ValueError)
        self.assertIs(error.results[1], error.elist[0][2])

    def test_raised_keeps_type_and_traceback(self) -> None:
        """A raised outcome comes back as the original type with its remote traceback."""
        outcomes = [raised(KeyError, "k", tb="remote tb text")]
        error = self.assertRaises(CompositeError, self.convert, outcomes, [0])
        exc = self.assertRaises(KeyError, error.raise_exception)
        self.assertEqual(exc.remote_traceback, "remote tb text")

    def test_exceptions_know_their_engine(self) -> None:
        """Each exception placed in the results has engine_id set to its target."""
        outcomes = [raised(ValueError, "a"), ("error", ("QueueCleared", "dropped"))]
        error = self.assertRaises(CompositeError, self.convert, outcomes, [4, 2])
        self.assertEqual([exc.engine_id for exc in error.results], [4, 2])

    def test_error_outcome_unknown_name(self) -> None:
        """An error outcome with an unknown type name becomes a RemoteError."""
        outcomes = [("error", ("Weird", "odd"))]
        error = self.assertRaises(CompositeError, self.convert, outcomes, [0])
        self.assertIsInstance(error.results[0], RemoteError)
        self.assertEqual(str(error.results[0]), "Weird: odd")

    def test_decode_failure_is_that_targets_failure(self) -> None:
        """A result that cannot be decoded fails only its own target."""
        outcomes = [ok(1), ("ok", [b"not a pickle"]), ok(3)]
        error = self.assertRaises(CompositeError, self.convert, outcomes, [0, 1, 2])
        self.assertEqual(error.results[0], 1)
        self.assertEqual(error.results[2], 3)
        self.assertIsInstance(error.results[1], pickle.UnpicklingError)
        self.assertEqual(error.elist[0][0], 1)

    def test_malformed_outcome(self) -> None:
        """A malformed or unknown outcome becomes an IPKernelError for that target."""
        outcomes = [("weird", None), "garbage", ("error", "no pair"), ok(4)]
        error = self.assertRaises(CompositeError, self.convert, outcomes, [0, 1, 2, 3])
        self.assertEqual([type(e) for e in error.results[:3]], [IPKernelError] * 3)
        self.assertEqual(error.results[3], 4)

    def test_length_mismatch(self) -> None:
        """Outcomes and targets of different lengths are a ValueError, not a remote failure."""
        self.assertRaises(ValueError, self.convert, [ok(1)], [0, 1])

    def test_execute_failure_view(self) -> None:
        """With container=ResultList, CompositeError.results shows failures in the view."""
        outcomes = [ok(entry(0, 4, "1/c")), raised(ZeroDivisionError, "division by zero")]
        error = self.assertRaises(
            CompositeError, self.convert, outcomes, [0, 1], "execute", container=ResultList
        )
        self.assertEqual(
            repr(error.results),
            "<Results List>\n[0] In [4]: 1/c\n[1] Failed: ZeroDivisionError: division by zero",
        )


class PendingResultTests(SynchronousTestCase):
    def test_pending_then_ready(self) -> None:
        """Not done: get_result(block=False) gives default; once done, the result."""
        future = concurrent.futures.Future()
        pr = PendingResult(future)
        self.assertFalse(pr.done())
        self.assertIsNone(pr.get_result(block=False))
        self.assertEqual(pr.get_result(default="nope", block=False), "nope")
        self.assertEqual(repr(pr), "<PendingResult pending>")
        future.set_result([1, 2])
        self.assertTrue(pr.done())
        self.assertEqual(repr(pr), "<PendingResult ready>")
        self.assertEqual(pr.get_result(block=False), [1, 2])

    def test_r_and_idempotence(self) -> None:
        """.r is get_result(block=True), and every fetch returns the same object."""
        future = concurrent.futures.Future()
        value = [None, None]
        future.set_result(value)
        pr = PendingResult(future)
        self.assertIs(pr.r, value)
        self.assertIs(pr.get_result(), value)
        self.assertIs(pr.r, value)

    def test_blocking_waits(self) -> None:
        """A blocking fetch waits for a result set from another thread."""
        future = concurrent.futures.Future()
        timer = threading.Timer(0.05, future.set_result, ("late",))
        timer.start()
        self.addCleanup(timer.cancel)
        self.assertEqual(PendingResult(future).get_result(), "late")

    def test_failure_raised_on_every_fetch(self) -> None:
        """A failed call raises its exception (e.g. CompositeError) each time it is fetched."""
        future = concurrent.futures.Future()
        error = CompositeError([(0, "execute", EngineError("engine 0 died"))])
        future.set_exception(error)
        pr = PendingResult(future)
        self.assertIs(self.assertRaises(CompositeError, lambda: pr.r), error)
        self.assertIs(self.assertRaises(CompositeError, pr.get_result, block=False), error)

    def test_client_and_future(self) -> None:
        """The PendingResult knows the client that made it and exposes its future."""
        future = concurrent.futures.Future()
        client = object()
        pr = PendingResult(future, client)
        self.assertIs(pr.client, client)
        self.assertIs(pr.future, future)
        self.assertIsNone(PendingResult(future).client)

    def test_keyboard_interrupt_propagates(self) -> None:
        """Ctrl-C during a blocking wait raises KeyboardInterrupt at once; the result stays."""
        if threading.current_thread() is not threading.main_thread():
            raise SkipTest("signals are delivered to the main thread only")
        future = concurrent.futures.Future()
        pr = PendingResult(future)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.addCleanup(signal.signal, signal.SIGINT, previous)
        main_id = threading.main_thread().ident
        interrupt = threading.Timer(0.1, signal.pthread_kill, (main_id, signal.SIGINT))
        # If the interrupt were lost, the wait still ends, and the timing check fails.
        rescue = threading.Timer(5.0, future.set_result, ("rescued",))
        self.addCleanup(interrupt.cancel)
        self.addCleanup(rescue.cancel)
        start = time.monotonic()
        interrupt.start()
        rescue.start()
        self.assertRaises(KeyboardInterrupt, pr.get_result)
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertFalse(pr.done())
        rescue.cancel()
        future.set_result("after")
        self.assertEqual(pr.r, "after")
