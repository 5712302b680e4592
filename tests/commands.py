"""Commands run as child processes in tests, and the processes they start, known by PID.

:class:`CLIProcess` runs a command with its output read under a deadline and is stopped in
the test's cleanup, with every PID the test learnt of that still runs ipkernel code
(:func:`kill_if_ours`); :func:`gone` and :func:`wait_for` check and wait without sleeps
longer than a poll.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster import stop_process

DEADLINE = 30.0


def gone(pid: int) -> bool:
    """Whether no process ``pid`` exists (a zombie not yet reaped still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def kill_if_ours(pid: int) -> None:
    """SIGKILL ``pid`` if it is still running ipkernel code (never anything else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"ipkernel" in cmdline or b"twistd" in cmdline:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_for(predicate, what: str, deadline: float = DEADLINE) -> None:
    """Return once ``predicate()`` is true; raise AssertionError naming ``what`` after
    ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stop_ipcluster(testcase, cluster: CLIProcess, env: dict, engines, what: str) -> None:
    """``ipcluster stop``: it and the running ``cluster`` exit 0, and every pid of
    ``engines`` ends (``what`` names them in a timeout)."""
    stop = subprocess.run(
        [sys.executable, "-m", "ipkernel.cli.ipcluster", "stop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    testcase.assertEqual(stop.returncode, 0, stop.stderr)
    code, _, err = cluster.wait()
    testcase.assertEqual(code, 0, err)
    wait_for(lambda: all(gone(pid) for pid in engines), what)


class CLIProcess:
    """A command run as a child process; output read with a deadline; killed in cleanup."""

    def __init__(self, testcase, argv, env, cwd=None):
        self.testcase = testcase
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out = b""
        self.known_pids: set[int] = set()
        testcase.addCleanup(self.cleanup)

    def read_until(self, text: str, deadline: float = DEADLINE) -> str:
        """Read stdout until ``text`` appears; fail (with stderr) if the deadline passes first."""
        end = time.monotonic() + deadline
        fd = self.proc.stdout.fileno()
        while text.encode() not in self.out:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.out += chunk
        if text.encode() not in self.out:
            self.proc.kill()
            self.testcase.fail(
                f"{text!r} not printed; stdout: {self.out.decode()!r}; "
                f"stderr: {self.proc.stderr.read().decode()!r}"
            )
        return self.out.decode()

    def wait(self, timeout: float = DEADLINE) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, (self.out + out).decode(), err.decode()

    def cleanup(self) -> None:
        stop_process(self.proc)
        for pid in self.known_pids:
            kill_if_ours(pid)
