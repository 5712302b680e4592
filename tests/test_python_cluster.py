"""``ipkernel.Cluster``: a cluster started, used and stopped from Python (SPEC §10).

Whatever uses the synchronous client, or must die, runs in a child Python (trial needs the
reactor in this process's main thread): a script that starts a Cluster and prints, as
JSON lines, the PIDs listed in its pid file and what it saw. The test then checks by PID
that every one of them has ended, and kills in its cleanup any that still runs ipkernel
code. Scripts run without a terminal (stdin closed), as in a notebook kernel.
"""

from __future__ import annotations

import gc
import json
import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase, TestCase

import ipkernel
from ipkernel import Cluster, ClusterError
from ipkernel.cli.ipcluster.pidfile import PID_FILE
from ipkernel.cli.processes import process_alive
from ipkernel.cluster.keywords import ipcluster_args
from tests.cluster import child_env, stop_process
from tests.commands import CLIProcess, kill_if_ours, wait_for

DEADLINE = 30.0

PREAMBLE = """\
import gc, json, os, sys, threading
from pathlib import Path
from ipkernel import Cluster, ClusterError, client
from ipkernel.cli.ipcluster.pidfile import read_pid_file
from ipkernel.cli.processes import process_alive

def pids(directory):
    record = read_pid_file(Path(directory) / "ipcluster.pid")
    return [record.pid, *(pid for _, pid in record.children)]

def say(**fields):
    print(json.dumps(fields), flush=True)
"""


def cluster_processes(directory: Path) -> list[int]:
    """PIDs of the live processes running ipkernel code with ``IPKERNEL_DIR=directory``."""
    marker = f"IPKERNEL_DIR={directory}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"ipkernel" in cmdline and marker in environ and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class Script:
    """A Python script run as a child; its JSON lines read under a deadline."""

    def __init__(self, testcase, code: str, env: dict) -> None:
        self.testcase = testcase
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PREAMBLE + textwrap.dedent(code)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.buffer = b""
        self.pids: set[int] = set()
        self.directories: set[Path] = set()
        testcase.addCleanup(self.cleanup)

    def line(self, deadline: float = DEADLINE) -> dict:
        """The next JSON line; fails the test (with stderr) if none comes in time."""
        end = time.monotonic() + deadline
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = end - time.monotonic()
            ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                self.proc.kill()
                self.testcase.fail(
                    f"no line from the script; stdout: {self.buffer.decode()!r}; "
                    f"stderr: {self.proc.stderr.read().decode()}"
                )
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n", 1)
        fields = json.loads(raw)
        self.pids.update(fields.get("pids", []))
        if "dir" in fields:
            self.directories.add(Path(fields["dir"]))
        return fields

    def finish(self) -> None:
        """Wait for the script to exit 0; fails the test with its stderr otherwise."""
        _, err = self.proc.communicate(timeout=DEADLINE)
        self.testcase.assertEqual(self.proc.returncode, 0, err.decode())

    def cleanup(self) -> None:
        stop_process(self.proc)
        for directory in self.directories:
            self.pids.update(cluster_processes(directory))
        for pid in self.pids:
            kill_if_ours(pid)


