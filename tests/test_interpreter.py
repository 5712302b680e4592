"""Tests for ipkernel.engine.interpreter: the engine's namespace and commands."""

from __future__ import annotations

import linecache
import sys
import types

from twisted.trial.unittest import SynchronousTestCase

import ipkernel.engine
from ipkernel.engine.interpreter import Interpreter
from ipkernel.engine.properties import Properties
from ipkernel.serialization import (
    deserialize,
    deserialize_failure,
    serialize,
    serialize_failure,
)


def raised(exc_type: type[BaseException], fn, *args) -> BaseException:
    try:
        fn(*args)
    except exc_type as exc:
        return exc
    raise AssertionError(f"{exc_type.__name__} not raised")


class InterpreterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.properties = Properties()
        self.interp = Interpreter(engine_id=3, properties=self.properties)


class NamespaceTests(InterpreterTestCase):
    """The namespace starts __main__-like and is seeded with id and mpi."""

    def test_seeded(self) -> None:
        """A new namespace is named __main__, has builtins, id and mpi (None)."""
        ns = self.interp.namespace
        self.assertEqual(ns["__name__"], "__main__")
        self.assertIn("__builtins__", ns)
        self.assertEqual(ns["id"], 3)
        self.assertIsNone(ns["mpi"])

    def test_mpi_module(self) -> None:
        """The mpi argument is bound to ``mpi``."""
        fake_mpi = types.ModuleType("MPI")
        interp = Interpreter(0, mpi=fake_mpi, properties=Properties())
        self.assertIs(interp.pull("mpi"), fake_mpi)

    def test_engine_id_reseeds(self) -> None:
        """Setting engine_id rebinds ``id`` and is used in later results."""
        self.interp.engine_id = 7
        self.assertEqual(self.interp.pull("id"), 7)
        self.assertEqual(self.interp.execute("a = str(id)")["id"], 7)
        self.assertEqual(self.interp.pull("a"), "7")

    def test_default_properties_are_process_wide(self) -> None:
        """Without a properties argument the interpreter uses ipkernel.engine.properties."""
        self.assertIs(Interpreter().properties, ipkernel.engine.properties)
        self.assertIs(self.interp.properties, self.properties)

    def test_keys(self) -> None:
        """keys() lists every name except dunders, in binding order, id and mpi first."""
        self.assertEqual(self.interp.keys(), ["id", "mpi"])
        self.interp.execute("b = 1\na = 2\n__secret__ = 3\n_private = 4")
        self.assertEqual(self.interp.keys(), ["id", "mpi", "b", "a", "_private"])

    def test_reset(self) -> None:
        """reset() empties the namespace and re-seeds id and mpi; numbers go on."""
        self.interp.execute("a = 1")
        self.interp.engine_id = 5
        self.interp.reset()
        self.assertEqual(self.interp.keys(), ["id", "mpi"])
        self.assertEqual(self.interp.pull("id"), 5)
        self.assertEqual(self.interp.namespace["__name__"], "__main__")
        self.assertIs(self.interp.namespace, self.interp.module.__dict__)
        self.assertEqual(self.interp.execute("b = 2")["number"], 2)
        self.assertEqual(self.interp.get_result(1)["input"]["raw"], "a = 1")


