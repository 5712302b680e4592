"""``ipcluster --launcher ssh`` against real OpenSSH servers, and what it says when a host
cannot run engines.

The integration tests run Debian's ``sshd`` in network namespaces made for the test
(:mod:`tests.sshhosts`): ``ipcluster`` runs in a "head" namespace, each host is another
namespace with its own address, sshd, host key and home directory. Nothing is faked
between ``ipcluster`` and the engines: ssh, scp (over sftp), sshd, the remote shell.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel import __version__, paths
from ipkernel.cli.launchers.hostcheck import diagnose, prepare_command
from tests.cluster import child_env
from tests.commands import CLIProcess, gone, stop_ipcluster, wait_for
from tests.sshhosts import SSHSite

# The tree under test: remote engines must import it, not whatever ipkernel is installed.
ROOT = Path(__file__).resolve().parent.parent
HERE = " ".join(str(part) for part in sys.version_info[:3])
STARTUP = 90.0


def probe(python: str = HERE, version: str = __version__) -> str:
    return f"ipkernel-probe python {python}\nipkernel-probe ipkernel {version}\n"


class DiagnoseTests(SynchronousTestCase):
    """The message for each way a host can fail the check (ssh's and the shell's output as
    OpenSSH and a POSIX shell print them)."""

    def test_ready_host(self):
        """A host whose Python has this version and ipkernel's is ready: no message."""
        self.assertIsNone(diagnose("n1", "python3", 0, "motd line\n" + probe()))

    def test_unreachable_host(self):
        """ssh's connection errors (exit 255) say the host cannot be reached, and what to check."""
        for output in (
            "ssh: connect to host n1 port 22: Connection refused",
            "ssh: connect to host n1 port 22: No route to host",
            "ssh: connect to host n1 port 22: Connection timed out",
            "ssh: Could not resolve hostname n1: Name or service not known",
        ):
            message = diagnose("n1", "python3", 255, output + "\n")
            self.assertIn("n1: cannot reach the host over ssh (ssh: ", message)
            self.assertIn("that the host is up and runs sshd", message)

    def test_refused_key(self):
        """Permission denied says the key was refused and how to install it."""
        message = diagnose("bob@n1", "python3", 255, "bob@n1: Permission denied (publickey).")
        self.assertIn("bob@n1: the ssh login was refused (bob@n1: Permission denied", message)
        self.assertIn("ssh-copy-id bob@n1", message)
        self.assertIn("'ssh -o BatchMode=yes bob@n1 true'", message)

    def test_unknown_host_key(self):
        """A host key ssh cannot check says to connect once and accept it."""
        message = diagnose("n1", "python3", 255, "Host key verification failed.\n")
        self.assertIn("n1: ssh does not trust the host's key", message)
        self.assertIn("known_hosts", message)

    def test_no_such_python(self):
        """Exit 127/126 without the check's output: that Python cannot be run there."""
        message = diagnose("n1", "/opt/py/bin/python3", 127, "sh: 1: exec: /opt/py: not found")
        self.assertIn(
            "n1: /opt/py/bin/python3 cannot be run (sh: 1: exec: /opt/py: not found)", message
        )
        self.assertIn("--engine-python", message)

    def test_python_without_ipkernel(self):
        """A Python that cannot import the engine says which module is missing and to install."""
        output = (
            "ipkernel-probe python " + HERE + "\nTraceback (most recent call last):\n"
            "ModuleNotFoundError: No module named 'ipkernel'\n"
        )
        message = diagnose("n1", "python3", 1, output)
        self.assertIn("n1: python3 cannot import ipkernel (ModuleNotFoundError: No module", message)
        self.assertIn(f"pip install ipkernel=={__version__}", message)

    def test_other_python_version(self):
        """Another Python minor version is refused, naming both versions; the same minor
        with another micro version is fine."""
        message = diagnose("n1", "python3", 1, "ipkernel-probe python 3 99 1\nImportError: x\n")
        self.assertIn(
            f"n1: python3 is Python 3.99.1, but this host runs Python {HERE.replace(' ', '.')}",
            message,
        )
        minor = ".".join(HERE.split()[:2])
        self.assertIn(f"the same Python version ({minor}) as the clients", message)
        self.assertIn(f"Install Python {minor} with ipkernel there", message)
        same_minor = " ".join(HERE.split()[:2]) + " 99"
        self.assertIsNone(diagnose("n1", "python3", 0, probe(python=same_minor)))

    def test_other_ipkernel_version(self):
        """Another ipkernel version is refused, naming both."""
        message = diagnose("n1", "python3", 0, probe(version="0.0.1"))
        self.assertIn(f"n1: python3 has ipkernel 0.0.1, but this host has {__version__}", message)

    def test_other_failure(self):
        """Anything else (mkdir failing, say) is quoted with the exit code."""
        message = diagnose("n1", "python3", 1, "mkdir: cannot create directory: Read-only\n")
        self.assertEqual(
            message,
            "n1: the check before starting engines failed (exit code 1): "
            "mkdir: cannot create directory: Read-only",
        )

    def test_prepare_command_quotes(self):
        """The remote command quotes the directory and the Python for the remote shell."""
        command = prepare_command("my dir/sec", "/opt/my py/python")
        self.assertTrue(command.startswith("umask 077 && mkdir -p 'my dir/sec' && chmod 700 "))
        self.assertIn("&& exec '/opt/my py/python' -c ", command)


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _python_of_the_tree(path: Path, *extra_path: Path) -> Path:
    """A Python (this one) that imports the tree under test first."""
    pythonpath = ":".join(str(p) for p in (ROOT, *extra_path))
    return _script(path, f'#!/bin/sh\nPYTHONPATH={pythonpath} exec {sys.executable} "$@"\n')


