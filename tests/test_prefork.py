"""Tests for ipkernel.cli.prefork: children forked before the reactor, then adopted.

The forking itself needs a process whose reactor is not installed, so it runs in a child
Python (trial has installed its reactor here); what stays in this process is what must be
refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from ipkernel.cli.prefork import Preforked, fork_child
from tests.cluster import child_env

ADOPT = """
import json, sys
from ipkernel.cli.prefork import Preforked
from ipkernel.cli.processes import ChildProcess

# forkengines with a bad count prints its usage and exits with 2.
argv = [sys.executable, "-m", "ipkernel.cli.forkengines", "x"]
preforked = Preforked()
pid = preforked.fork("forkengines", argv, None)

from twisted.internet import task

def main(reactor):
    child = ChildProcess("forkengines")
    other = preforked.adopt("controller", argv, ChildProcess("controller"), reactor)
    adopted = preforked.adopt("forkengines", argv, child, reactor)
    again = preforked.adopt("forkengines", argv, ChildProcess("forkengines"), reactor)

    def report(status):
        print(json.dumps({"pid": pid, "child_pid": child.pid, "other": other,
                          "adopted": adopted, "again": again, "code": status.code,
                          "signal": status.signal, "tail": child.tail()}))

    return child.when_ended().addCallback(report)

task.react(main)
"""

DISCARD = """
import json, os, sys
from ipkernel.cli.prefork import Preforked

# The engines' parent waits for a key file that never comes: it runs until stopped.
argv = [sys.executable, "-m", "ipkernel.cli.forkengines", "1", "--furl-file", sys.argv[1]]
preforked = Preforked()
pid = preforked.fork("forkengines", argv, None)
preforked.discard()
try:
    os.kill(pid, 0)
    alive = True
except ProcessLookupError:
    alive = False
print(json.dumps({"alive": alive, "forked": bool(preforked)}))
"""


def run(directory: Path, code: str, *args: str) -> dict:
    """Run ``code`` in a child Python (IPKERNEL_DIR ``directory``); its last line, parsed."""
    directory.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=child_env(directory),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"script failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


class PreforkTests(SynchronousTestCase):
    def test_adopted_child_reports_output_and_exit(self):
        """A forked child is adopted once, by its role and exact command line: its pid,
        its output lines and its exit status reach the ChildProcess as if spawned."""
        facts = run(Path(self.mktemp()).absolute(), ADOPT)
        self.assertEqual(facts["child_pid"], facts["pid"])
        self.assertEqual((facts["other"], facts["adopted"], facts["again"]), (False, True, False))
        self.assertEqual((facts["code"], facts["signal"]), (2, None))
        self.assertIn(
            "usage: python -m ipkernel.cli.forkengines N [ipengine options]", facts["tail"]
        )

    def test_discard_stops_children_nobody_adopted(self):
        """discard() kills and reaps the children not adopted."""
        directory = Path(self.mktemp()).absolute()
        facts = run(directory, DISCARD, str(directory / "none.furl"))
        self.assertEqual(facts, {"alive": False, "forked": True})

    def test_refusals(self):
        """Only the forkable modules, run with this Python, can be forked, and never once
        the reactor is installed (as it is in this test process)."""
        with self.assertRaises(ValueError):
            fork_child([sys.executable, "-m", "ipkernel.cli.ipengine"], None)
        with self.assertRaises(ValueError):
            fork_child(["/bin/true"], None)
        with self.assertRaises(RuntimeError):
            fork_child([sys.executable, "-m", "ipkernel.cli.ipcontroller"], None)
        self.assertFalse(Preforked())
