"""The parallel magics in a real terminal IPython, against a real cluster.

IPython reads its input from a pipe (so it uses its simple prompt, one cell per
statement, a block ending at a blank line, a cell magic at two), exactly as typed
interactively.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.cluster import Cluster, poll

try:
    import IPython
except ImportError:  # pragma: no cover - IPython is a test dependency
    IPython = None

IPYTHON = [sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor"]

# The "Parallel magic commands" session of the IPython 0.9 docs, in Python 3 form, then
# the options, %%px, %pxresult and errors.
SEED_SESSION = """\
%load_ext ipkernel
%px a = 1
from ipkernel import client
mec = client.MultiEngineClient()
mec.activate()
mec.block=True
import numpy
%px import numpy
%px a = numpy.random.rand(2,2)
%px print(numpy.linalg.eigvals(a))
%result
mec.block=False
%autopx
max_evals = []
for i in range(100):
    a = numpy.random.rand(10,10)
    a = a+a.transpose()
    evals = numpy.linalg.eigvals(a)
    max_evals.append(evals[0].real)


%autopx
mec.block=True
px print("Average max eigenvalue is: ", sum(max_evals)/len(max_evals))
%px --targets 1 print(len(max_evals))
%%px --targets 0 --noblock
x = 5
print(x * 2)


_.r
%pxresult --targets 0
%px 1/(id - 1)
mec.targets = [1]
%px print('only', id)
%px --trgets 0 a
"""


def ipython_env(cluster: Cluster, testcase: TestCase) -> dict:
    """The cluster's environment, with IPython's own files in a fresh directory."""
    return dict(cluster.env, IPYTHONDIR=str(testcase.mktemp()))


def engine_lines(output: str, engine_id: int) -> list[str]:
    """The lines of ``output`` labelled for one engine (``[id] ...``)."""
    return [line for line in output.splitlines() if line.startswith(f"[{engine_id}] ")]


class TerminalIPythonTests(TestCase):
    timeout = 180

    def setUp(self):
        if IPython is None:
            raise self.skipTest("IPython is not installed")

    @inlineCallbacks
    def test_seed_magics_session(self):
        """The seed's magics session works in Python 3 form: %px, %result, %autopx (a
        loop typed over several lines), the automagic ``px``, options, %%px --noblock,
        %pxresult and errors with each engine's remote traceback; before activate() the
        magics say what to do."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        result = subprocess.run(
            IPYTHON,
            input=SEED_SESSION,
            env=ipython_env(cluster, self),
            capture_output=True,
            text=True,
            timeout=120,
        )
        out, err = result.stdout, result.stderr
        for i in (0, 1):
            lines = engine_lines(out, i)
            self.assertIn(f"[{i}] In [1]: import numpy", lines)
            self.assertIn(f"[{i}] In [2]: a = numpy.random.rand(2,2)", lines)
            # %px and then %result show the same eigenvalues.
            eigvals = [line for line in lines if line.startswith(f"[{i}] Out[3]: [")]
            self.assertEqual(len(eigvals), 2, out)
            self.assertEqual(eigvals[0], eigvals[1])
            self.assertRegex(out, rf"\[{i}\] Out\[6\]: Average max eigenvalue is:  \d+\.\d+")
        self.assertIn("Auto Parallel Enabled\nType %autopx to disable", out)
        self.assertIn("Auto Parallel Disabled", out)
        self.assertEqual(out.count("<PendingResult"), 3, out)
        self.assertIn("[1] In [7]: print(len(max_evals))\n[1] Out[7]: 100", out)
        # %%px --noblock, then its result through the PendingResult and %pxresult.
        cell = "[0] In [7]: x = 5\n            print(x * 2)\n[0] Out[7]: 10"
        self.assertEqual(out.count(cell), 2, out)
        # One engine failed: its remote traceback, the other's result, no local frames.
        self.assertIn("[0] In [8]: 1/(id - 1)\n[0] Out[8]: -1.0", out)
        self.assertIn("[1] Failed: ZeroDivisionError: division by zero", out)
        self.assertIn(
            "CompositeError: one or more exceptions from call to method: execute\n"
            "[1:execute]: ZeroDivisionError: division by zero\n\n"
            "[1:execute]:\nTraceback (most recent call last):\n"
            '  File "<engine 1, In [8]>", line 1, in <module>',
            out,
        )
        self.assertEqual(out.count("Traceback"), 1, out)
        self.assertNotIn("twisted", out.lower())
        # mec.targets is honoured.
        self.assertIn("[1] In [9]: print('only', id)\n[1] Out[9]: only 1", out)
        self.assertEqual(len(re.findall(r"^\[0\] In \[9\]", out, re.M)), 0)
        self.assertIn("UsageError: %px: unknown option '--trgets'", err)
        self.assertIn("UsageError: no MultiEngine client is active: run `from ipkernel", err)

    @inlineCallbacks
    def test_ctrl_c_interrupts_px(self):
        """Ctrl-C during a blocking %px interrupts the code on the engines at once; the
        session and the engines' namespaces go on."""
        cluster = Cluster(self, n=2)
        mec = yield cluster.start()
        marker = str(cluster.dir / "asleep")
        session = (
            "from ipkernel import client\n"
            "client.MultiEngineClient().activate()\n"
            "%px import time; a = 5\n"
            f"%px open({marker!r} + '-' + str(id), 'w').close(); time.sleep(60)\n"
            "%px print(a)\n"
        )
        output = cluster.dir / "ipython.out"
        with open(output, "w") as out:
            proc = subprocess.Popen(
                IPYTHON,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=ipython_env(cluster, self),
                text=True,
            )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        proc.stdin.write(session)
        proc.stdin.close()
        yield poll(
            lambda: all((cluster.dir / f"asleep-{i}").exists() for i in (0, 1)),
            "the engines to start sleeping",
        )
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        yield poll(lambda: proc.poll() is not None, "IPython to finish", deadline=60)
        self.assertLess(time.monotonic() - start, 30)
        text = output.read_text()
        self.assertIn("KeyboardInterrupt: the code running on the engines was interrupted", text)
        self.assertIn("[0] In [3]: print(a)\n[0] Out[3]: 5", text)
        self.assertIn("[1] In [3]: print(a)\n[1] Out[3]: 5", text)
        results = yield mec.get_result(2)
        self.assertTrue(all("KeyboardInterrupt" in r["error"] for r in results), results)
