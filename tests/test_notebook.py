"""The parallel magics in a real Jupyter kernel (ipykernel), against a real cluster.

A child Python runs the notebook with nbclient (or drives the kernel with
jupyter_client) and prints what came back as JSON; the kernel it starts inherits the
cluster's ``IPKERNEL_DIR``.
"""

from __future__ import annotations

import json

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.cluster import Cluster

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
