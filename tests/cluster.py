"""Real clusters for integration tests: ``ipcontroller`` and ``ipengine`` processes.

Each :class:`Cluster` lives in its own temporary ``IPKERNEL_DIR`` on 127.0.0.1 and is
stopped by PID in the test's cleanup, whatever happened. Tests talk to it with the
asynchronous client in trial's reactor, or run a script that uses the synchronous client
in a child process (:meth:`Cluster.run_script`), since the synchronous client runs the
reactor in a thread of its own and trial needs it in the main thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks

from ipkernel import paths
from ipkernel.client.multiengine_async import AsyncMultiEngineClient
from ipkernel.errors import ControllerUnreachable
from ipkernel.security import read_key_file

DEADLINE = 30.0


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def child_env(ipkernel_dir: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["IPKERNEL_DIR"] = str(ipkernel_dir)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """End a child we started, by its PID: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()


class Cluster:
    """A controller and ``n`` engines, started for one test and stopped in its cleanup."""

    def __init__(
        self,
        testcase,
        n: int = 2,
        controller_args: tuple[str, ...] = (),
        env: dict | None = None,
    ) -> None:
        self.testcase = testcase
        self.n = n
        self.dir = Path(testcase.mktemp()).absolute()
        self.dir.mkdir(parents=True)
        self.env = child_env(self.dir, env)
        self.controller_args = controller_args
        self.controller: subprocess.Popen | None = None
        self.engines: list[subprocess.Popen] = []
        self.clients: list[AsyncMultiEngineClient] = []
        testcase.addCleanup(self.stop)

    @property
    def security(self) -> Path:
        return self.dir / "security"

    @property
    def mec_furl(self) -> Path:
        return self.security / paths.MEC_FURL

    def spawn(self, module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            python_command(module, *args),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_controller(self, *args: str) -> subprocess.Popen:
        self.controller = self.spawn("ipkernel.cli.ipcontroller", *self.controller_args, *args)
        return self.controller

    def start_engine(self, *args: str) -> subprocess.Popen:
        engine = self.spawn("ipkernel.cli.ipengine", *args)
        self.engines.append(engine)
        return engine

    @inlineCallbacks
    def start(self):
        """Start everything; fire with a connected asynchronous client once n engines are in."""
        self.start_controller()
        for _ in range(self.n):
            self.start_engine()
        client = yield self.connect()
        yield self.wait_for_engines(client, self.n)
        return client

    @inlineCallbacks
    def connect(self, furl: Path | None = None, transport: str | None = None):
        """Fire with a new asynchronous MultiEngine client (waits for the key file).

        ``transport`` is the client's (``'auto'``, ``'stream'`` or ``'relay'``); by default
        the cluster's ``IPKERNEL_TRANSPORT``, if its environment sets one.
        """
        transport = transport or self.env.get("IPKERNEL_TRANSPORT")
        furl = furl or self.mec_furl
        yield poll(lambda: furl.exists(), f"key file {furl}")
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                client = yield AsyncMultiEngineClient.connect(
                    reactor, read_key_file(furl), str(furl), transport
                )
            except ControllerUnreachable:
                # A reused key file exists before the restarted controller listens.
                if time.monotonic() > deadline:
                    raise
                yield task.deferLater(reactor, 0.02, lambda: None)
            else:
                self.clients.append(client)
                return client

    @inlineCallbacks
    def wait_for_engines(self, client: AsyncMultiEngineClient, n: int):
        deadline = time.monotonic() + DEADLINE
        while True:
            ids = yield client.get_ids()
            if len(ids) >= n:
                return ids
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(ids)} of {n} engines registered in time")
            yield task.deferLater(reactor, 0.02, lambda: None)

    def run_script(self, code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run ``code`` with the synchronous client in a child Python; fail the test on error."""
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            self.testcase.fail(
                f"script failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def stop(self) -> Deferred | None:
        for client in self.clients:
            client.disconnect()
        for proc in [*self.engines, self.controller]:
            if proc is not None:
                stop_process(proc)
        # Let the reactor notice the closed client connections before the next test.
        return task.deferLater(reactor, 0, lambda: None)


@inlineCallbacks
def poll(predicate, what: str, deadline: float = DEADLINE, interval: float = 0.02):
    """Fire once ``predicate()`` is true; fail after ``deadline`` seconds naming ``what``."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, interval, lambda: None)