class ExecuteTests(InterpreterTestCase):
    """execute() runs cells and returns their result dicts."""

    def test_result_dict(self) -> None:
        """The result has id, number, input (raw and translated), stdout and stderr."""
        result = self.interp.execute("a = 1")
        self.assertEqual(
            result,
            {
                "id": 3,
                "number": 1,
                "input": {"raw": "a = 1", "translated": "a = 1"},
                "stdout": "",
                "stderr": "",
            },
        )
        self.assertEqual(self.interp.pull("a"), 1)

    def test_echo(self) -> None:
        """Top-level bare expressions echo their repr to stdout, each one, not None."""
        result = self.interp.execute("a = 'x'\na\nNone\n1 + 1\nprint('p')")
        self.assertEqual(result["stdout"], "'x'\n2\np\n")

    def test_echo_is_top_level_only(self) -> None:
        """Expressions inside loops are not echoed, and ``_`` is not set."""
        result = self.interp.execute("for i in range(3):\n    i\n5")
        self.assertEqual(result["stdout"], "5\n")
        self.assertNotIn("_", self.interp.namespace)

    def test_multi_statement(self) -> None:
        """Several statements, compound ones included, run in order."""
        self.interp.execute("a = 1\ndef f(x):\n    return x + a\nb = f(2)\nif b:\n    c = b * 2")
        self.assertEqual(self.interp.pull(["a", "b", "c"]), [1, 3, 6])

    def test_numbers_count_every_run(self) -> None:
        """number counts executions, failed ones (runtime and syntax) included."""
        self.assertEqual(self.interp.execute("a = 1")["number"], 1)
        self.assertRaises(ZeroDivisionError, self.interp.execute, "1/0")
        self.assertRaises(SyntaxError, self.interp.execute, "a = = 1")
        self.assertEqual(self.interp.execute("a = 2")["number"], 4)

    def test_stop_at_first_raise(self) -> None:
        """A raising statement stops the cell; statements before it keep their effect."""
        exc = raised(ZeroDivisionError, self.interp.execute, "a = 1\nb = 1/0\nc = 3")
        self.assertIsInstance(exc, ZeroDivisionError)
        self.assertEqual(self.interp.pull("a"), 1)
        self.assertNotIn("b", self.interp.namespace)
        self.assertNotIn("c", self.interp.namespace)

    def test_raise_after_echo(self) -> None:
        """Echoed output before a failure is kept; later expressions are not run."""
        exc = raised(NameError, self.interp.execute, "1\nundefined_name\n2")
        self.assertIn("undefined_name", str(exc))
        self.assertEqual(self.interp.get_result()["stdout"], "1\n")

    def test_syntax_error_runs_nothing(self) -> None:
        """A SyntaxError anywhere in the cell runs none of it."""
        self.assertRaises(SyntaxError, self.interp.execute, "a = 1\nb = = 2")
        self.assertNotIn("a", self.interp.namespace)

    def test_compile_time_error_runs_nothing(self) -> None:
        """Errors found only by the compiler (return outside a function) run nothing."""
        self.assertRaises(SyntaxError, self.interp.execute, "a = 1\nreturn 5")
        self.assertNotIn("a", self.interp.namespace)

    def test_code_must_be_a_string(self) -> None:
        """Non-string code is a TypeError and does not count as an execution."""
        self.assertRaises(TypeError, self.interp.execute, b"a = 1")
        self.assertEqual(self.interp.execute("a = 1")["number"], 1)

    def test_stdout_and_stderr_captured(self) -> None:
        """print, sys.stdout.write and sys.stderr writes are captured per execution."""
        real_out, real_err = sys.stdout, sys.stderr
        result = self.interp.execute(
            "import sys\nprint('out')\nn = sys.stdout.write('more\\n')\n"
            "print('err', file=sys.stderr)"
        )
        self.assertEqual(result["stdout"], "out\nmore\n")
        self.assertEqual(result["stderr"], "err\n")
        self.assertIs(sys.stdout, real_out)
        self.assertIs(sys.stderr, real_err)

    def test_output_does_not_leak(self) -> None:
        """The next execution starts with empty stdout and stderr."""
        self.interp.execute("print('first')")
        self.assertRaises(ValueError, self.interp.execute, "print('second')\nraise ValueError")
        result = self.interp.execute("a = 1")
        self.assertEqual((result["stdout"], result["stderr"]), ("", ""))
        self.assertEqual(self.interp.get_result(1)["stdout"], "first\n")
        self.assertEqual(self.interp.get_result(2)["stdout"], "second\n")

    def test_streams_restored_after_user_redirect(self) -> None:
        """A cell that replaces sys.stdout does not leave it replaced."""
        real_out = sys.stdout
        self.interp.execute("import io, sys\nsys.stdout = io.StringIO()")
        self.assertIs(sys.stdout, real_out)

    def test_capture_has_encoding(self) -> None:
        """The captured sys.stdout reports an encoding, as libraries expect."""
        result = self.interp.execute("import sys\nsys.stdout.encoding")
        self.assertEqual(result["stdout"], "'utf-8'\n")

    def test_main_module_while_running(self) -> None:
        """While a cell runs, ``import __main__`` is the user's namespace; then it is put back."""
        before = sys.modules["__main__"]
        self.interp.execute("a = 1\nimport __main__\nsame = __main__.a == 1")
        self.assertTrue(self.interp.pull("same"))
        self.assertIs(sys.modules["__main__"], before)

    def test_defined_function_pickles_by_value(self) -> None:
        """A function defined by a cell is in __main__ and reaches a client by value."""
        self.interp.execute("k = 10\ndef f(x):\n    return x + k")
        frames = serialize(self.interp.pull_function("f"))
        self.interp.reset()
        f = deserialize(frames)
        self.assertEqual(f.__module__, "__main__")
        self.assertEqual(f(1), 11)


