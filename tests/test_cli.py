"""The command-line programs: ipcluster (and its launchers), ipcontroller, ipengine, twistd.

Launchers are checked through a fake process runner that records command lines (nothing
is spawned); ``ipcluster``, ``ipcontroller`` and ``twistd ipcontroller`` run for real as
child processes in a temporary ``IPKERNEL_DIR``, on 127.0.0.1 only. Every process a test
starts, or learns the PID of, is killed by PID in its cleanup, whatever happened.
"""

from __future__ import annotations

import ast
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel import __version__, paths
from ipkernel.cli import forkengines, ipcluster
from ipkernel.cli.command_options import CommandOptions
from ipkernel.cli.ipcluster import pidfile
from ipkernel.cli.launchers import (
    LAUNCHERS,
    EngineCommand,
    HostEntry,
    LauncherError,
    LaunchSettings,
    LocalLauncher,
    MPILauncher,
    SlurmLauncher,
    SSHLauncher,
    make_launcher,
    parse_host_file,
)
from ipkernel.cli.processes import (
    ChildProcess,
    ExitStatus,
    ForkedEngine,
    process_alive,
    terminate,
)
from ipkernel.errors import ClusterError
from tests.cluster import child_env
from tests.commands import CLIProcess, gone, kill_if_ours, wait_for

DEADLINE = 30.0
PY = "/opt/py/bin/python3"


# --- fakes ----------------------------------------------------------------------------------


class FakeTransport:
    def __init__(self, pid=4321):
        self.pid = pid
        self.signals: list[str] = []
        self.stdin_closed = False

    def closeStdin(self):  # noqa: N802 - Twisted's name
        self.stdin_closed = True

    def signalProcess(self, name):  # noqa: N802 - Twisted's name
        self.signals.append(name)


class FakeRunner:
    """A ProcessRunner that records command lines and starts nothing."""

    def __init__(
        self, programs=("mpiexec", "ssh", "scp", "sbatch", "squeue", "scancel"), results=None
    ):
        self.clock = Clock()
        self.programs = set(programs)
        self.results = results or {}
        self.spawned: list[tuple[str, list[str], ChildProcess]] = []
        self.watching: list[str] = []  # roles of the children given the lifeline
        self.ran: list[list[str]] = []

    def which(self, program):
        return f"/usr/bin/{program}" if program in self.programs else None

    def spawn(self, role, argv, on_line=None, watch_parent=False, hold_stdin=False):
        child = ChildProcess(role, None, on_line, hold_stdin)
        child.makeConnection(FakeTransport(1000 + len(self.spawned)))
        self.spawned.append((role, list(argv), child))
        if watch_parent:
            self.watching.append(role)
        return child

    def run(self, argv):
        self.ran.append(list(argv))
        return succeed(self.results.get(argv[0], (0, "")))


class FakeHandle:
    """A process handle whose end the test decides."""

    role = "engine"

    def __init__(self, pid, stubborn=False):
        self.pid = pid
        self.status = None
        self.signals: list[str] = []
        self.stubborn = stubborn
        self._waiters = []

    @property
    def running(self):
        return self.status is None

    def when_ended(self):
        from twisted.internet.defer import Deferred

        if self.status is not None:
            return succeed(self.status)
        d = Deferred()
        self._waiters.append(d)
        return d

    def signal(self, name):
        self.signals.append(name)
        return True

    def end(self, status=None):
        self.status = status = status or ExitStatus(signal=15)
        for d in self._waiters:
            d.callback(status)

    def tail(self):
        return []


def command(*args):
    return EngineCommand("/sec/ipcontroller-engine.furl", tuple(args), python=PY)


def settings(**kwargs):
    return LaunchSettings(key_file=Path("k"), log_dir=Path("l"), **kwargs)


# --- unit tests: launchers ----------------------------------------------------------------


class HostFileTests(SynchronousTestCase):
    def test_entries_comments_and_default_count(self):
        """'host [n]' per line; '#' comments and blank lines are skipped; n defaults to 1."""
        text = "# cluster\nnode1 4\n\n  node2   # one engine\nuser@node3 2 # two\n"
        self.assertEqual(
            parse_host_file(text),
            [HostEntry("node1", 4), HostEntry("node2", 1), HostEntry("user@node3", 2)],
        )

    def test_bad_lines_name_the_line(self):
        """A bad count, extra fields or an option-like host is refused with its line number."""
        for text, words in [
            ("a 2\nb 0\n", "line 2"),
            ("a x\n", "positive integer"),
            ("a -3\n", "positive integer"),
            ("a 1 2\n", "host [n_engines]"),
            ("-oProxyCommand=x 1\n", "not a host name"),
        ]:
            with self.assertRaises(ValueError) as ctx:
                parse_host_file(text, "hosts.txt")
            self.assertIn(words, str(ctx.exception))
            self.assertIn("hosts.txt", str(ctx.exception))

    def test_empty_file(self):
        """A host file without hosts is an error."""
        self.assertRaises(ValueError, parse_host_file, "# nothing\n\n")


