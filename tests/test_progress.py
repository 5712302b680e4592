"""Progress bars of waits that last (:mod:`ipkernel.client.progress`).

The unit tests drive the waits with plain futures and a fake bar; the integration test
runs the blocking clients in child Pythons whose stderr is a pseudo-terminal, or a pipe.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import importlib.util
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import time

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.client import progress
from tests.cluster import Cluster


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class _Bar:
    """Records what a wait does with its bar."""

    made: list[_Bar] = []

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.n, self.closed = label, total, 0, False
        _Bar.made.append(self)

    def update(self, n: int) -> None:
        self.n += n

    def reset(self, total: int | None = None) -> None:
        self.n, self.total = 0, total

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _set_later(future: concurrent.futures.Future, delay: float, value=None) -> None:
    threading.Timer(delay, future.set_result, (value,)).start()


class WantedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "IPKERNEL_PROGRESS"})
        self.patch(progress, "_in_jupyter", lambda: False)

    def test_terminal_only(self):
        """A bar may show when stderr is a terminal, never when it is a pipe or a file
        (or gone), outside Jupyter."""
        self.patch(sys, "stderr", _Stream(True))
        self.assertTrue(progress.wanted())
        self.patch(sys, "stderr", _Stream(False))
        self.assertFalse(progress.wanted())
        self.patch(sys, "stderr", None)
        self.assertFalse(progress.wanted())

    def test_jupyter_without_a_terminal(self):
        """In a Jupyter kernel a bar may show although stderr is no terminal."""
        self.patch(sys, "stderr", _Stream(False))
        self.patch(progress, "_in_jupyter", lambda: True)
        self.assertTrue(progress.wanted())

    def test_turned_off(self):
        """progress=False on the call, or IPKERNEL_PROGRESS=0 (false, no, off), turns
        bars off, even on a terminal."""
        self.patch(sys, "stderr", _Stream(True))
        self.assertFalse(progress.wanted(False))
        for value in ("0", "false", "No", " off "):
            os.environ["IPKERNEL_PROGRESS"] = value
            self.assertFalse(progress.wanted(), value)
        os.environ["IPKERNEL_PROGRESS"] = "1"
        self.assertTrue(progress.wanted())


class WaitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(progress, "wanted", lambda show=True: show)
        self.patch(progress, "DELAY", 0.2)
        self.patch(progress, "REFRESH", 0.01)
        _Bar.made = []
        self.patch(progress, "_new_bar", lambda label, total, unit: _Bar(label, total))

    def test_fast_wait_shows_nothing(self):
        """A wait that ends before DELAY makes no bar."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        _set_later(future, 0.01, "x")
        progress.wait_for(future, "result")
        progress.wait_all([future], "barrier")
        self.assertEqual(_Bar.made, [])

    def test_slow_wait_counts(self):
        """A wait that lasts shows a bar counting what is done, brought to its total
        and closed when the wait ends."""
        futures = [concurrent.futures.Future() for _ in range(3)]
        for i, future in enumerate(futures):
            _set_later(future, 0.25 + 0.05 * i)
        progress.wait_all(futures, "barrier")
        [bar] = _Bar.made
        self.assertEqual((bar.label, bar.total, bar.n, bar.closed), ("barrier", 3, 3, True))

    def test_many_futures_one_timed_wait_each_time(self):
        """Waiting for many futures with a bar waits on one at a time (so a redraw does
        not cost one waiter per future), counts those done in order, out-of-order
        completions included, and ends at the total."""
        futures = [concurrent.futures.Future() for _ in range(500)]
        for future in futures[1:]:
            future.set_result(None)
        _set_later(futures[0], 0.3)
        sizes: list[int] = []
        wait = concurrent.futures.wait

        def recorded(fs, timeout=None, **kwargs):
            fs = list(fs)
            sizes.append(len(fs))
            return wait(fs, timeout, **kwargs)

        self.patch(concurrent.futures, "wait", recorded)
        progress.wait_all(futures, "barrier")
        [bar] = _Bar.made
        self.assertEqual((bar.total, bar.n, bar.closed), (500, 500, True))
        self.assertEqual(set(sizes), {1})

    def test_failed_wait_is_not_complete(self):
        """A call that fails leaves its bar short of its total."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        threading.Timer(0.25, future.set_exception, (KeyError("k"),)).start()
        progress.wait_for(future, "result")
        [bar] = _Bar.made
        self.assertEqual((bar.n, bar.total, bar.closed), (0, 1, True))

    def test_off_shows_nothing(self):
        """progress=False: a slow wait makes no bar."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        _set_later(future, 0.25)
        progress.wait_for(future, "result", show=False)
        self.assertEqual(_Bar.made, [])