class FailureTests(InterpreterTestCase):
    """Failed executions: the exception, its remote traceback and the stored result."""

    def test_same_exception_with_traceback(self) -> None:
        """User exceptions are re-raised as they are, with a trimmed remote traceback."""
        code = "def f():\n    return 1/0\nf()"
        exc = raised(ZeroDivisionError, self.interp.execute, code)
        text = exc.remote_traceback
        self.assertTrue(text.startswith("Traceback (most recent call last):"))
        self.assertIn('File "<engine 3, In [1]>", line 3, in <module>', text)
        self.assertIn("    return 1/0", text)
        self.assertIn("ZeroDivisionError: division by zero", text)
        self.assertNotIn("interpreter.py", text)

    def test_function_from_earlier_cell_shows_source(self) -> None:
        """A function defined in an earlier cell shows its source lines when it fails."""
        self.interp.execute("def g():\n    raise KeyError('missing')")
        exc = raised(KeyError, self.interp.execute, "g()")
        self.assertIn("<engine 3, In [1]>", exc.remote_traceback)
        self.assertIn("raise KeyError('missing')", exc.remote_traceback)

    def test_cell_run_again_names_its_own_run(self) -> None:
        """The same cell run twice (compiled once) names each run in its traceback, in
        the functions it defines (nested ones too) and in linecache."""
        cell = "def g():\n    def h():\n        raise KeyError('x')\n    h()\ng()"
        first = raised(KeyError, self.interp.execute, cell)
        second = raised(KeyError, self.interp.execute, cell)
        self.assertIn("<engine 3, In [1]>", first.remote_traceback)
        self.assertIn("<engine 3, In [2]>", second.remote_traceback)
        self.assertNotIn("In [1]", second.remote_traceback)
        self.assertIn("raise KeyError('x')", second.remote_traceback)
        g = self.interp.namespace["g"]
        self.assertEqual(g.__code__.co_filename, "<engine 3, In [2]>")
        inner = [c for c in g.__code__.co_consts if isinstance(c, types.CodeType)]
        self.assertEqual([c.co_filename for c in inner], ["<engine 3, In [2]>"])
        self.assertIn("<engine 3, In [2]>", linecache.cache)

    def test_syntax_error_every_time(self) -> None:
        """A cell that does not compile fails each time it is sent, naming that run."""
        for number in (1, 2):
            exc = raised(SyntaxError, self.interp.execute, "b = = 2")
            self.assertIn(f"<engine 3, In [{number}]>", exc.remote_traceback)

    def test_syntax_error_text(self) -> None:
        """A SyntaxError's text names the cell and the line, with no engine frames."""
        exc = raised(SyntaxError, self.interp.execute, "a = 1\nb = = 2")
        self.assertIn('File "<engine 3, In [1]>", line 2', exc.remote_traceback)
        self.assertNotIn("Traceback", exc.remote_traceback)

    def test_get_result_of_failed_run(self) -> None:
        """A failed run's result holds its output so far and the traceback in 'error'."""
        self.assertRaises(
            ValueError, self.interp.execute, "print('before')\nraise ValueError('bad')"
        )
        result = self.interp.get_result()
        self.assertEqual(result["number"], 1)
        self.assertEqual(result["stdout"], "before\n")
        self.assertIn("ValueError: bad", result["error"])

    def test_successful_result_has_no_error_key(self) -> None:
        """Only failed runs have an 'error' key."""
        self.assertNotIn("error", self.interp.execute("a = 1"))

    def test_failure_round_trip(self) -> None:
        """serialize_failure of the raised exception carries the trimmed traceback."""
        exc = raised(NameError, self.interp.execute, "nope")
        back = deserialize_failure(serialize_failure(exc, engine_id=3, method="execute"))
        self.assertIs(type(back), NameError)
        self.assertEqual(back.remote_traceback, exc.remote_traceback)
        self.assertEqual(back.engine_id, 3)

    def test_keyboard_interrupt(self) -> None:
        """KeyboardInterrupt from user code is stored and re-raised like other failures."""
        self.assertRaises(KeyboardInterrupt, self.interp.execute, "raise KeyboardInterrupt")
        self.assertIn("KeyboardInterrupt", self.interp.get_result()["error"])
        self.assertEqual(self.interp.execute("a = 1")["number"], 2)