class LocalLauncherTests(SynchronousTestCase):
    def test_fork_command_and_engine_reports(self):
        """One forkengines process starts N engines; its reports give each engine's PID and end."""
        runner = FakeRunner()
        launcher = LocalLauncher(runner, command("--log-dir", "/logs"))
        added = []
        launcher.on_process = added.append
        self.assertEqual(self.successResultOf(launcher.start(3)), 3)
        [(role, argv, parent)] = runner.spawned
        self.assertEqual(role, "forkengines")
        self.assertEqual(
            argv,
            [
                PY,
                "-m",
                "ipkernel.cli.forkengines",
                "3",
                "--furl-file",
                "/sec/ipcontroller-engine.furl",
                "--log-dir",
                "/logs",
            ],
        )
        self.assertEqual(runner.watching, ["forkengines"])  # the engines watch the lifeline
        for line in ["noise", "ipkernel-fork: engine-pid 71", "ipkernel-fork: engine-pid 72"]:
            parent.on_line(line)
        engines = [p for p in launcher.processes if isinstance(p, ForkedEngine)]
        self.assertEqual([e.pid for e in engines], [71, 72])
        self.assertEqual(added, launcher.processes)
        ended = engines[0].when_ended()
        self.assertNoResult(ended)
        parent.on_line("ipkernel-fork: engine-exit 71 -9")
        self.assertEqual(self.successResultOf(ended), ExitStatus(signal=9))
        self.assertFalse(engines[0].running)
        self.assertTrue(engines[1].running)

    def test_exec_engines(self):
        """With fork=False every engine is its own 'python -m ipkernel.cli.ipengine'."""
        runner = FakeRunner()
        launcher = LocalLauncher(runner, command(), fork=False)
        self.successResultOf(launcher.start(2))
        self.assertEqual(
            [(role, argv) for role, argv, _ in runner.spawned],
            [
                (
                    "engine",
                    [
                        PY,
                        "-m",
                        "ipkernel.cli.ipengine",
                        "--furl-file",
                        "/sec/ipcontroller-engine.furl",
                    ],
                )
            ]
            * 2,
        )
        self.assertEqual(runner.watching, ["engine", "engine"])
        self.assertEqual(len(launcher.processes), 2)

    def test_forked_engine_outliving_its_parent_is_watched_by_pid(self):
        """If the forking parent is gone, a forked engine's end is found by checking its PID."""
        clock = Clock()
        parent = ChildProcess("forkengines")
        parent.pid = 10
        engine = ForkedEngine(os.getpid(), parent, clock)
        parent.processEnded(Failure(ProcessDone(0)))
        self.assertTrue(engine.running)  # this test's own PID is alive
        engine.pid = 2**22 + 12345  # beyond pid_max: no such process
        clock.advance(0.05)
        self.assertFalse(engine.running)


class MPILauncherTests(SynchronousTestCase):
    def test_command_line(self):
        """mpiexec -n N <python> -m ipkernel.cli.ipengine --furl-file F, tracked as one process."""
        runner = FakeRunner()
        launcher = make_launcher(
            "mpi",
            runner,
            command("--security-dir", "/sec"),
            LaunchSettings(key_file=Path("/sec/ipcontroller-engine.furl"), log_dir=Path("/logs")),
        )
        self.assertIsInstance(launcher, MPILauncher)
        self.assertEqual(self.successResultOf(launcher.start(4)), 4)
        [(role, argv, _)] = runner.spawned
        self.assertEqual(role, "mpiexec")
        self.assertEqual(runner.watching, [])  # mpiexec takes no --lifeline-fd
        self.assertEqual(
            argv,
            [
                "mpiexec",
                "-n",
                "4",
                PY,
                "-m",
                "ipkernel.cli.ipengine",
                "--furl-file",
                "/sec/ipcontroller-engine.furl",
                "--security-dir",
                "/sec",
            ],
        )

    def test_missing_mpiexec(self):
        """Without mpiexec on PATH the error says so and what to do."""
        with self.assertRaises(LauncherError) as ctx:
            make_launcher("mpi", FakeRunner(programs=()), command(), settings())
        self.assertIn("'mpiexec', which is not on PATH", str(ctx.exception))
        self.assertIn("Open MPI or MPICH", str(ctx.exception))
        self.assertIn("--mpiexec", str(ctx.exception))

    def test_mpiexec_option(self):
        """--mpiexec names the program and its own options (split as a shell would); the
        program is the one looked for on PATH; an empty or unbalanced one is refused."""
        runner = FakeRunner(programs=("mpiexec.mpich",))
        launcher = make_launcher(
            "mpi", runner, command(), settings(mpiexec="mpiexec.mpich -bind-to 'core'")
        )
        launcher.start(2)
        [(_, argv, _)] = runner.spawned
        self.assertEqual(argv[:6], ["mpiexec.mpich", "-bind-to", "core", "-n", "2", PY])
        with self.assertRaises(LauncherError) as ctx:
            make_launcher("mpi", runner, command(), settings(mpiexec="mpirun.openmpi"))
        self.assertIn("'mpirun.openmpi', which is not on PATH", str(ctx.exception))
        for bad in ("", "mpiexec 'unclosed"):
            self.assertRaises(
                LauncherError, make_launcher, "mpi", runner, command(), settings(mpiexec=bad)
            )


def probe_output(python=None, version=None):
    """What the ssh launcher's check prints on a host that can run engines."""
    python = python or " ".join(str(v) for v in sys.version_info[:3])
    return f"ipkernel-probe python {python}\nipkernel-probe ipkernel {version or __version__}\n"


SSH = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]


