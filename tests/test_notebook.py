"""The parallel magics in a real Jupyter kernel (ipykernel), against a real cluster.

A child Python runs the notebook with nbclient (or drives the kernel with
jupyter_client) and prints what came back as JSON; the kernel it starts inherits the
cluster's ``IPKERNEL_DIR``. ``examples/quickstart.ipynb`` starts a cluster of its own
(``ipkernel.Cluster``); a probe cell run after that one writes the kernel's PID and the
cluster's (from its pid file) to a report, by which the test checks that nothing is
left running.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from ipkernel.cli.processes import process_alive
from tests.cluster import Cluster, child_env
from tests.commands import kill_if_ours, wait_for

try:
    import ipykernel
    import jupyter_client
    import nbclient
    import nbformat
except ImportError:  # pragma: no cover - they are test dependencies
    ipykernel = jupyter_client = nbclient = nbformat = None

RUN_NOTEBOOK = r"""
import json, nbformat
from nbclient import NotebookClient

sources = [
    "%load_ext ipkernel",
    "from ipkernel import client\nmec = client.MultiEngineClient()\nmec.activate()",
    "%px a = id * 10",
    "%%px --noblock\nb = a + 1\nprint(b)",
    "%result",
    "%px 1/(id - 1)",
    "%px --targets 1 print(b)",
    "%autopx",
    "c = a * 2\nc",
    "%autopx",
    "print('local', 1 + 1, 'c' in globals())",
]
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
nb.cells[5].metadata["tags"] = ["raises-exception"]
NotebookClient(nb, timeout=60, kernel_name="python3").execute()
print("OUTPUTS " + json.dumps([cell.outputs for cell in nb.cells]))
"""

INTERRUPT_CELL = r"""
import json, os, time
from jupyter_client.manager import start_new_kernel