class SSHClusterTests(TestCase):
    timeout = 240

    def ipcluster(self, site: SSHSite, env: dict, hosts: str, *args: str) -> CLIProcess:
        base = site.base
        (base / "hosts").write_text(hosts)
        argv = site.head_command(
            sys.executable,
            "-m",
            "ipkernel.cli.ipcluster",
            "--launcher",
            "ssh",
            "--hostfile",
            str(base / "hosts"),
            "--timeout",
            str(STARTUP),
            *args,
        )
        return CLIProcess(self, argv, env)

    def test_cluster_across_hosts(self):
        """Engines on two hosts over real ssh: the key file arrives 0600 in a 0700
        directory of each host's home, the engines dial the controller at --location and
        run code there, and `ipcluster stop` ends every remote engine."""
        base = Path(self.mktemp()).absolute()
        site = SSHSite(self, base, ["n1", "n2"])
        site.start()
        n1, n2 = site.hosts["n1"], site.hosts["n2"]
        python = _python_of_the_tree(base / "python-of-the-tree")
        env = child_env(base / "ipk")
        cluster = self.ipcluster(
            site,
            env,
            f"{n1.address} 2\n{n2.address}  # one engine\n",
            "--ip",
            "0.0.0.0",
            "--location",
            site.head_address,
            "--engine-python",
            str(python),
        )
        out = cluster.read_until("Connect with:", deadline=STARTUP)
        self.assertIn("a controller and 3 engines are running", out)

        engines = {label: site.engine_pids(label) for label in ("n1", "n2")}
        self.assertEqual({label: len(pids) for label, pids in engines.items()}, {"n1": 2, "n2": 1})
        local_key = (base / "ipk" / "security" / paths.ENGINE_FURL).read_text()
        self.assertIn(f"@{site.head_address}:", local_key)
        for host in (n1, n2):
            copied = host.home / ".ipkernel" / "security" / paths.ENGINE_FURL
            self.assertEqual(copied.read_text(), local_key)
            self.assertEqual(copied.stat().st_mode & 0o777, 0o600)
            self.assertEqual(copied.parent.stat().st_mode & 0o777, 0o700)

        client = textwrap.dedent(
            """
            import json
            from ipkernel import client
            mec = client.MultiEngineClient()
            mec.execute("import os; home = os.environ['HOME']; pid = os.getpid(); a = 6 * 7")
            print(json.dumps(mec.pull(("home", "pid", "a"))))
            """
        )
        done = site.head.command(sys.executable, "-c", client)
        result = subprocess.run(done, env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        pulled = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertEqual(
            sorted((home, a) for home, _, a in pulled),
            sorted([(str(n1.home), 42), (str(n1.home), 42), (str(n2.home), 42)]),
        )
        self.assertEqual(sorted(pid for _, pid, _ in pulled), sorted(engines["n1"] + engines["n2"]))

        remote = engines["n1"] + engines["n2"]
        stop_ipcluster(self, cluster, env, remote, "the remote engines to end")
        self.assertEqual([site.engine_pids(label) for label in ("n1", "n2")], [[], []])

    def test_hosts_that_cannot_run_engines(self):
        """Every host that cannot run engines is named in one message with what to do, and
        no engine starts anywhere: one unreachable (nothing listens), one that refuses the
        key, one whose Python lacks ipkernel, one whose Python is another version."""
        base = Path(self.mktemp()).absolute()
        site = SSHSite(self, base, ["good", "bare", "other", "locked"])
        site.alias("unreachable", "good", 2)
        site.start(refuse=("locked",))
        hosts = site.hosts
        # --engine-python venv/bin/python: each host's own, from its home directory.
        _python_of_the_tree(hosts["good"].home / "venv" / "bin" / "python")
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(hosts["bare"].home / "venv")],
            check=True,
            timeout=120,
        )
        fake_version = base / "python-3.99"
        fake_version.mkdir()
        (fake_version / "sitecustomize.py").write_text(
            "import sys\nsys.version_info = (3, 99, 0, 'final', 0)\n"
        )
        _python_of_the_tree(hosts["other"].home / "venv" / "bin" / "python", fake_version)
        env = child_env(base / "ipk")
        cluster = self.ipcluster(
            site,
            env,
            "".join(
                f"{name}\n"
                for name in (
                    hosts["good"].address,
                    hosts["bare"].address,
                    hosts["other"].address,
                    hosts["locked"].address,
                    "unreachable",
                )
            ),
            "--ip",
            "0.0.0.0",
            "--location",
            site.head_address,
            "--engine-python",
            "venv/bin/python",
        )
        code, _, err = cluster.wait(timeout=STARTUP)
        self.assertEqual(code, 1, err)
        self.assertIn("ipcluster: cannot start the engines: 4 of 5 hosts cannot run engines:", err)
        lines = {line.split(":", 1)[0].strip(): line for line in err.splitlines()}
        self.assertNotIn(hosts["good"].address, lines)
        self.assertIn("cannot reach the host over ssh (ssh: connect to host", lines["unreachable"])
        self.assertIn("Connection refused", lines["unreachable"])
        self.assertIn("the ssh login was refused", lines[hosts["locked"].address])
        self.assertIn("Permission denied (publickey)", lines[hosts["locked"].address])
        self.assertIn(
            "venv/bin/python cannot import ipkernel (ModuleNotFoundError: No module named "
            "'ipkernel')",
            lines[hosts["bare"].address],
        )
        self.assertIn(
            "venv/bin/python is Python 3.99.0, but this host runs Python",
            lines[hosts["other"].address],
        )
        for host in hosts:
            self.assertEqual(site.engine_pids(host), [])
        self.assertFalse(
            (hosts["good"].home / ".ipkernel" / "security" / paths.ENGINE_FURL).exists()
        )

    def test_remote_engines_end_with_a_killed_ipcluster(self):
        """Killed with SIGKILL (no chance to stop anything), ipcluster still leaves no
        engine running on the hosts: each watches its standard input, which the local ssh
        client carries and which ends with ipcluster."""
        base = Path(self.mktemp()).absolute()
        site = SSHSite(self, base, ["n1"])
        site.start()
        host = site.hosts["n1"]
        python = _python_of_the_tree(base / "python-of-the-tree")
        env = child_env(base / "ipk")
        cluster = self.ipcluster(
            site,
            env,
            f"{host.address} 2\n",
            "--ip",
            "0.0.0.0",
            "--location",
            site.head_address,
            "--engine-python",
            str(python),
        )
        cluster.read_until("Connect with:", deadline=STARTUP)
        engines = site.engine_pids("n1")
        self.assertEqual(len(engines), 2)
        cluster.proc.kill()
        cluster.proc.wait(30)
        wait_for(lambda: all(gone(pid) for pid in engines), "the remote engines to end")
        wait_for(lambda: site.head.namespace.pids() == [], "the controller and ssh to end")