class SSHLauncherTests(SynchronousTestCase):
    def launcher(self, runner):
        key = Path(self.mktemp())
        key.write_text("pb+tls://...\n")
        hosts = [HostEntry("n1", 2), HostEntry("alice@n2", 1)]
        return SSHLauncher(runner, command(), hosts, key), key

    def test_command_lines(self):
        """The check (with mkdir), scp of the key file, and an ssh per engine that reports
        the remote PID."""
        launcher, key = self.launcher(FakeRunner())
        prepare = launcher.prepare_argv("n1")
        self.assertEqual(prepare[:-1], [*SSH, "n1"])
        self.assertTrue(
            prepare[-1].startswith(
                "umask 077 && mkdir -p .ipkernel/security && chmod 700 .ipkernel/security "
                f"&& exec {PY} -c "
            ),
            prepare[-1],
        )
        self.assertEqual(
            launcher.copy_argv("n1"),
            [
                "scp",
                "-p",
                "-q",
                *SSH[1:],
                str(key),
                "n1:.ipkernel/security/ipcontroller-engine.furl",
            ],
        )
        self.assertEqual(
            launcher.engine_argv("n1"),
            [
                *SSH,
                "n1",
                f"echo ipengine-pid $$; exec {PY} -m ipkernel.cli.ipengine "
                "--furl-file .ipkernel/security/ipcontroller-engine.furl --lifeline-fd 0",
            ],
        )
        self.assertEqual(launcher.kill_argv("n1", [5, 6]), [*SSH, "n1", "kill -TERM 5 6"])

    def test_start_and_stop(self):
        """Start checks and copies the key to each host once and starts its engines; stop
        kills them."""
        runner = FakeRunner(results={"ssh": (0, probe_output())})
        launcher, key = self.launcher(runner)
        self.assertEqual(self.successResultOf(launcher.start(99)), 3)
        self.assertEqual([argv[0] for argv in runner.ran], ["ssh", "ssh", "scp", "scp"])
        self.assertEqual([argv[-2] for argv in runner.ran[:2]], ["n1", "alice@n2"])
        self.assertEqual(
            [(role, argv[5]) for role, argv, _ in runner.spawned],
            [("ssh-engine", "n1"), ("ssh-engine", "n1"), ("ssh-engine", "alice@n2")],
        )
        # The ssh clients' stdin stays open: the remote engines' lifeline.
        self.assertEqual(
            [child.transport.stdin_closed for *_, child in runner.spawned], [False] * 3
        )
        for (_, _, child), pid in zip(runner.spawned, (501, 502, 601), strict=True):
            child.on_line(f"ipengine-pid {pid}")
            child.on_line("ipengine-pid 1")  # only the first line counts
        self.assertEqual(launcher.remote_pids, {"n1": [501, 502], "alice@n2": [601]})
        runner.ran.clear()
        stopping = launcher.stop(grace=1.0)
        self.assertIn([*SSH, "n1", "kill -TERM 501 502"], runner.ran)
        self.assertIn([*SSH, "alice@n2", "kill -TERM 601"], runner.ran)
        for _, _, child in runner.spawned:
            child.processEnded(Failure(ProcessTerminated(signal=15)))
        self.assertEqual(self.successResultOf(stopping), [])

    def test_copy_failure(self):
        """A failing scp stops the start, naming the host, scp's output and what to try."""
        runner = FakeRunner(
            results={"ssh": (0, probe_output()), "scp": (1, "Permission denied (publickey).")}
        )
        launcher, key = self.launcher(runner)
        failure = self.failureResultOf(launcher.start(1), LauncherError)
        message = str(failure.value)
        self.assertIn("2 of 2 hosts cannot run engines", message)
        self.assertIn("n1: copying the engine key file failed (scp exit code 1: Perm", message)
        self.assertIn(f"'scp {key} alice@n2:.ipkernel/security/", message)
        self.assertEqual(runner.spawned, [])

    def test_waits_for_the_key_file(self):
        """Engines are not started before the controller has written the engine key file."""
        runner = FakeRunner(results={"ssh": (0, probe_output())})
        key = Path(self.mktemp())
        launcher = SSHLauncher(runner, command(), [HostEntry("n1")], key, key_timeout=1.0)
        d = launcher.start(1)
        runner.clock.advance(0.5)
        self.assertNoResult(d)
        key.write_text("pb+tls://...\n")
        runner.clock.advance(0.05)
        self.assertEqual(self.successResultOf(d), 1)
        launcher2 = SSHLauncher(runner, command(), [HostEntry("n1")], Path(self.mktemp()), 1.0)
        d2 = launcher2.start(1)
        runner.clock.pump([0.1] * 12)
        self.failureResultOf(d2, LauncherError)

    def test_make_launcher_host_file_errors(self):
        """--launcher ssh needs a readable, valid host file."""
        runner = FakeRunner()
        self.assertRaises(LauncherError, make_launcher, "ssh", runner, command(), settings())
        with self.assertRaises(LauncherError) as ctx:
            make_launcher("ssh", runner, command(), settings(hostfile="/no/such/file"))
        self.assertIn("/no/such/file", str(ctx.exception))
        bad = Path(self.mktemp())
        bad.write_text("node 0\n")
        self.assertRaises(
            LauncherError, make_launcher, "ssh", runner, command(), settings(hostfile=str(bad))
        )
        good = Path(self.mktemp())
        good.write_text("node 2\n")
        launcher = make_launcher("ssh", runner, command(), settings(hostfile=str(good)))
        self.assertEqual(launcher.engine_count, 2)
        self.assertRaises(LauncherError, make_launcher, "bogus", runner, command(), settings())


class SlurmLauncherTests(SynchronousTestCase):
    def launcher(self, runner):
        directory = Path(self.mktemp())
        return SlurmLauncher(runner, command(), directory / "job.sh", Path("/logs dir"))

    def test_script(self):
        """The batch script asks for N tasks and runs one engine per task with srun."""
        script = self.launcher(FakeRunner()).script(3)
        self.assertTrue(script.startswith("#!/bin/sh\n"))
        self.assertIn("#SBATCH --ntasks=3\n", script)
        self.assertIn("#SBATCH --job-name=ipengine\n", script)
        self.assertIn("#SBATCH --output='/logs dir/ipengine-slurm-%j.log'\n", script)
        self.assertIn(
            f"exec srun {PY} -m ipkernel.cli.ipengine --furl-file /sec/ipcontroller-engine.furl\n",
            script,
        )

    def test_submit_and_cancel(self):
        """sbatch --parsable's job id is kept and cancelled with scancel on stop."""
        runner = FakeRunner(results={"sbatch": (0, "4242;cluster1\n")})
        launcher = self.launcher(runner)
        self.assertEqual(self.successResultOf(launcher.start(2)), 2)
        self.assertEqual(runner.ran, [["sbatch", "--parsable", str(launcher.script_path)]])
        self.assertIn("--ntasks=2", launcher.script_path.read_text())
        self.assertEqual(launcher.job_id, "4242")
        self.successResultOf(launcher.stop())
        self.assertIn(["scancel", "4242"], runner.ran)
        self.assertEqual(runner.ran[-1][0], "squeue", "stop waits until the job has ended")

    def test_sbatch_failure_and_bad_output(self):
        """A failed submission or output without a job id is a LauncherError."""
        failing = self.launcher(FakeRunner(results={"sbatch": (1, "invalid partition")}))
        self.assertIn("invalid partition", str(self.failureResultOf(failing.start(1)).value))
        self.assertRaises(LauncherError, SlurmLauncher.parse_job_id, "Submitted nothing")
        self.assertEqual(SlurmLauncher.parse_job_id("77\n"), "77")

    def test_missing_sbatch(self):
        """Without sbatch the error says to run on a Slurm login node."""
        with self.assertRaises(LauncherError) as ctx:
            make_launcher("slurm", FakeRunner(programs=()), command(), settings())
        self.assertIn("'sbatch'", str(ctx.exception))


