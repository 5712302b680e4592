"""The ``ipkernel`` joblib backend: ``Parallel`` batches run as tasks on real engines.

joblib is an optional dependency (in the ``test`` extra); without it these tests skip.
"""

from __future__ import annotations

import importlib.util

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.cluster import Cluster

JOBLIB_SCRIPT = r"""
import inspect, os, tempfile
import joblib
from joblib import Parallel, delayed
import ipkernel.joblib
from ipkernel import client

GATE = os.path.join(tempfile.mkdtemp(), "gate")

def gated(value):
    # Runs until the script opens the gate (a file).
    import os, time
    end = time.monotonic() + 60
    while not os.path.exists(GATE):
        if time.monotonic() > end:
            raise TimeoutError("the gate was not opened")
        time.sleep(0.01)
    return value

def fail_at(x):
    if x == 5:
        raise ValueError(f"item {x}")
    return x

with joblib.parallel_config(backend="ipkernel"):
    assert Parallel()(delayed(pow)(i, 2) for i in range(100)) == [i * i for i in range(100)]

    # return_as='generator': values in order, each as soon as it is there.
    pids = Parallel(return_as="generator")(delayed(os.getpid)() for _ in range(20))
    assert inspect.isgenerator(pids)
    pids = set(pids)
    assert os.getpid() not in pids, "ran in the client, not on the engines"
    values = Parallel(return_as="generator", batch_size=1)(
        delayed(abs)(0) if i < 2 else delayed(gated)(2) for i in range(3)
    )
    assert next(values) == 0  # while the last item still runs
    open(GATE, "w").close()
    assert list(values) == [0, 2]

    # An item's exception is raised by Parallel.
    try:
        Parallel()(delayed(fail_at)(i) for i in range(10))
    except ValueError as exc:
        assert "item 5" in str(exc)
    else:
        raise AssertionError("no ValueError")

# A client given to register(), or as a backend argument.
tc = client.TaskClient()
ipkernel.joblib.register(tc=tc, name="ipkernel-mine")
with joblib.parallel_config(backend="ipkernel-mine", n_jobs=2):
    assert Parallel()(delayed(abs)(-i) for i in range(10)) == list(range(10))
with joblib.parallel_config(backend="ipkernel", tc=tc):
    unordered = Parallel(return_as="generator_unordered")(delayed(abs)(-i) for i in range(5))
    assert sorted(unordered) == list(range(5))
print("JOBLIB OK")
"""


class JoblibBackendTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if importlib.util.find_spec("joblib") is None:
            self.skipTest("joblib is not installed (pip install ipkernel[joblib])")

    @inlineCallbacks
    def test_parallel_on_the_engines(self):
        """With parallel_config(backend='ipkernel'), Parallel runs on the engines and
        returns the values in order; return_as='generator' yields each as it arrives;
        an item's exception is raised; register(tc=...) and the tc backend argument
        choose the client."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        result = cluster.run_script(JOBLIB_SCRIPT)
        self.assertIn("JOBLIB OK", result.stdout)