class _Reactor:
    """Runs what is handed to the reactor thread at once, in the caller's thread."""

    def callFromThread(self, f, *args) -> None:
        f(*args)


class _Bridge:
    """Starts a call that completes after ``delay`` seconds, in another thread."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.cancelled = False
        self.reactor = _Reactor()

    def start(self, fn, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        threading.Timer(self.delay, lambda: future.set_result(fn(*args, **kwargs))).start()
        return future, lambda: setattr(self, "cancelled", True)


class TaskCounterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[tuple[list[int], Deferred]] = []
        self.barriers: list[tuple[list[int], Deferred]] = []

    def call(self, group: list[int]) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((group, d))
        return d

    def barrier(self, group: list[int]) -> Deferred:
        d: Deferred = Deferred()
        self.barriers.append((group, d))
        return d

    def test_many_tasks_counted_by_the_wait_itself(self):
        """A wait over more than SPLIT_ABOVE tasks is asked for in at most COUNT_GROUPS
        groups of them, in order, from its start; each answer counts its group (and
        passes through); nothing else is asked, shown bar or not."""
        taskids = list(range(10_000))
        counter = progress.TaskCounter(_Reactor())
        calls = counter.wait(taskids, self.call, self.barrier)
        self.assertEqual(counter.total, 10_000)
        self.assertLessEqual(len(self.calls), progress.COUNT_GROUPS)
        self.assertEqual([i for group, _ in self.calls for i in group], taskids)
        counter.show()
        self.assertEqual((counter.done, self.barriers), (0, []))
        group, d = self.calls[0]
        d.callback("answer")
        self.assertEqual(self.successResultOf(calls[0]), "answer")
        self.assertEqual(counter.done, len(group))
        self.calls[1][1].errback(KeyError("gone"))  # a failed group counts nothing
        self.failureResultOf(calls[1], KeyError)
        self.assertEqual(counter.done, len(group))

    def test_group_size_limit(self):
        """The groups of a counted wait hold at most ``most`` tasks."""
        counter = progress.TaskCounter(_Reactor())
        counter.wait(list(range(3000)), self.call, self.barrier, most=50)
        self.assertEqual(max(len(group) for group, _ in self.calls), 50)
        self.assertEqual(sum(len(group) for group, _ in self.calls), 3000)

    def test_few_tasks_counted_only_once_shown(self):
        """A wait over few tasks is asked for whole; once its bar shows (not before), at
        most COUNT_GROUPS barriers over groups of its tasks count them."""
        counter = progress.TaskCounter(_Reactor())
        counter.wait(list(range(100)), self.call, self.barrier)
        self.assertEqual([group for group, _ in self.calls], [list(range(100))])
        self.assertEqual((counter.done, counter.total, self.barriers), (0, 100, []))
        counter.show()
        self.assertLessEqual(len(self.barriers), progress.COUNT_GROUPS)
        self.assertEqual(sorted(i for group, _ in self.barriers for i in group), list(range(100)))
        group, d = self.barriers[0]
        d.callback(None)
        self.assertEqual(counter.done, len(group))
        self.barriers[1][1].errback(KeyError("gone"))  # a failed group counts nothing
        self.assertEqual(counter.done, len(group))

    def test_tasks_known_after_the_bar_shows(self):
        """Tasks a wait learns after its bar shows (a map's chunks) are counted then."""
        counter = progress.TaskCounter(_Reactor())
        counter.show()
        self.assertEqual(counter.total, None)
        counter.wait([7, 8, 9], self.call, self.barrier)
        self.assertEqual(counter.total, 3)
        for _, d in self.barriers:
            d.callback(None)
        self.assertEqual(counter.done, 3)

    def test_call_with_progress_counts_the_tasks(self):
        """A call that lasts gets a bar whose length is learnt from the counter given to
        it as ``count`` and which ends at its total; the call's result is returned."""
        self.patch(progress, "wanted", lambda show=True: show)
        self.patch(progress, "DELAY", 0.05)
        self.patch(progress, "REFRESH", 0.01)
        _Bar.made = []
        self.patch(progress, "_new_bar", lambda label, total, unit: _Bar(label, total))

        def work(count=None):
            count.wait([1, 2, 3], lambda group: succeed(group), lambda group: succeed(None))
            return "done"

        result = progress.call_with_progress(_Bridge(0.2), work, label="map", counted=True)
        self.assertEqual(result, "done")
        [bar] = _Bar.made
        self.assertEqual((bar.label, bar.total, bar.n, bar.closed), ("map", 3, 3, True))

    def test_ctrl_c_cancels_the_call(self):
        """KeyboardInterrupt while a call with a bar waits cancels the call, as Ctrl-C
        in a plain blocking call does, and propagates."""
        self.patch(progress, "wanted", lambda show=True: show)

        def interrupted(future):
            def finished(timeout):
                raise KeyboardInterrupt

            return finished

        self.patch(progress, "_future_finished", interrupted)
        bridge = _Bridge(0.01)
        self.assertRaises(
            KeyboardInterrupt, progress.call_with_progress, bridge, abs, (-1,), label="x"
        )
        self.assertTrue(bridge.cancelled)


def _restore_module(name: str, saved: object) -> None:
    """Put back ``sys.modules[name]`` as it was (absent if ``saved`` is ``None``): a
    module blocked for one test must not stay blocked."""
    if saved is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = saved  # type: ignore[assignment]


class OptionalPackagesTests(SynchronousTestCase):
    def test_no_tqdm_no_bar_no_error(self):
        """Without tqdm a slow wait shows nothing and raises nothing."""
        self.addCleanup(_restore_module, "tqdm.auto", sys.modules.get("tqdm.auto"))
        sys.modules["tqdm.auto"] = None  # type: ignore[assignment]  # import fails
        self.assertIsNone(progress._new_bar("barrier", 3, "task"))

    def test_jupyter_without_ipywidgets(self):
        """In Jupyter without ipywidgets there is no bar (tqdm would fall back to text
        and warn)."""
        find_spec = importlib.util.find_spec
        self.patch(progress, "_in_jupyter", lambda: True)
        self.patch(
            importlib.util,
            "find_spec",
            lambda name, *args: None if name == "ipywidgets" else find_spec(name, *args),
        )
        self.assertIsNone(progress._new_bar("barrier", 3, "task"))


PROGRESS_SCRIPT = r"""
import sys
from ipkernel import client

kw = {"progress": False} if sys.argv[1] == "off" else {}
short = sys.argv[2] == "short"
tc = client.TaskClient()
mec = client.MultiEngineClient()
mec.scatter("parts", [0, 1])

def slow(seconds):
    import time
    time.sleep(seconds)
    return seconds

# Two engines: four tasks of 0.7 s take 1.4 s.
tids = [tc.run(client.MapTask(slow, (0.7,))) for _ in range(4)]
tc.barrier(tids, **kw)
if not short:
    # More tasks than progress.SPLIT_ABOVE: the barrier is asked for in groups, which
    # count them. The last two hold the engines for 1.2 s: submitted last, they still
    # run when the barrier starts however long the submitting took.
    tids = [tc.run(client.MapTask(slow, (1.2 if i >= 1498 else 0,))) for i in range(1500)]
    tc.barrier(tids, **kw)
    assert tc.map(slow, [0.7] * 4, chunksize=1, **kw) == [0.7] * 4
    tid = tc.run(client.MapTask(slow, (1.3,)))
    assert tc.get_task_result(tid, block=True, **kw).result == 1.3
    mec.barrier([mec.execute("import time; time.sleep(1.3)", block=False)], **kw)
pr = mec.execute("import time; time.sleep(1.3)", block=False)
assert len(pr.get_result(**kw)) == 2
mec.execute("time.sleep(1.3)", block=False)
assert mec.gather("parts", **kw) == [0, 1]
print("PROGRESS OK")
"""

FULL_LABELS = ["barrier", "barrier", "map", "get_task_result", "barrier", "result", "gather"]


def _start(cluster: Cluster, mode: str, length: str, env: dict, terminal: bool):
    """Start the script; its stderr is a pseudo-terminal (100 columns) or a pipe."""
    master = slave = None
    if terminal:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRESS_SCRIPT, mode, length],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave if terminal else subprocess.PIPE,
    )
    if slave is not None:
        os.close(slave)
    return proc, master