class CommandOptionsTests(SynchronousTestCase):
    """The help every command prints (CommandOptions), on a small made-up command."""

    class Base(CommandOptions):
        optParameters = [["size", "s", 3, "How big."]]
        metavars = {"size": "BYTES"}

    class Options(Base):
        synopsis = "Usage: demo [options]"
        longdesc = "Do the demo."
        optParameters = [
            ["x", "x", 1.5, "A one-letter option."],
            ["a-rather-long-option-name", None, None, "Its text starts on the next line."],
        ]
        optFlags = [["quiet", "q", "Say less."]]

    def test_layout(self):
        """Synopsis, description, then options in declaration order (the subclass's first),
        with short forms, value names (inherited ones too) and parameter defaults."""
        options = self.Options()
        self.assertEqual(
            options.getSynopsis() + "\n" + options.getUsage(width=80),
            "Usage: demo [options]\n"
            "\n"
            "Do the demo.\n"
            "\n"
            "Options:\n"
            "  -x VALUE                  A one-letter option (default: 1.5).\n"
            "  --a-rather-long-option-name VALUE\n"
            "                            Its text starts on the next line.\n"
            "  -q, --quiet               Say less.\n"
            "  -s, --size BYTES          How big (default: 3).\n"
            "  --help                    Display this help and exit.\n"
            "  --version                 Display Twisted version and exit.\n",
        )

    def test_parsing_is_twisteds(self):
        """Every spelling Twisted accepts still works: -x 2, -x2, --x 2, --x=2, -s 4, --size=4."""
        for args in (["-x", "2"], ["-x2"], ["--x", "2"], ["--x=2"]):
            options = self.Options()
            options.parseOptions(args)
            self.assertEqual(options["x"], "2", args)
        for args in (["-s", "4"], ["--size=4"]):
            options = self.Options()
            options.parseOptions(args)
            self.assertEqual(options["size"], "4", args)


class LauncherRegistryTests(SynchronousTestCase):
    def test_launchers_by_name(self):
        """Each launcher is registered under its own --launcher name, with a summary for --help."""
        self.assertEqual(list(LAUNCHERS), ["local", "mpi", "ssh", "slurm"])
        for name, cls in LAUNCHERS.items():
            self.assertEqual(cls.name, name)
            self.assertTrue(cls.summary, name)
        self.assertEqual([n for n, cls in LAUNCHERS.items() if cls.remote], ["ssh", "slurm"])

    def test_settings_reach_the_launcher(self):
        """make_launcher builds each launcher from the cluster's settings: fork, log dir."""
        runner = FakeRunner()
        local = make_launcher("local", runner, command(), settings(fork=False))
        self.assertIsInstance(local, LocalLauncher)
        self.assertFalse(local.fork)
        slurm = make_launcher("slurm", runner, command(), settings())
        self.assertIsInstance(slurm, SlurmLauncher)
        self.assertEqual(slurm.script_path, Path("l") / f"ipcluster-{os.getpid()}-slurm.sh")
        self.assertEqual(slurm.output_dir, Path("l"))


class ProcessTests(SynchronousTestCase):
    def test_child_process_lines_tail_and_status(self):
        """Output is logged line by line with role and PID; the exit status is recorded."""
        log = []

        class Sink:
            def write(self, text):
                log.append(text)

        seen = []
        child = ChildProcess("engine", Sink(), seen.append)
        transport = FakeTransport(77)
        child.makeConnection(transport)
        self.assertTrue(transport.stdin_closed)
        child.childDataReceived(1, b"hello\npart")
        child.childDataReceived(2, b"oops\r\n")
        child.childDataReceived(1, b"ial\n")
        self.assertEqual(seen, ["hello", "oops", "partial"])
        self.assertTrue(child.signal("TERM"))
        self.assertEqual(transport.signals, ["TERM"])
        ended = child.when_ended()
        child.processEnded(Failure(ProcessTerminated(exitCode=3)))
        self.assertEqual(self.successResultOf(ended), ExitStatus(code=3))
        self.assertEqual(child.tail(), ["hello", "oops", "partial"])
        self.assertEqual(log[0], "[engine 77] hello\n")
        self.assertEqual(log[-1], "[engine 77] process exited with code 3\n")
        self.assertFalse(child.signal("KILL"))

    def test_exit_status_descriptions(self):
        """Exit statuses read as a user would say them."""
        self.assertEqual(ExitStatus(code=0).describe(), "exited with code 0")
        self.assertTrue(ExitStatus(code=0).clean)
        self.assertEqual(ExitStatus(signal=9).describe(), "was killed by SIGKILL")
        self.assertFalse(ExitStatus(signal=9).clean)

    def test_terminate_escalates_after_grace(self):
        """SIGTERM first; SIGKILL to whoever is left after the grace period; fires when all end."""
        clock = Clock()
        quick, slow = FakeHandle(1), FakeHandle(2)
        d = terminate([quick, slow], clock, grace=5.0)
        self.assertEqual((quick.signals, slow.signals), (["TERM"], ["TERM"]))
        quick.end()
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertEqual(slow.signals, ["TERM", "KILL"])
        slow.end(ExitStatus(signal=9))
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_terminate_reports_unkillable(self):
        """A process that outlives SIGKILL is reported rather than waited for forever."""
        clock = Clock()
        stuck = FakeHandle(3)
        d = terminate([stuck], clock, grace=1.0)
        clock.advance(1.0)
        clock.advance(1.0)
        self.assertEqual(self.successResultOf(d), [stuck])


# --- unit tests: ipcluster's pieces ---------------------------------------------------------