marker = MARKER
km, kc = start_new_kernel(kernel_name="python3")
try:
    kc.execute_interactive(
        "from ipkernel import client\nclient.MultiEngineClient().activate()",
        timeout=60,
        output_hook=lambda m: None,
    )
    kc.execute_interactive("%px import time; a = 5", timeout=60, output_hook=lambda m: None)
    msg_id = kc.execute(
        "%%px\nopen(" + repr(marker) + " + '-' + str(id), 'w').close()\ntime.sleep(60)\n"
    )
    deadline = time.monotonic() + 60
    while not all(os.path.exists(marker + '-' + str(i)) for i in (0, 1)):
        assert time.monotonic() < deadline, 'the engines never started sleeping'
        time.sleep(0.01)
    start = time.monotonic()
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == msg_id
    interrupted = time.monotonic() - start
    errors = []
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error":
            errors.append(msg["content"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    after = []
    kc.execute_interactive("%px print(a)", timeout=60, output_hook=after.append)
    print("REPORT " + json.dumps({
        "status": reply["content"]["status"],
        "ename": reply["content"].get("ename"),
        "interrupted": interrupted,
        "errors": errors,
        "after": [m["content"] for m in after if m["msg_type"] == "execute_result"],
    }))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""


def _tagged(stdout: str, tag: str):
    [line] = [line for line in stdout.splitlines() if line.startswith(tag + " ")]
    return json.loads(line[len(tag) + 1 :])


class NotebookTests(TestCase):
    timeout = 240

    def setUp(self):
        if nbclient is None:
            raise self.skipTest("ipykernel, nbclient and nbformat are needed")

    @inlineCallbacks
    def start(self) -> Cluster:
        cluster = Cluster(self, n=2)
        yield cluster.start()
        cluster.env["IPYTHONDIR"] = str(self.mktemp())
        cluster.env["JUPYTER_RUNTIME_DIR"] = str(self.mktemp())
        return cluster

    @inlineCallbacks
    def test_notebook_with_magics(self):
        """A notebook using %load_ext ipkernel, mec.activate(), %px, %%px --noblock,
        %result, a failing %px and %autopx runs in Jupyter: each cell shows what the
        terminal would."""
        cluster = yield self.start()
        outputs = _tagged(cluster.run_script(RUN_NOTEBOOK, timeout=180).stdout, "OUTPUTS")
        load, activate, px, noblock, result, failing, targeted, on, auto, off, local = outputs
        self.assertEqual((load, activate), ([], []))

        def text(cell_outputs):
            [output] = cell_outputs
            self.assertEqual(output["output_type"], "execute_result")
            return output["data"]["text/plain"]

        self.assertEqual(
            text(px), "<Results List>\n[0] In [1]: a = id * 10\n[1] In [1]: a = id * 10"
        )
        # A non-blocking cell shows its PendingResult, done or not by the time it is shown.
        self.assertIn(text(noblock), ("<PendingResult pending>", "<PendingResult ready>"))
        self.assertEqual(
            text(result),
            "<Results List>\n"
            "[0] In [2]: b = a + 1\n            print(b)\n[0] Out[2]: 1\n\n"
            "[1] In [2]: b = a + 1\n            print(b)\n[1] Out[2]: 11",
        )
        [error] = failing
        self.assertEqual(error["output_type"], "error")
        self.assertEqual(error["ename"], "CompositeError")
        self.assertEqual(
            error["traceback"][:10],
            [
                "<Results List>",
                "[0] In [3]: 1/(id - 1)",
                "[0] Out[3]: -1.0",
                "",
                "[1] Failed: ZeroDivisionError: division by zero",
                "",
                "CompositeError: one or more exceptions from call to method: execute",
                "[1:execute]: ZeroDivisionError: division by zero",
                "",
                "[1:execute]:",
            ],
        )
        self.assertIn('  File "<engine 1, In [3]>", line 1, in <module>', error["traceback"])
        self.assertEqual(error["traceback"][-1], "ZeroDivisionError: division by zero")
        self.assertEqual(text(targeted), "<Results List>\n[1] In [4]: print(b)\n[1] Out[4]: 11")
        self.assertEqual(
            on,
            [
                {
                    "output_type": "stream",
                    "name": "stdout",
                    "text": "Auto Parallel Enabled\nType %autopx to disable\n",
                }
            ],
        )
        self.assertEqual(
            text(auto),
            "<Results List>\n[0] In [4]: c = a * 2\n            c\n[0] Out[4]: 0\n\n"
            "[1] In [5]: c = a * 2\n            c\n[1] Out[5]: 20",
        )
        self.assertEqual(
            off, [{"output_type": "stream", "name": "stdout", "text": "Auto Parallel Disabled\n"}]
        )
        self.assertEqual(
            local, [{"output_type": "stream", "name": "stdout", "text": "local 2 False\n"}]
        )

    @inlineCallbacks
    def test_kernel_interrupt_interrupts_px_cell(self):
        """Interrupting the kernel (km.interrupt_kernel()) while a %%px cell runs ends
        the cell with KeyboardInterrupt at once and interrupts the engines, which keep
        their namespaces."""
        cluster = yield self.start()
        script = INTERRUPT_CELL.replace("MARKER", repr(str(cluster.dir / "asleep")))
        report = _tagged(cluster.run_script(script, timeout=180).stdout, "REPORT")
        self.assertEqual((report["status"], report["ename"]), ("error", "KeyboardInterrupt"))
        self.assertLess(report["interrupted"], 20)
        [error] = report["errors"]
        self.assertEqual(
            error["traceback"],
            ["KeyboardInterrupt: the code running on the engines was interrupted"],
        )
        [after] = report["after"]
        self.assertEqual(
            after["data"]["text/plain"],
            "<Results List>\n[0] In [3]: print(a)\n[0] Out[3]: 5\n\n"
            "[1] In [3]: print(a)\n[1] Out[3]: 5",
        )


QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"

# Runs the notebook at argv[1] with a probe cell after the one that starts the cluster;
# the probe writes {"kernel", "dir", "pids"} to argv[2]. Mode argv[3]: "all" runs every
# cell and prints the outputs of the notebook's own code cells; "kill" stops after the
# probe and SIGKILLs the kernel.
RUN_QUICKSTART = r"""
import json, os, signal, sys
import nbformat
from nbclient import NotebookClient

notebook, report, mode = sys.argv[1:4]
nb = nbformat.read(notebook, as_version=4)
[start] = [i for i, cell in enumerate(nb.cells) if "cluster.start()" in cell.source]
nb.cells.insert(start + 1, nbformat.v4.new_code_cell(
    "def _probe():\n"
    "    import json, os\n"
    "    from ipkernel.cli.ipcluster.pidfile import read_pid_file\n"
    "    record = read_pid_file(cluster.ipkernel_dir / 'ipcluster.pid')\n"
    "    pids = [record.pid, *(pid for _, pid in record.children)]\n"
    f"    with open({report!r}, 'w') as f:\n"
    "        json.dump(\n"
    "            {'kernel': os.getpid(), 'dir': str(cluster.ipkernel_dir), 'pids': pids}, f\n"
    "        )\n"
    "_probe()\n"
    "del _probe"
))
client = NotebookClient(nb, timeout=120, kernel_name="python3")
if mode == "all":
    client.execute()
    del nb.cells[start + 1]
    print("OUTPUTS " + json.dumps([c.outputs for c in nb.cells if c.cell_type == "code"]))
else:
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells[: start + 2]):
            client.execute_cell(cell, index)
        with open(report) as f:
            os.kill(json.load(f)["kernel"], signal.SIGKILL)
"""

# What the quickstart needs besides nbclient: its imports, and ipywidgets for the bar.
QUICKSTART_NEEDS = ("ipykernel", "nbclient", "nbformat", "IPython", "tqdm", "ipywidgets", "joblib")


class QuickstartNotebookTests(TestCase):
    """``examples/quickstart.ipynb`` runs in a real Jupyter kernel and leaves nothing behind."""

    timeout = 240

    def setUp(self):
        missing = [name for name in QUICKSTART_NEEDS if importlib.util.find_spec(name) is None]
        if missing:
            raise self.skipTest(f"the quickstart notebook needs {', '.join(missing)}")
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        self.report = directory / "probe.json"
        self.env = child_env(directory / "unused")  # the notebook's Cluster makes its own
        self.env["IPYTHONDIR"] = str(directory / "ipython")
        self.env["JUPYTER_RUNTIME_DIR"] = str(directory / "runtime")
        self.env.pop("IPKERNEL_PROGRESS", None)
        self.addCleanup(self.stop_leftovers)

    def run_quickstart(self, mode: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-c", RUN_QUICKSTART, str(QUICKSTART), str(self.report), mode],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if result.returncode != 0:
            self.fail(
                f"the notebook failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def probe(self) -> dict:
        return json.loads(self.report.read_text())

    def assert_gone(self, pids: list[int], what: str) -> None:
        wait_for(lambda: not any(map(process_alive, pids)), f"{what} {pids} to end")

    def stop_leftovers(self) -> None:
        """Kill the kernel if it still runs (its Cluster's lifeline then stops the
        cluster), check that every process of the cluster's pid file ends, and kill any
        that does not; remove the cluster's directory, which a killed kernel leaves."""
        if not self.report.exists():
            return
        probe = self.probe()
        try:
            cmdline = Path(f"/proc/{probe['kernel']}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"ipykernel" in cmdline:
            os.kill(probe["kernel"], signal.SIGKILL)
        try:
            self.assert_gone(probe["pids"], "the notebook cluster's processes")
        finally:
            for pid in probe["pids"]:
                kill_if_ours(pid)
            shutil.rmtree(probe["dir"], ignore_errors=True)

    def test_quickstart_notebook(self):
        """Every code cell of the quickstart runs without error and shows what it should:
        the engine ids, %px and %%px output labelled by engine id, the map's result after
        a progress bar that is a widget, the executor's and joblib's results; its last
        cell stops the cluster: every process listed in the cluster's pid file has ended,
        and its temporary directory is gone."""
        stdout = self.run_quickstart("all").stdout
        outputs = _tagged(stdout, "OUTPUTS")
        for cell_outputs in outputs:
            self.assertNotIn("error", [output["output_type"] for output in cell_outputs])
        start, connect, px, cell_px, mapped, executor, parallel, stop = outputs

        def result(cell_outputs):
            [value] = [o for o in cell_outputs if o["output_type"] == "execute_result"]
            return value["data"]["text/plain"]

        self.assertEqual(result(start), "[0, 1]")
        self.assertEqual(connect, [])
        self.assertEqual(
            result(px), "<Results List>\n[0] In [1]: a = id * 10\n[1] In [1]: a = id * 10"
        )
        self.assertEqual(
            result(cell_px),
            "<Results List>\n"
            "[0] In [2]: b = a + 1\n            print(b)\n[0] Out[2]: 1\n\n"
            "[1] In [2]: b = a + 1\n            print(b)\n[1] Out[2]: 11",
        )
        self.assertEqual(result(mapped), str(sum(x * x for x in range(80))))
        bars = [
            o
            for o in mapped
            if o["output_type"] == "display_data"
            and "application/vnd.jupyter.widget-view+json" in o["data"]
        ]
        self.assertEqual(len(bars), 1, mapped)
        self.assertTrue(bars[0]["data"]["text/plain"].startswith("map:"))
        self.assertEqual(result(executor), str([2**n for n in range(10)]))
        self.assertEqual(result(parallel), str([n**3 for n in range(10)]))
        self.assertEqual(result(stop), "False")
        probe = self.probe()
        self.assertEqual(len(probe["pids"]), 5)  # ipcluster, controller, forkengines, 2 engines
        self.assert_gone(probe["pids"], "the notebook cluster's processes")
        self.assertFalse(Path(probe["dir"]).exists())

    def test_killed_kernel_stops_cluster(self):
        """SIGKILL of the kernel that started the quickstart's cluster ends every process
        listed in the cluster's pid file (the Cluster's lifeline)."""
        self.run_quickstart("kill")
        probe = self.probe()
        self.assertFalse(process_alive(probe["kernel"]))
        self.assertEqual(len(probe["pids"]), 5)
        self.assert_gone(probe["pids"], "the notebook cluster's processes")