class ClusterProcessTests(TestCase):
    timeout = 120

    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        self.env = child_env(self.dir)

    def script(self, code: str) -> Script:
        return Script(self, code, self.env)

    def assert_gone(self, pids, what: str = "the cluster's processes") -> None:
        """Every one of ``pids`` ends within the deadline."""
        pids = list(pids)
        self.assertTrue(pids)
        wait_for(lambda: not any(map(process_alive, pids)), f"{what} {pids} to end")

    def test_with_block(self):
        """`with Cluster(n=2)` gives working clients and engines [0, 1]; leaving the block ends
        every process listed in its pid file and removes its temporary directory."""
        script = self.script(
            """
            with Cluster(n=2) as c:
                say(pids=pids(c.ipkernel_dir), dir=str(c.ipkernel_dir))
                mec = c.multiengine_client()
                mec.execute("a = 1")
                tc = c.task_client()
                tid = tc.run(client.StringTask("b = 2", pull="b"))
                say(ids=c.engine_ids, a=mec.pull("a"), b=tc.get_task_result(tid, block=True).ns.b,
                    keys=[c.key_file(role).exists() for role in ("engine", "mec", "tc")])
                listed = pids(c.ipkernel_dir)
            say(alive=[pid for pid in listed if process_alive(pid)],
                dir_left=c.ipkernel_dir.exists(), running=c.running)
            """
        )
        first = script.line()
        self.assertEqual(len(first["pids"]), 5)  # ipcluster, controller, forkengines, 2 engines
        self.assertEqual(
            script.line(), {"ids": [0, 1], "a": [1, 1], "b": 2, "keys": [True, True, True]}
        )
        self.assertEqual(script.line(), {"alive": [], "dir_left": False, "running": False})
        script.finish()
        self.assert_gone(first["pids"])
        self.assertEqual(cluster_processes(Path(first["dir"])), [])

    def test_task_store_outlives_the_cluster(self):
        """``Cluster(db=PATH)`` keeps task records in that SQLite file: a later cluster on
        the same database returns a result by id to a new Task client, and gives new tasks
        new ids."""
        db = self.dir / "tasks.db"
        script = self.script(
            f"""
            with Cluster(n=1, db={str(db)!r}) as c:
                say(pids=pids(c.ipkernel_dir), dir=str(c.ipkernel_dir))
                tc = c.task_client()
                tid = tc.run(client.StringTask("b = 2", pull="b"))
                tc.barrier(tid)
            with Cluster(n=1, db={str(db)!r}) as c:
                say(pids=pids(c.ipkernel_dir), dir=str(c.ipkernel_dir))
                tc = c.task_client()
                new = tc.run(client.StringTask("b = 3", pull="b"))
                say(b=tc.get_task_result(tid).ns.b, new_id=new > tid)
            """
        )
        first, second = script.line(), script.line()
        self.assertEqual(script.line(), {"b": 2, "new_id": True})
        script.finish()
        self.assertTrue(db.exists())
        self.assert_gone(first["pids"] + second["pids"])

    def test_engines_that_fail(self):
        """Engines that cannot start make start() raise a ClusterError naming the engine
        process, how it ended and its own error; nothing is left running."""
        not_a_dir = self.dir / "file"
        not_a_dir.write_text("")
        script = self.script(
            f"""
            args = ["--log-dir={not_a_dir / "log"}"]
            c = Cluster(n=2, ipkernel_dir={str(self.dir)!r}, engine_args=args)
            try:
                c.start(timeout=20)
            except Exception as exc:
                say(error=type(exc).__name__, message=str(exc), running=c.running)
            """
        )
        result = script.line()
        script.finish()
        self.assertEqual(result["error"], "ClusterError")
        self.assertFalse(result["running"])
        message = result["message"]
        self.assertIn("the cluster did not start", message)
        self.assertRegex(message, r"an engine process \((forkengines|engine)\) \(pid \d+\) exited")
        self.assertIn("its last output:", message)
        self.assertIn(f"NotADirectoryError: [Errno 20] Not a directory: '{not_a_dir}", message)
        self.assertEqual(cluster_processes(self.dir), [])
        self.assertFalse((self.dir / PID_FILE).exists())

    def test_timeout_too_short(self):
        """start(timeout=) shorter than the controller needs raises a ClusterError saying
        what was missing and which timeout passed; nothing is left running, and the
        temporary directory is removed (the message says so)."""
        script = self.script(
            """
            c = Cluster(n=1)
            say(dir=str(c.ipkernel_dir))
            try:
                c.start(timeout=0.01)
            except ClusterError as exc:
                say(message=str(exc), dir_left=c.ipkernel_dir.exists())
            """
        )
        directory = Path(script.line()["dir"])
        result = script.line()
        script.finish()
        # What was missing after 0.01 s depends on how far the controller got.
        self.assertRegex(
            result["message"],
            "the controller wrote no key file|cannot connect to the controller|"
            r"only 0 of 1 engines registered",
        )
        self.assertIn("within 0.01 s", result["message"])
        self.assertIn("now removed; pass ipkernel_dir= to keep them", result["message"])
        self.assertFalse(result["dir_left"])
        self.assertEqual(cluster_processes(directory), [])

    def test_killed_parent(self):
        """SIGKILL of the Python process that started a Cluster (a killed notebook kernel)
        ends every process the cluster runs."""
        script = self.script(
            f"""
            c = Cluster(n=2, ipkernel_dir={str(self.dir)!r}).start()
            say(pids=pids(c.ipkernel_dir))
            threading.Event().wait()
            """
        )
        listed = script.line()["pids"]
        self.assertTrue(all(map(process_alive, listed)))
        script.proc.kill()
        script.proc.wait()
        self.assert_gone(listed)
        self.assertEqual(cluster_processes(self.dir), [])

    def test_garbage_collection(self):
        """A started Cluster that is garbage-collected stops everything it started."""
        script = self.script(
            f"""
            c = Cluster(n=1, ipkernel_dir={str(self.dir)!r})
            c.start()
            listed = pids(c.ipkernel_dir)
            say(pids=listed)
            del c
            gc.collect()
            say(alive=[pid for pid in listed if process_alive(pid)])
            """
        )
        listed = script.line()["pids"]
        self.assertEqual(script.line(), {"alive": []})
        script.finish()
        self.assert_gone(listed)

    def test_interpreter_exit(self):
        """A Cluster still running when its program ends is stopped, its temporary directory
        removed; meanwhile the program got no reactor and no signal handler of it."""
        script = self.script(
            """
            import signal
            names = ("SIGINT", "SIGTERM", "SIGCHLD")
            before = [signal.getsignal(getattr(signal, name)) for name in names]
            c = Cluster(n=1).start()
            after = [signal.getsignal(getattr(signal, name)) for name in names]
            say(pids=pids(c.ipkernel_dir), dir=str(c.ipkernel_dir), same_handlers=before == after,
                reactor="twisted.internet.reactor" in sys.modules)
            """
        )
        first = script.line()
        script.finish()
        self.assertTrue(first["same_handlers"])
        self.assertFalse(first["reactor"])
        self.assert_gone(first["pids"])
        self.assertFalse(Path(first["dir"]).exists())

    def test_from_dir(self):
        """Cluster.from_dir attaches to a cluster the ipcluster command runs, sees its
        engines, survives being dropped, and stop() stops that ipcluster and all it runs."""
        ipcluster = CLIProcess(
            self, [sys.executable, "-m", "ipkernel.cli.ipcluster", "-n", "2"], self.env
        )
        ipcluster.read_until("Connect with:")
        script = self.script(
            f"""
            dropped = Cluster.from_dir({str(self.dir)!r})
            del dropped
            gc.collect()
            c = Cluster.from_dir({str(self.dir)!r})
            say(pids=pids(c.ipkernel_dir), ids=c.engine_ids)
            c.stop()
            say(stopped=True)
            """
        )
        first = script.line()
        self.assertEqual(first["ids"], [0, 1])
        self.assertEqual(first["pids"][0], ipcluster.proc.pid)
        ipcluster.known_pids.update(first["pids"])
        self.assertEqual(script.line(), {"stopped": True})
        script.finish()
        code, _, err = ipcluster.wait()
        self.assertEqual(code, 0, err)
        self.assert_gone(first["pids"])
        self.assertFalse((self.dir / PID_FILE).exists())