class GetResultTests(InterpreterTestCase):
    """get_result() returns stored results by execution number."""

    def test_last_and_numbered(self) -> None:
        """Without an argument the last result; with one, that execution's."""
        self.interp.execute("a = 1")
        self.interp.execute("b = 2")
        self.assertEqual(self.interp.get_result()["input"]["raw"], "b = 2")
        self.assertEqual(self.interp.get_result(1)["input"]["raw"], "a = 1")

    def test_nothing_executed(self) -> None:
        """Before any execution get_result() is an IndexError saying so."""
        exc = raised(IndexError, self.interp.get_result)
        self.assertIn("not executed anything", str(exc))

    def test_unknown_number(self) -> None:
        """An unknown number is an IndexError naming it and the kept range."""
        self.interp.execute("a = 1")
        exc = raised(IndexError, self.interp.get_result, 5)
        self.assertIn("5", str(exc))
        self.assertIn("1 to 1", str(exc))
        self.assertRaises(IndexError, self.interp.get_result, "x")

    def test_results_are_copies(self) -> None:
        """Changing a returned result does not change the stored one."""
        self.interp.execute("a = 1")["input"]["raw"] = "changed"
        self.interp.get_result()["stdout"] = "changed"
        self.assertEqual(self.interp.get_result()["input"]["raw"], "a = 1")
        self.assertEqual(self.interp.get_result()["stdout"], "")

    def test_bounded(self) -> None:
        """Only the MAX_RESULTS most recent results (and their sources) are kept."""
        self.interp.MAX_RESULTS = 3
        for i in range(5):
            self.interp.execute(f"a = {i}")
        self.assertRaises(IndexError, self.interp.get_result, 2)
        self.assertEqual(self.interp.get_result(3)["input"]["raw"], "a = 2")
        self.assertNotIn("<engine 3, In [2]>", linecache.cache)
        self.assertIn("<engine 3, In [5]>", linecache.cache)


class PushPullTests(InterpreterTestCase):
    """Moving objects in and out of the namespace."""

    def test_push_pull(self) -> None:
        """Pushed names can be pulled one at a time or as a list or tuple."""
        self.interp.push({"a": 1, "b": [2, 3]})
        self.assertEqual(self.interp.pull("a"), 1)
        self.assertEqual(self.interp.pull(["b", "a"]), [[2, 3], 1])
        self.assertEqual(self.interp.pull(("a",)), [1])

    def test_push_returns_replaced_values(self) -> None:
        """push returns the values of the names it rebinds (new names give nothing)."""
        old = [1, 2]
        self.interp.push({"a": old})
        replaced = self.interp.push({"a": 3, "b": 4})
        self.assertEqual(len(replaced), 1)
        self.assertIs(replaced[0], old)
        self.assertEqual(self.interp.pull(["a", "b"]), [3, 4])

    def test_pull_missing(self) -> None:
        """Pulling an undefined name is a NameError naming it."""
        self.interp.push({"a": 1})
        exc = raised(NameError, self.interp.pull, ["a", "nope"])
        self.assertIn("'nope'", str(exc))
        self.assertEqual(exc.name, "nope")

    def test_bad_arguments(self) -> None:
        """Keys must be strings, and push needs a dict with string keys."""
        self.assertRaises(TypeError, self.interp.pull, 5)
        self.assertRaises(TypeError, self.interp.pull, ["a", 5])
        self.assertRaises(TypeError, self.interp.push, [("a", 1)])
        self.assertRaises(TypeError, self.interp.push, {1: "a"})

    def test_push_function(self) -> None:
        """push_function binds callables; a non-callable is a TypeError naming it."""
        self.interp.push_function({"f": lambda x: x * 2})
        self.assertEqual(self.interp.execute("f(4)")["stdout"], "8\n")
        exc = raised(TypeError, self.interp.push_function, {"g": abs, "h": 1})
        self.assertIn("'h'", str(exc))
        self.assertNotIn("g", self.interp.namespace)

    def test_pull_function(self) -> None:
        """pull_function returns callables; a non-callable is a TypeError naming it."""
        self.interp.execute("def f():\n    return 1\nx = 2")
        self.assertEqual(self.interp.pull_function("f")(), 1)
        self.assertEqual(len(self.interp.pull_function(["f", "f"])), 2)
        exc = raised(TypeError, self.interp.pull_function, ["f", "x"])
        self.assertIn("'x'", str(exc))
        self.assertRaises(NameError, self.interp.pull_function, "nope")


class ApplyTests(InterpreterTestCase):
    """apply() maps a function over a sequence for map()."""

    def test_apply(self) -> None:
        """apply returns [func(x) for x in seq] and leaves no names behind."""
        before = self.interp.keys()
        self.assertEqual(self.interp.apply(lambda x: x * x, range(4)), [0, 1, 4, 9])
        self.assertEqual(self.interp.apply(str, []), [])
        self.assertEqual(self.interp.keys(), before)

    def test_apply_error_propagates(self) -> None:
        """An exception raised by the function propagates unchanged."""
        self.assertRaises(ZeroDivisionError, self.interp.apply, lambda x: 1 / x, [1, 0])

    def test_apply_sees_main(self) -> None:
        """While apply runs, sys.modules['__main__'] is the user's module; then restored."""
        before = sys.modules["__main__"]
        self.interp.push({"k": 3})
        self.assertEqual(self.interp.apply(lambda x: sys.modules["__main__"].k + x, [1]), [4])
        self.assertIs(sys.modules["__main__"], before)