def _finish(proc: subprocess.Popen, master: int | None, deadline: float) -> tuple[str, str]:
    """Read the child's stdout and stderr to their ends; fail past ``deadline``."""
    if master is None:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        return out.decode(), err.decode()
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                raise AssertionError("the child did not finish in time")
            try:
                data = os.read(master, 65536)
            except OSError:
                break  # EIO: the child closed the terminal
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return out.decode(), b"".join(chunks).decode(errors="replace")


def _final_lines(text: str) -> list[str]:
    """What stays on the screen: each line as last redrawn (after its last ``\\r``)."""
    lines = text.replace("\r\n", "\n").split("\n")
    return [line.split("\r")[-1].strip() for line in lines if line.split("\r")[-1].strip()]


class ProgressBarTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        if importlib.util.find_spec("tqdm") is None:
            self.skipTest("tqdm is not installed (pip install ipkernel[progress])")

    @inlineCallbacks
    def test_bars_on_a_terminal_only(self):
        """Waits of more than a second (task barriers over few tasks and over many,
        task map, get_task_result, MultiEngine barrier, a pending result's get, gather)
        each show a bar when stderr is a terminal, task waits counting their tasks to
        the end; none shows in a pipe, with progress=False, or with IPKERNEL_PROGRESS=0."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        env = {k: v for k, v in cluster.env.items() if k != "IPKERNEL_PROGRESS"}
        deadline = time.monotonic() + 120
        proc, master = _start(cluster, "default", "full", env, terminal=True)
        out, err = _finish(proc, master, deadline)
        self.assertEqual(proc.returncode, 0, out + err)
        self.assertIn("PROGRESS OK", out)
        lines = _final_lines(err)
        self.assertEqual([line.split(":")[0] for line in lines], FULL_LABELS, err)
        self.assertIn("4/4", lines[0])  # the barrier counted its four tasks
        self.assertIn("100%", lines[0])
        self.assertIn("1500/1500", lines[1])  # and this one its 1,500, in groups
        self.assertIn("4/4", lines[2])  # the map its four chunks

        quiet = [
            _start(cluster, "default", "short", env, terminal=False),
            _start(cluster, "off", "short", env, terminal=True),
            _start(cluster, "default", "short", dict(env, IPKERNEL_PROGRESS="0"), True),
        ]
        for proc, master in quiet:
            out, err = _finish(proc, master, deadline)
            self.assertEqual(proc.returncode, 0, out + err)
            self.assertIn("PROGRESS OK", out)
            self.assertEqual(err.strip(), "", err)