class ClusterOptionTests(SynchronousTestCase):
    """What a Cluster accepts and refuses before it starts anything."""

    def test_unknown_option(self):
        """An unknown keyword raises TypeError naming it and every valid option."""
        with self.assertRaises(TypeError) as ctx:
            Cluster(n=1, bogus=1, reuse_keys=True)
        message = str(ctx.exception)
        self.assertIn("unknown option bogus;", message)
        for name in ("ip", "location", "db", "reuse_keys", "engine_args", "hostfile", "timeout"):
            self.assertIn(name, message)
        self.assertNotIn("lifeline", message)

    def test_bad_values(self):
        """A value ipcluster refuses raises ValueError with its message; a value of the wrong
        kind TypeError."""
        for kwargs, error, words in [
            ({"n": 0}, ValueError, "must be a positive integer"),
            ({"launcher": "nope"}, ValueError, "--launcher must be one of"),
            ({"timeout": -1}, ValueError, "positive number of seconds"),
            ({"launcher": "ssh"}, ValueError, "needs --hostfile"),
            ({"engine_args": "--property=a=1"}, TypeError, "list of strings"),
            ({"reuse_keys": "yes"}, TypeError, "True or False"),
        ]:
            with self.assertRaises(error) as ctx:
                Cluster(**kwargs)
            self.assertIn(words, str(ctx.exception))

    def test_options_become_ipcluster_arguments(self):
        """Keywords become ipcluster start's options (None: left out, False: flag not given);
        a Cluster's directory and key files."""
        directory = Path(self.mktemp()).absolute()
        cluster = Cluster(n=3, ipkernel_dir=directory, ip="127.0.0.1")
        self.assertEqual(
            ipcluster_args(
                {
                    "n": 3,
                    "launcher": "local",
                    "reuse_keys": True,
                    "exec_engines": False,
                    "engine_args": ["--property=gpu=1"],
                    "db": directory / "tasks.db",
                    "location": None,
                }
            ),
            [
                "-n",
                "3",
                "--launcher=local",
                "--reuse-keys",
                "--engine-arg=--property=gpu=1",
                f"--db={directory / 'tasks.db'}",
            ],
        )
        self.assertEqual(cluster.ipkernel_dir, directory)
        self.assertEqual(cluster.key_file("mec"), directory / "security" / "ipcontroller-mec.furl")
        self.assertEqual(cluster.key_file("tc").name, "ipcontroller-tc.furl")
        self.assertRaises(ValueError, cluster.key_file, "controller")
        self.assertFalse(cluster.running)
        self.assertRaises(ClusterError, cluster.multiengine_client)
        cluster.stop()
        self.assertFalse(directory.exists())  # never created: it is not the Cluster's to make

    def test_temporary_directory(self):
        """By default the state directory is a fresh temporary one, removed with the Cluster."""
        cluster = Cluster(n=1)
        directory = cluster.ipkernel_dir
        self.assertTrue(directory.is_dir())
        self.assertEqual(list(directory.iterdir()), [])
        del cluster
        gc.collect()
        self.assertFalse(directory.exists())

    def test_from_dir_without_ipcluster(self):
        """from_dir says when no ipcluster runs there: no pid file, or a stale one."""
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        with self.assertRaises(ClusterError) as ctx:
            Cluster.from_dir(directory)
        self.assertIn(f"no {directory / PID_FILE}", str(ctx.exception))
        (directory / PID_FILE).write_text(f"{2**22 + 12345}\n")  # beyond pid_max
        with self.assertRaises(ClusterError) as ctx:
            Cluster.from_dir(directory)
        self.assertIn("is stale", str(ctx.exception))

    def test_lazy_import(self):
        """`import ipkernel` loads neither the Cluster nor Twisted; `ipkernel.Cluster` is
        the class, loaded on first use, without a reactor."""
        code = (
            "import sys, ipkernel\n"
            "print('ipkernel.cluster' in sys.modules, 'twisted' in sys.modules)\n"
            "from ipkernel import Cluster\n"
            "print(Cluster.__module__, 'twisted.internet.reactor' in sys.modules)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            env=child_env(Path(self.mktemp()).absolute()),
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.splitlines(), ["False False", "ipkernel.cluster.cluster False"]
        )
        self.assertIs(ipkernel.Cluster, Cluster)
        self.assertRaises(AttributeError, getattr, ipkernel, "Nothing")
