"""The parallel magics' logic without IPython: options, %autopx cells, calls, error views.

The magics themselves run in real IPython and Jupyter processes in
``tests/test_ipython.py`` and ``tests/test_notebook.py``.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import ipkernel
from ipkernel.client import px
from ipkernel.client.results import ResultList
from ipkernel.errors import CompositeError, EngineError, InvalidEngineID
from tests.cluster import child_env


class ParseTests(SynchronousTestCase):
    def test_code_alone(self):
        """Without options the whole line is the code, and the client's targets and
        block apply (None)."""
        self.assertEqual(px.parse_px("  a = 1; print(a)  "), px.PxOptions("a = 1; print(a)"))

    def test_targets_and_block_options(self):
        """--targets takes ids separated by commas or 'all', with a space or '='; the
        last of --block / --noblock wins."""
        self.assertEqual(
            px.parse_px("--targets 0,2 --noblock x = 1"), px.PxOptions("x = 1", [0, 2], False)
        )
        self.assertEqual(
            px.parse_px("--targets=all --block print(id)"), px.PxOptions("print(id)", "all", True)
        )
        self.assertEqual(
            px.parse_px("--noblock --block --targets 3 y"), px.PxOptions("y", [3], True)
        )

    def test_options_only_before_the_code(self):
        """Options end at the code or at '--': what follows is code, dashes included."""
        self.assertEqual(
            px.parse_px("print('--targets 1') --block"),
            px.PxOptions("print('--targets 1') --block"),
        )
        self.assertEqual(px.parse_px("-- --x"), px.PxOptions("--x"))
        self.assertEqual(px.parse_px("-x"), px.PxOptions("-x"))

    def test_cell_magic(self):
        """For %%px the first line holds only options and the cell is the code."""
        cell = "a = 1\nprint(a)\n"
        self.assertEqual(px.parse_px("--targets 1", cell), px.PxOptions(cell, [1]))
        self.assertEqual(px.parse_px("", cell), px.PxOptions(cell))
        error = self.assertRaises(ValueError, px.parse_px, "--noblock a = 2", cell)
        self.assertIn("only options on its first line", str(error))
        self.assertIn("'a = 2'", str(error))

    def test_bad_options(self):
        """Unknown options, bad or missing --targets values and missing code are
        refused with a message naming them."""
        error = self.assertRaises(ValueError, px.parse_px, "--trgets 1 a")
        self.assertIn("unknown option '--trgets'", str(error))
        for bad in ("x", "0,x", "-1", "", "1.5"):
            error = self.assertRaises(ValueError, px.parse_targets, bad)
            self.assertIn(repr(bad), str(error))
        error = self.assertRaises(ValueError, px.parse_px, "--targets")
        self.assertIn("--targets needs a value", str(error))
        error = self.assertRaises(ValueError, px.parse_px, "--block  ")
        self.assertIn("%px needs code", str(error))
        self.assertEqual(px.parse_px("--targets 0", magic="result"), px.PxOptions("", [0]))

    def test_parse_targets(self):
        """'all' stays 'all'; ids become a list, in the order given."""
        self.assertEqual(px.parse_targets("all"), "all")
        self.assertEqual(px.parse_targets("3"), [3])
        self.assertEqual(px.parse_targets("2, 0"), [2, 0])


class AutopxTests(SynchronousTestCase):
    def run_transformed(self, source: str) -> list:
        """Execute the transformed cell with a stand-in for get_ipython; return the calls."""
        calls: list = []

        class Shell:
            def run_cell_magic(self, name, line, cell):
                calls.append((name, line, cell))

        lines = px.autopx_lines(source.splitlines(keepends=True))
        exec("".join(lines), {"get_ipython": Shell})
        return calls

    def test_cell_becomes_px(self):
        """A cell becomes one %%px call carrying its text unchanged (quotes, backslashes,
        blank lines and non-ASCII included)."""
        source = "for i in range(3):\n    s = 'it\\'s \"é\"\\n'\n\n    print(i, s)\n"
        self.assertEqual(self.run_transformed(source), [("px", "", source)])

    def test_magics_and_blank_cells_stay_here(self):
        """%autopx (to switch back), other magics and empty cells are not sent."""
        for source in ("%autopx\n", "  %autopx", "%result\n", "%%px --targets 0\na\n", "\n \n", ""):
            lines = source.splitlines(keepends=True)
            self.assertEqual(px.autopx_lines(lines), lines)


class _Client:
    """Records the calls the magics make; ``outcome`` is returned or raised."""

    def __init__(self, outcome: object = None) -> None:
        self.outcome = outcome
        self.calls: list = []

    def _answer(self, *call):
        self.calls.append(call)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def execute(self, code, targets=None, block=None):
        return self._answer("execute", code, targets, block)

    def get_result(self, i=None, targets=None, block=None):
        return self._answer("get_result", i, targets, block)


def _failed_call() -> CompositeError:
    ok = {"id": 0, "number": 3, "input": {"raw": "1/(id-1)"}, "stdout": "-1.0\n", "stderr": ""}
    failure = ZeroDivisionError("division by zero")
    failure.remote_traceback = (
        "Traceback (most recent call last):\n"
        '  File "<engine 1, In [3]>", line 1, in <module>\n'
        "ZeroDivisionError: division by zero\n"
    )
    failure.engine_id = 1
    return CompositeError([(1, "execute", failure)], ResultList([ok, failure]))


class CallTests(SynchronousTestCase):
    def test_run_px_passes_options_through(self):
        """%px executes the code with the options given, None leaving the client's own
        targets and block in force; the client's answer is the magic's value."""
        client = _Client(outcome="the results")
        value = px.run_px(client, px.parse_px("--targets 1,0 --noblock a = 1"))
        self.assertEqual(value, "the results")
        px.run_px(client, px.parse_px("b = 2"))
        self.assertEqual(
            client.calls, [("execute", "a = 1", [1, 0], False), ("execute", "b = 2", None, None)]
        )

    def test_fetch_result(self):
        """%result asks for the last result, or execution N, with the options given."""
        client = _Client()
        px.fetch_result(client, px.parse_px("", magic="result"))
        px.fetch_result(client, px.parse_px("--targets 0 --block 4", magic="result"))
        self.assertEqual(
            client.calls, [("get_result", None, None, None), ("get_result", 4, [0], True)]
        )
        error = self.assertRaises(
            ValueError, px.fetch_result, client, px.parse_px("abc", magic="result")
        )
        self.assertIn("'abc'", str(error))

    def test_failure_shows_summary_and_remote_tracebacks(self):
        """A CompositeError propagates as it is, and IPython is given (through
        _render_traceback_) the successful engines' results, the summary and each
        engine's remote traceback instead of local frames."""
        error = _failed_call()
        raised = self.assertRaises(CompositeError, px.run_px, _Client(error), px.PxOptions("x"))
        self.assertIs(raised, error)
        self.assertEqual(
            raised._render_traceback_(),
            [
                "<Results List>",
                "[0] In [3]: 1/(id-1)",
                "[0] Out[3]: -1.0",
                "",
                "[1] Failed: ZeroDivisionError: division by zero",
                "",
                "CompositeError: one or more exceptions from call to method: execute",
                "[1:execute]: ZeroDivisionError: division by zero",
                "",
                "[1:execute]:",
                "Traceback (most recent call last):",
                '  File "<engine 1, In [3]>", line 1, in <module>',
                "ZeroDivisionError: division by zero",
            ],
        )

    def test_failure_everywhere_and_other_errors(self):
        """With no successful engine only the summary and tracebacks show; an error
        naming no engine shows its one line; Ctrl-C says the engines were interrupted."""
        dead = EngineError("engine 0 died")
        lines = px.traceback_lines(CompositeError([(0, "execute", dead)]))
        self.assertEqual(
            lines,
            [
                "CompositeError: one or more exceptions from call to method: execute",
                "[0:execute]: EngineError: engine 0 died",
                "",
                "[0:execute]:",
                "EngineError: engine 0 died",
            ],
        )
        missing = InvalidEngineID("no engine with id 7")
        raised = self.assertRaises(
            InvalidEngineID, px.fetch_result, _Client(missing), px.PxOptions("")
        )
        self.assertEqual(raised._render_traceback_(), ["InvalidEngineID: no engine with id 7"])
        raised = self.assertRaises(
            KeyboardInterrupt, px.run_px, _Client(KeyboardInterrupt()), px.PxOptions("x")
        )
        self.assertEqual(
            raised._render_traceback_(),
            ["KeyboardInterrupt: the code running on the engines was interrupted"],
        )