class IPClusterOptionTests(SynchronousTestCase):
    def parse(self, *args):
        options = ipcluster.StartOptions()
        options.parseOptions(list(args))
        return options

    def test_controller_options_are_passed_on(self):
        """Controller options given to ipcluster reach the controller; defaults are not repeated."""
        options = self.parse(
            "-n",
            "3",
            "--ip",
            "0.0.0.0",
            "--engine-port",
            "5000",
            "--reuse-keys",
            "--db",
            "tasks.db",
            "--location",
            "head",
            "--security-dir",
            "sec",
        )
        argv = ipcluster.controller_argv(options, python=PY)
        self.assertEqual(argv[:3], [PY, "-m", "ipkernel.cli.ipcontroller"])
        pairs = dict(zip(argv[3::2], argv[4::2], strict=False))
        self.assertEqual(pairs["--ip"], "0.0.0.0")
        self.assertEqual(pairs["--engine-port"], "5000")
        self.assertEqual(pairs["--location"], "head")
        self.assertEqual(pairs["--db"], str(Path("tasks.db").absolute()))
        self.assertEqual(pairs["--security-dir"], str(Path("sec").absolute()))
        self.assertIn("--reuse-keys", argv)
        self.assertNotIn("--client-port", argv)
        self.assertEqual(ipcluster.controller_argv(self.parse(), python=PY), argv[:3])
        self.assertEqual(options["n"], 3)

    def test_engine_options(self):
        """Engines get the security and log directories given, and every --engine-arg."""
        options = self.parse(
            "--log-dir", "/l", "--security-dir", "/s", "--engine-arg", "--property=a=1"
        )
        self.assertEqual(
            ipcluster.engine_args(options),
            ("--security-dir", "/s", "--log-dir", "/l", "--property=a=1"),
        )
        self.assertEqual(ipcluster.engine_args(self.parse()), ())

    def test_bad_options(self):
        """Bad -n, --timeout, --launcher, and ssh without a host file are usage errors."""
        for args in (
            ["-n", "0"],
            ["-n", "x"],
            ["--timeout", "-1"],
            ["--launcher", "pbs"],
            ["--launcher", "ssh"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)
        self.assertEqual(self.parse()["n"], os.cpu_count() or 1)

    def test_connect_lines(self):
        """The default security directory gives the short lines; any other one is named."""
        default = Path.home().absolute() / ".ipkernel" / "security"
        self.assertEqual(
            ipcluster.connect_lines(default),
            [
                "from ipkernel import client",
                "mec = client.MultiEngineClient()",
                "tc = client.TaskClient()",
            ],
        )
        lines = ipcluster.connect_lines(Path("/x/sec"), has_task_client=False)
        self.assertEqual(lines[1], "mec = client.MultiEngineClient('/x/sec/ipcontroller-mec.furl')")
        self.assertEqual(len(lines), 2)

    def test_pid_file_format(self):
        """The pid file: ipcluster's PID, then '<role> <pid>' lines; written 0600."""
        record = pidfile.ClusterRecord(10, [("controller", 11), ("engine", 12)])
        self.assertEqual(record.to_text(), "10\ncontroller 11\nengine 12\n")
        path = Path(self.mktemp())
        pidfile.write_pid_file(path, record, exclusive=True)
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        self.assertEqual(pidfile.read_pid_file(path), record)
        self.assertRaises(FileExistsError, pidfile.write_pid_file, path, record, True)
        pidfile.write_pid_file(path, pidfile.ClusterRecord(10))
        self.assertEqual(path.read_text(), "10\n")
        for bad in ("", "x\n", "1\nengine\n", "1\nengine x\n"):
            path.write_text(bad)
            self.assertRaises(ValueError, pidfile.read_pid_file, path)

    def test_number_of_engines_spellings(self):
        """-n 4, -n4, --n 4 and --n=4 all ask for four engines."""
        for args in (["-n", "4"], ["-n4"], ["--n", "4"], ["--n=4"]):
            self.assertEqual(self.parse(*args)["n"], 4, args)

    def test_help_shows_dash_n(self):
        """ipcluster's help spells the engine count -n N, in the synopsis and the option list,
        and gives each option's default once."""
        text = str(ipcluster.StartOptions())
        self.assertTrue(text.startswith("Usage: ipcluster [start] [-n N] [options]\n"), text)
        self.assertIn("\n  -n N ", text)
        self.assertNotRegex(text, r"--n\b")
        self.assertNotIn("[default:", text)
        flat = " ".join(text.split())
        cpus = os.cpu_count() or 1
        self.assertIn(f"-n N Number of engines (default: the number of CPUs, {cpus}).", flat)
        self.assertIn(
            "--timeout SECONDS Seconds to wait for the controller and every engine to come up "
            "(default: 30).",
            flat,
        )
        self.assertIn("--launcher NAME How to start engines (default: local)", flat)
        self.assertIn("--reuse-keys Keep the certificate", flat)

    def test_help_lists_own_options_then_the_controllers(self):
        """ipcluster's own options come first, in the order declared; then the controller's."""
        text = str(ipcluster.StartOptions())
        positions = [
            text.index(word)
            for word in (
                "\nOptions:\n",
                "  -n N",
                "  --launcher NAME",
                "  --hostfile FILE",
                "  --timeout SECONDS",
                "  --exec-engines",
                "  --engine-arg ARG",
                "  --help",
                "\nController options:\n",
                "  --ip ADDRESS",
                "  --engine-port PORT",
                "  --reuse-keys",
            )
        ]
        self.assertEqual(positions, sorted(positions))
        for name, launcher in LAUNCHERS.items():
            self.assertIn(f"{name} ({launcher.summary})", " ".join(text.split()))

    def test_forkengines_usage(self):
        """forkengines needs a positive engine count first."""
        self.patch(sys, "stderr", open(os.devnull, "w"))  # noqa: SIM115
        self.addCleanup(sys.stderr.close)
        self.assertEqual(forkengines.main(["x"]), 2)
        self.assertEqual(forkengines.main(["0"]), 2)


class ClusterStateTests(SynchronousTestCase):
    """ipcluster's ClusterSupervisor with a fake runner and a fake clock: nothing is spawned."""

    def make(self, *args):
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        options = ipcluster.StartOptions()
        options.parseOptions(
            ["--security-dir", str(base / "sec"), "--log-dir", str(base / "log"), *args]
        )
        self.runner = FakeRunner()
        self.err = io.StringIO()
        self.pid_file = base / pidfile.PID_FILE
        record = pidfile.ClusterRecord(os.getpid())
        log = io.StringIO()
        return ipcluster.ClusterSupervisor(
            self.runner.clock,
            options,
            record,
            self.pid_file,
            log,
            base / "c.log",
            self.err,
            runner=self.runner,
        )

    def spawned(self, role):
        return next(child for r, _, child in self.runner.spawned if r == role)

    def test_pid_file_follows_the_processes(self):
        """The pid file lists the controller, the forking process, then each engine forked;
        the controller and the engines are given ipcluster's lifeline."""
        cluster = self.make("-n", "2")
        cluster.start()
        self.assertEqual(self.runner.watching, ["controller", "forkengines"])
        self.assertEqual(
            pidfile.read_pid_file(self.pid_file).children,
            [("controller", 1000), ("forkengines", 1001)],
        )
        self.spawned("forkengines").on_line("ipkernel-fork: engine-pid 77")
        self.assertEqual(pidfile.read_pid_file(self.pid_file).children[-1], ("engine", 77))

    def test_engine_process_ending_while_starting(self):
        """A process that ends during startup fails it, quoting its output; stop ends the rest."""
        cluster = self.make("-n", "2")
        d = cluster.start()
        forker = self.spawned("forkengines")
        forker.childDataReceived(2, b"ImportError: no module named foo\n")
        forker.processEnded(Failure(ProcessTerminated(exitCode=1)))
        error = self.failureResultOf(d, ClusterError).value
        self.assertIn("(forkengines) (pid 1001) exited with code 1", str(error))
        self.assertIn("ImportError: no module named foo", str(error))
        stopping = cluster.stop()
        controller = self.spawned("controller")
        self.assertEqual(controller.transport.signals, ["TERM"])
        self.assertNoResult(stopping)
        controller.processEnded(Failure(ProcessTerminated(signal=15)))
        self.successResultOf(stopping)
        self.successResultOf(cluster.stop())  # stopping twice is one stop

    def test_stop_requested_while_starting(self):
        """A signal during startup ends it with StopRequested (ipcluster then exits 0)."""
        cluster = self.make("-n", "1")
        d = cluster.start()
        cluster.request_stop("SIGINT")
        self.failureResultOf(d, ipcluster.StopRequested)

    def test_deadline(self):
        """Without a key file by --timeout, startup fails naming the missing file."""
        cluster = self.make("-n", "1", "--timeout", "2")
        d = cluster.start()
        self.runner.clock.pump([0.025] * 90)
        error = self.failureResultOf(d, ClusterError).value
        self.assertIn("the controller wrote no key file", str(error))
        self.assertIn("within 2 s (--timeout)", str(error))

    def test_launcher_warning_and_error(self):
        """ssh with a loopback controller warns; a missing program fails before any start."""
        hosts = Path(self.mktemp())
        hosts.write_text("node 1\n")
        cluster = self.make("--launcher", "ssh", "--hostfile", str(hosts))
        self.runner.results["ssh"] = (0, probe_output())
        cluster.start()
        self.assertIn("cannot reach it (use --ip 0.0.0.0)", self.err.getvalue())
        cluster = self.make("--launcher", "mpi")
        self.runner.programs.clear()
        self.assertRaises(LauncherError, cluster.start)
        self.assertEqual(self.runner.spawned, [])


# --- integration: real processes --------------------------------------------------------------


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


class HelpTests(TestCase):
    def test_help_of_every_command(self):
        """--help of ipcluster (start, stop), ipcontroller and ipengine exits 0 and prints a
        usage line naming the command, then one entry per option with its value's name; no
        option is spelled the Twisted way (--name=)."""
        env = child_env(Path(self.mktemp()).absolute())
        controller_options = [
            "--ip ADDRESS",
            "--engine-port PORT",
            "--client-port PORT",
            "--security-dir DIR",
            "--log-dir DIR",
            "--reuse-keys",
            "--db FILE",
            "--location HOST",
        ]
        cases = [
            (
                ["-m", "ipkernel.cli.ipcluster", "--help"],
                "Usage: ipcluster [start] [-n N] [options]",
                [
                    "-n N",
                    "--launcher NAME",
                    "--hostfile FILE",
                    "--timeout SECONDS",
                    "--engine-arg ARG",
                    "--exec-engines",
                    *controller_options,
                    "ipcluster stop",
                ],
            ),
            (
                ["-m", "ipkernel.cli.ipcluster", "start", "--help"],
                "Usage: ipcluster [start] [-n N] [options]",
                ["-n N", "--launcher NAME"],
            ),
            (
                ["-m", "ipkernel.cli.ipcluster", "stop", "--help"],
                "Usage: ipcluster stop [options]",
                ["--timeout SECONDS", "(default: 30)", "pid file"],
            ),
            (
                ["-m", "ipkernel.cli.ipcontroller", "--help"],
                "Usage: ipcontroller [options]",
                [*controller_options, "(default: 127.0.0.1)"],
            ),
            (
                ["-m", "ipkernel.cli.ipengine", "--help"],
                "Usage: ipengine [options]",
                ["--furl-file FILE", "--security-dir DIR", "--log-dir DIR", "--property KEY=VALUE"],
            ),
        ]
        for args, synopsis, words in cases:
            result = subprocess.run(
                _python(*args), env=env, capture_output=True, text=True, timeout=DEADLINE
            )
            self.assertEqual(result.returncode, 0, (args, result.stderr))
            self.assertEqual(result.stdout.splitlines()[0], synopsis, args)
            for word in words:
                self.assertIn(word, result.stdout, args)
            self.assertNotRegex(result.stdout, r"--[a-z-]+=(\s|$)", args)
            self.assertNotIn("[default:", result.stdout, args)


class IPClusterTests(TestCase):
    timeout = 120

    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        self.env = child_env(self.dir)
        self.pid_file = self.dir / "ipcluster.pid"

    def ipcluster(self, *args: str) -> CLIProcess:
        return CLIProcess(self, _python("-m", "ipkernel.cli.ipcluster", *args), self.env)

    def started(self, cluster: CLIProcess, n: int) -> list[tuple[str, int]]:
        """Wait for the connect lines; return the children listed in the pid file."""
        out = cluster.read_until("Connect with:")
        self.assertIn(f"a controller and {n} engines are running", out)
        record = pidfile.read_pid_file(self.pid_file)
        self.assertEqual(record.pid, cluster.proc.pid)
        cluster.known_pids.update(pid for _, pid in record.children)
        return record.children

    def assert_allgone(self, pids) -> None:
        alive = [pid for pid in pids if not gone(pid)]
        self.assertEqual(alive, [], "processes left behind")

    def test_start_connect_stop(self):
        """ipcluster -n 2 prints lines that connect a client to 2 engines; ipcluster stop ends
        it and every process it started, and its pid file, are gone."""
        cluster = self.ipcluster("-n", "2", "--ip", "127.0.0.1")
        children = self.started(cluster, 2)
        roles = sorted(role for role, _ in children)
        self.assertEqual(roles, ["controller", "engine", "engine", "forkengines"])
        out = cluster.out.decode()
        lines = [line.strip() for line in out.splitlines() if line.startswith("    ")]
        self.assertEqual(lines[0], "from ipkernel import client")
        self.assertIn(str(self.dir / "security" / paths.MEC_FURL), lines[1])
        script = "\n".join(
            [
                *lines,
                "print(mec.get_ids())",
                "mec.execute('import os, random; pid = os.getpid(); r = random.random()')",
                "print(len(set(mec.pull('r'))))",
                "print(mec.pull('pid'))",
            ]
        )
        result = subprocess.run(
            _python("-c", script), env=self.env, capture_output=True, text=True, timeout=DEADLINE
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        ids_line, randoms_line, pids_line = result.stdout.splitlines()[-3:]
        self.assertEqual(ids_line, "[0, 1]")
        self.assertEqual(randoms_line, "2")  # forked engines do not share a random state
        engine_pids = {pid for role, pid in children if role == "engine"}
        self.assertEqual(set(ast.literal_eval(pids_line)), engine_pids)  # the pid file is right

        second = self.ipcluster("-n", "1")
        code, _, err = second.wait()
        self.assertEqual(code, 1)
        self.assertIn(f"an ipcluster (pid {cluster.proc.pid}) is already running", err)

        stop = subprocess.run(
            _python("-m", "ipkernel.cli.ipcluster", "stop"),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        self.assertEqual(stop.returncode, 0, stop.stderr)
        self.assertIn(f"stopped ipcluster {cluster.proc.pid}", stop.stdout)
        code, _, err = cluster.wait()
        self.assertEqual(code, 0, err)
        self.assert_allgone([pid for _, pid in children])
        self.assertFalse(self.pid_file.exists())

    def test_sigint_stops_everything(self):
        """SIGINT to ipcluster (here with one process per engine) stops every child, exit 0."""
        cluster = self.ipcluster("-n", "2", "--exec-engines")
        children = self.started(cluster, 2)
        self.assertEqual(sorted(role for role, _ in children), ["controller", "engine", "engine"])
        cluster.proc.send_signal(signal.SIGINT)
        code, _, err = cluster.wait()
        self.assertEqual(code, 0, err)
        self.assert_allgone([pid for _, pid in children])
        self.assertFalse(self.pid_file.exists())
        log = (self.dir / "log" / f"ipcluster-{cluster.proc.pid}.log").read_text()
        self.assertIn("stop requested: SIGINT", log)

    def test_children_end_when_ipcluster_is_killed(self):
        """SIGKILL of ipcluster leaves nothing running: the controller and the engines, forked
        or not, see its lifeline end and stop by themselves."""
        for args in [(), ("--exec-engines",)]:
            cluster = self.ipcluster("-n", "2", *args)
            children = self.started(cluster, 2)
            cluster.proc.kill()
            cluster.wait()
            pids = [pid for _, pid in children]
            wait_for(
                lambda pids=pids: not any(map(process_alive, pids)),
                f"the children {pids} of a killed ipcluster to end",
            )
            self.pid_file.unlink()  # stale: its ipcluster was killed

    def test_controller_failure_is_reported(self):
        """A controller that cannot listen ends ipcluster: exit 1, its error, no leftovers."""
        import socket

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = self.ipcluster("-n", "2", "--engine-port", str(port))
        code, out, err = cluster.wait()
        self.assertEqual(code, 1)
        self.assertIn("the controller (pid", err)
        self.assertIn("Address already in use", err)
        self.assertNotIn("Connect with", out)
        log = (self.dir / "log" / f"ipcluster-{cluster.proc.pid}.log").read_text()
        pids = {int(pid) for pid in re.findall(r"^\[\S+ (\d+)\]", log, re.MULTILINE)}
        pids |= {
            int(pid) for pid in re.findall(r"(?:started \S+|forked engine) process (\d+)", log)
        }
        cluster.known_pids.update(pids)
        self.assertGreaterEqual(len(pids), 3)
        self.assert_allgone(pids)
        self.assertFalse(self.pid_file.exists())

    def test_stop_without_cluster(self):
        """ipcluster stop says when nothing runs, and removes a stale pid file."""
        stop = _python("-m", "ipkernel.cli.ipcluster", "stop")
        result = subprocess.run(
            stop, env=self.env, capture_output=True, text=True, timeout=DEADLINE
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("no ipcluster is running", result.stderr)
        # A PID that has just ended (and was reaped) stands for a killed ipcluster.
        probe = subprocess.Popen(
            _python("-c", "import os; print(os.getpid())"), stdout=subprocess.PIPE, text=True
        )
        stale_pid = int(probe.communicate()[0])
        self.pid_file.write_text(f"{stale_pid}\n")
        result = subprocess.run(
            stop, env=self.env, capture_output=True, text=True, timeout=DEADLINE
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("was stale", result.stderr)
        self.assertFalse(self.pid_file.exists())


FAKE_SSH = """#!/bin/sh
# Stands in for ssh: runs the remote command on this host, in $HOME/<host> (each "host"
# has a home of its own, as separate machines would).
while [ "$1" = "-o" ]; do shift 2; done
host="$1"; shift
mkdir -p "$HOME/$host" && cd "$HOME/$host" && HOME="$HOME/$host" exec /bin/sh -c "$*"
"""

FAKE_SCP = """#!/bin/sh
# Stands in for scp: copies the file to $HOME/<host>/<path> for host:<path>.
while [ $# -gt 2 ]; do shift; done
host="${2%%:*}"
mkdir -p "$HOME/$host" && cd "$HOME/$host" && exec cp -p "$1" "${2#*:}"
"""


class SSHLauncherProcessTests(TestCase):
    timeout = 120

    def test_ssh_launcher_with_stand_in_ssh(self):
        """The ssh launcher's real commands, run by stand-ins for ssh and scp on this host:
        the key file is copied (0600 in 0700), engines register, stop leaves nothing behind."""
        base = Path(self.mktemp()).absolute()
        bin_dir, home = base / "bin", base / "home"
        bin_dir.mkdir(parents=True)
        home.mkdir()
        for name, text in (("ssh", FAKE_SSH), ("scp", FAKE_SCP)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        hosts = base / "hosts"
        hosts.write_text("localhost 1  # first\n127.0.0.1\n")
        env = child_env(base / "ipk")
        env.update(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
        argv = _python(
            "-m", "ipkernel.cli.ipcluster", "--launcher", "ssh", "--hostfile", str(hosts)
        )
        cluster = CLIProcess(self, argv, env)
        cluster.read_until("Connect with:")
        self.assertIn("a controller and 2 engines are running", cluster.out.decode())
        record = pidfile.read_pid_file(base / "ipk" / pidfile.PID_FILE)
        cluster.known_pids.update(pid for _, pid in record.children)
        self.assertEqual(
            sorted(role for role, _ in record.children), ["controller", "ssh-engine", "ssh-engine"]
        )
        for host in ("localhost", "127.0.0.1"):
            copied = home / host / ".ipkernel" / "security" / paths.ENGINE_FURL
            self.assertEqual(
                copied.read_text(), (base / "ipk" / "security" / paths.ENGINE_FURL).read_text()
            )
            self.assertEqual(copied.stat().st_mode & 0o777, 0o600)
            self.assertEqual(copied.parent.stat().st_mode & 0o777, 0o700)
        cluster.proc.send_signal(signal.SIGTERM)
        code, _, err = cluster.wait()
        self.assertEqual(code, 0, err)
        self.assertEqual([pid for _, pid in record.children if not gone(pid)], [])
        log = (base / "ipk" / "log" / f"ipcluster-{cluster.proc.pid}.log").read_text()
        self.assertIn(
            "running: ssh -o BatchMode=yes -o ConnectTimeout=10 localhost 'kill -TERM ", log
        )


class TwistdTests(TestCase):
    timeout = 60

    def setUp(self):
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        self.env = child_env(self.dir)
        self.mec = self.dir / "security" / paths.MEC_FURL

    def twistd(self, *args: str) -> list[str]:
        return _python("-c", "from twisted.scripts.twistd import run; run()", *args)

    @inlineCallbacks
    def assert_controller_answers(self):
        from ipkernel.client.multiengine_async import AsyncMultiEngineClient
        from ipkernel.security import read_key_file

        client = yield AsyncMultiEngineClient.connect(reactor, read_key_file(self.mec))
        try:
            ids = yield client.get_ids()
            self.assertEqual(ids, [])
        finally:
            client.disconnect()
            yield task.deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def test_foreground(self):
        """twistd -n ipcontroller runs the controller in the foreground; SIGTERM stops it."""
        pid_file = self.dir / "twistd.pid"
        argv = self.twistd("-n", "--pidfile", str(pid_file), "ipcontroller", "--ip", "127.0.0.1")
        process = CLIProcess(self, argv, self.env, cwd=str(self.dir))
        wait_for(lambda: self.mec.exists() or process.proc.poll() is not None, "the key file")
        if process.proc.poll() is not None:
            self.fail(f"twistd ended: {process.wait()}")
        yield self.assert_controller_answers()
        process.proc.send_signal(signal.SIGTERM)
        code, out, err = process.wait()
        # twistd ends itself with the signal it was stopped by, after a clean shutdown.
        self.assertIn(code, (0, -signal.SIGTERM), err)
        self.assertIn("Server Shut Down", out)
        self.assertIn("controller listening on 127.0.0.1", out)
        self.assertFalse(pid_file.exists())

    @inlineCallbacks
    def test_daemon(self):
        """twistd --pidfile --logfile ipcontroller daemonizes; the PID in the file stops it."""
        pid_file, log_file = self.dir / "twistd.pid", self.dir / "twistd.log"
        argv = self.twistd("--pidfile", str(pid_file), "--logfile", str(log_file), "ipcontroller")
        result = subprocess.run(
            argv, env=self.env, cwd=str(self.dir), capture_output=True, text=True, timeout=DEADLINE
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        wait_for(lambda: pid_file.exists() and self.mec.exists(), "the pid file and key file")
        pid = int(pid_file.read_text())
        self.addCleanup(kill_if_ours, pid)
        yield self.assert_controller_answers()
        os.kill(pid, signal.SIGTERM)
        # Not our child: once it exits, whoever adopted it reaps it.
        wait_for(lambda: not process_alive(pid), f"daemon {pid} to exit")
        self.assertFalse(pid_file.exists())
        self.assertIn("controller listening on 127.0.0.1", log_file.read_text())


class ControllerGCTests(SynchronousTestCase):
    def test_tune_gc(self) -> None:
        """The controller freezes what startup made and raises the collector's
        thresholds to GC_THRESHOLDS."""
        import gc

        from ipkernel.cli import ipcontroller

        saved = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *saved)
        self.addCleanup(gc.unfreeze)
        before = gc.get_freeze_count()
        ipcontroller._tune_gc()
        self.assertEqual(gc.get_threshold(), ipcontroller.GC_THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), before)