class ActivateTests(SynchronousTestCase):
    def test_activate_outside_ipython(self):
        """activate() outside IPython says where it works and changes nothing."""
        error = self.assertRaises(RuntimeError, px.activate, object())
        try:
            import IPython  # noqa: F401
        except ImportError:
            self.assertIn("IPython, which is not installed", str(error))
        else:
            self.assertIn("inside IPython or a Jupyter notebook", str(error))
        self.assertIsNone(px.active_client())

    def test_set_active(self):
        """The magics use the client last made active."""
        client = _Client()
        px.set_active(client)
        self.addCleanup(px.set_active, None)
        self.assertIs(px.active_client(), client)

    def test_importing_ipkernel_does_not_import_ipython(self):
        """IPython is optional: ipkernel and its client import without it; only
        %load_ext ipkernel loads it."""
        code = (
            "import sys, ipkernel, ipkernel.client, ipkernel.client.px\n"
            "assert 'IPython' not in sys.modules, 'IPython imported'\n"
            "print('NO IPYTHON')\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=child_env(self.mktemp()),
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertIn("NO IPYTHON", out.stdout, out.stderr)

    def test_load_ipython_extension(self):
        """%load_ext ipkernel registers the magics class with the shell."""
        registered: list = []

        class Shell:
            def register_magics(self, magics):
                registered.append(magics)

        try:
            ipkernel.load_ipython_extension(Shell())
        except ImportError:
            raise self.skipTest("IPython is not installed") from None
        from ipkernel.client.magics import ParallelMagics

        self.assertEqual(registered, [ParallelMagics])
        self.assertEqual(set(ParallelMagics.magics["line"]), {"px", "autopx", "result", "pxresult"})
        self.assertEqual(set(ParallelMagics.magics["cell"]), {"px"})
