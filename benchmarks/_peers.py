"""The peers of ``compare.py``: ipyparallel, Dask distributed (plain TCP and TLS) and Ray.

Imported by ``_round.py`` inside the peers' virtual environment (``benchmarks/.peers-venv``,
made by ``compare.py --setup``); nothing here is imported by ipkernel or its tests.

Each class drives its system the way its documentation starts a local cluster, with two
engines/workers on 127.0.0.1 and no dashboards, and maps every workload of the round onto
that system's closest equivalent (the choices are listed in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _round import ENGINES, System, descendants, stop_pids

START_TIMEOUT = 120.0


class IpyparallelSystem(System):
    """``ipyparallel.Cluster(n=2)``: an ``ipcontroller`` (hub plus its scheduler processes)
    and two ``ipengine`` processes, in a private IPYTHONDIR.

    - execute: ``rc[0].execute('a=1', block=True)``;
    - task: ``load_balanced_view().apply_sync(noop)``; throughput: ``apply_async`` in a loop,
      then ``rc.wait``;
    - push/pull: ``rc[0].push`` / ``rc[0].pull``; scatter/gather and map: ``rc[:]``
      (``map_sync``, which splits the sequence into one contiguous block per engine as
      ``mec.map`` does).
    """

    name = "ipyparallel"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="compare-ipp-"))
        # Profiles, key files and logs go to the temp dir, never to ~/.ipython.
        os.environ["IPYTHONDIR"] = str(self.dir)
        self.cluster = None
        self.rc = None

    def start(self) -> float:
        import ipyparallel

        t0 = time.perf_counter()
        self.cluster = ipyparallel.Cluster(
            n=ENGINES, controller_ip="127.0.0.1", log_level=logging.WARNING
        )
        self.cluster.start_cluster_sync()
        self.rc = self.cluster.connect_client_sync()
        self.rc.wait_for_engines(ENGINES, timeout=START_TIMEOUT)
        startup = time.perf_counter() - t0
        self.one = self.rc[0]
        self.all = self.rc[:]
        self.balanced = self.rc.load_balanced_view()
        return startup

    def controller_pid(self) -> int:
        return self.cluster.controller.process.pid

    def execute(self, func: Callable[[], None]) -> None:
        self.one.execute("a=1", block=True)

    def task(self, func: Callable[[], None]) -> None:
        self.balanced.apply_sync(func)

    def tasks(self, func: Callable[[], None], n: int) -> bool:
        self.results = [self.balanced.apply_async(func) for _ in range(n)]
        self.rc.wait(self.results)
        return True

    def check_tasks(self) -> None:
        if not all(result.successful() for result in self.results):
            raise AssertionError("ipyparallel: a task failed")
        self.results = []

    def push(self, array: object) -> None:
        self.one.push({"a": array}, block=True)

    def pull(self) -> object:
        return self.one.pull("a", block=True)

    def scatter(self, seq: list) -> None:
        self.all.scatter("x", seq, block=True)

    def gather(self) -> list:
        return self.all.gather("x", block=True)

    def map(self, func: Callable[[int], int], seq: range) -> list:
        return self.all.map_sync(func, seq)

    def stop(self) -> None:
        if self.rc is not None:
            self.rc.close()
            self.rc = None
        if self.cluster is not None:
            self.cluster.stop_cluster_sync()
            self.cluster = None
        shutil.rmtree(self.dir, ignore_errors=True)


class DaskSystem(System):
    """A ``dask scheduler`` process and ``dask worker --nworkers 2 --nthreads 1`` (the
    default nanny processes included), as separate processes like ipkernel's controller and
    engines, over ``tcp://`` or, with ``tls``, ``tls://`` with a ``Security.temporary()``
    certificate.

    Dask has no "run this code on that worker"; the closest equivalents:

    - execute: ``client.submit(noop, workers=[w0]).result()`` (a task pinned to one worker);
    - task: ``client.submit(noop).result()``; throughput: ``submit`` in a loop, then
      ``wait``. ``pure=False`` everywhere, so that no repetition reuses an earlier result;
    - push/pull: ``client.scatter(array, workers=[w0])`` / ``client.gather(future)``, both
      through the scheduler (the default for a client outside the cluster), as ipkernel's
      and ipyparallel's go through their controller; with ``direct``, straight between
      the client and the worker (``direct=True``), as ipkernel's direct links;
    - scatter/gather: the list split into two contiguous halves, ``client.scatter(halves)``
      (the scheduler puts one on each worker), ``client.gather`` and joining the halves
      again, all timed;
    - map: ``client.gather(client.map(square, seq))``: one task per item, which is how Dask
      maps.
    """

    def __init__(self, tls: bool, direct: bool = False) -> None:
        self.tls = tls
        #: True: data goes straight between the client and the workers (``direct=True``).
        self.direct = direct
        self.name = ("dask-tls" if tls else "dask") + ("-direct" if direct else "")
        self.dir = Path(tempfile.mkdtemp(prefix=f"compare-{self.name}-"))
        self.procs: list[subprocess.Popen] = []
        self.futures: list = []
        self.client = None
        self.pushed = None
        self.scattered: list = []

    def _tls_args(self):
        """The certificate files for the command lines and the client's ``Security``."""
        from distributed.security import Security

        security = Security.temporary()
        # One self-signed certificate for every role, written out for the command lines.
        cert, key = self.dir / "cert.pem", self.dir / "key.pem"
        cert.write_text(security.tls_ca_file)
        key.write_text(security.tls_scheduler_key)
        key.chmod(0o600)
        args = ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
        return args, security

    def _spawn(self, module: str, args: list[str], log: str) -> None:
        with open(self.dir / log, "ab") as out:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", module, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                )
            )

    def start(self) -> float:
        from distributed import Client

        t0 = time.perf_counter()
        common = ["--no-dashboard"]
        security = None
        if self.tls:
            tls_args, security = self._tls_args()
            common += ["--protocol", "tls", *tls_args]
        scheduler_file = self.dir / "scheduler.json"
        self._spawn(
            "distributed.cli.dask_scheduler",
            ["--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(scheduler_file)]
            + common,
            "scheduler.log",
        )
        # The workers wait for the scheduler file by themselves, as ipkernel's engines wait
        # for the controller's key file: both start at once.
        self._spawn(
            "distributed.cli.dask_worker",
            [
                "--scheduler-file",
                str(scheduler_file),
                "--host",
                "127.0.0.1",
                "--nworkers",
                str(ENGINES),
                "--nthreads",
                "1",
                "--local-directory",
                str(self.dir),
            ]
            + common,
            "workers.log",
        )
        deadline = t0 + START_TIMEOUT
        while not scheduler_file.exists() or not scheduler_file.stat().st_size:
            self._check_running(deadline)
            time.sleep(0.005)
        self.client = Client(
            scheduler_file=str(scheduler_file), security=security, timeout=START_TIMEOUT
        )
        self.client.wait_for_workers(ENGINES, timeout=START_TIMEOUT)
        startup = time.perf_counter() - t0
        self.workers = sorted(self.client.scheduler_info()["workers"])
        return startup

    def _check_running(self, deadline: float) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[2]} exited; see its log in {self.dir}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{self.name} did not start in time; see the logs in {self.dir}")

    def controller_pid(self) -> int:
        return self.procs[0].pid

    def execute(self, func: Callable[[], None]) -> None:
        self.client.submit(func, pure=False, workers=self.workers[:1]).result()

    def task(self, func: Callable[[], None]) -> None:
        self.client.submit(func, pure=False).result()

    def tasks(self, func: Callable[[], None], n: int) -> bool:
        from distributed import wait

        self.futures = [self.client.submit(func, pure=False) for _ in range(n)]
        wait(self.futures)
        return True

    def check_tasks(self) -> None:
        if any(future.status != "finished" for future in self.futures):
            raise AssertionError(f"{self.name}: a task failed")
        self.futures = []  # releases them in the cluster

    def push(self, array: object) -> None:
        # Release the previous copy first, as a push to the same name replaces it.
        self.pushed = None
        # hash=False: a fresh key each time, so that no repetition finds the data there.
        self.pushed = self.client.scatter(
            array, workers=self.workers[:1], hash=False, direct=self.direct
        )

    def pull(self) -> object:
        return self.client.gather(self.pushed, direct=self.direct)

    def scatter(self, seq: list) -> None:
        self.scattered = []
        half = (len(seq) + 1) // 2
        self.scattered = self.client.scatter(
            [seq[:half], seq[half:]], hash=False, direct=self.direct
        )

    def gather(self) -> list:
        first, second = self.client.gather(self.scattered, direct=self.direct)
        return first + second

    def map(self, func: Callable[[int], int], seq: range) -> list:
        return self.client.gather(self.client.map(func, seq, pure=False))

    def stop(self) -> None:
        self.pushed = None
        self.scattered = []
        self.futures = []
        if self.client is not None:
            self.client.close()
            self.client = None
        # SIGTERM lets the nannies stop their workers and the scheduler close cleanly.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                children = descendants(proc.pid)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                stop_pids(children)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


class RaySystem(System):
    """``ray.init(num_cpus=2)``: a local Ray instance (its GCS server, raylet with the
    shared-memory object store, and helpers), with two actors standing for the engines,
    each holding a namespace, and no dashboard.

    - execute: ``ray.get(actor0.execute.remote('a=1'))`` (the actor runs the code in its
      namespace); task: ``ray.get(noop.remote())``, a Ray task; throughput: ``remote()``
      in a loop, then ``ray.get`` of them all;
    - push/pull: ``actor0.push.remote({'a': array})`` / ``actor0.pull.remote('a')``;
      scatter/gather: one half per actor; map: one task per item (as Dask);
    - share: ``ray.put(array)`` (written into the object store, which actors read without
      a copy); share read: ``ray.get(actor0.total.remote(ref))``, the actor summing it.

    Actors ask for no CPU, so the two CPUs stay for tasks, as Ray's documentation
    recommends for actors that mostly wait.
    """

    name = "ray"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="compare-ray-"))
        # No usage statistics sent anywhere; everything stays on this machine.
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        self.actors: list = []
        self.pending: list = []
        self.shared = None
        self.started = False

    def start(self) -> float:
        import ray

        @ray.remote(num_cpus=0)
        class Engine:
            def __init__(self) -> None:
                self.namespace: dict = {}

            def ready(self) -> bool:
                return True

            def execute(self, code: str) -> None:
                exec(code, self.namespace)

            def push(self, values: dict) -> None:
                self.namespace.update(values)

            def pull(self, key: str) -> object:
                return self.namespace[key]

            def total(self, array) -> float:
                return float(array.sum())

        t0 = time.perf_counter()
        ray.init(
            num_cpus=ENGINES,
            include_dashboard=False,
            _temp_dir=str(self.dir),
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        self.started = True
        self.actors = [Engine.remote() for _ in range(ENGINES)]
        ray.get([actor.ready.remote() for actor in self.actors])
        startup = time.perf_counter() - t0
        self.remote = {}
        return startup

    def _task(self, func: Callable):
        import ray

        key = id(func)
        if key not in self.remote:
            self.remote[key] = ray.remote(num_cpus=1)(func)
        return self.remote[key]

    def controller_pid(self) -> int:
        """The GCS server, Ray's head: it knows the actors, tasks and objects."""
        for pid in descendants(os.getpid()):
            if "gcs_server" in _cmdline(pid):
                return pid
        raise RuntimeError("no gcs_server process")

    def controller_pids(self) -> list[int]:
        """Every Ray process but the workers (actors and task workers): the GCS server,
        the raylet (which holds the object store) and their helpers."""
        return [
            pid
            for pid in descendants(os.getpid())
            if not _cmdline(pid).startswith("ray::") and "default_worker" not in _cmdline(pid)
        ]

    def execute(self, func: Callable[[], None]) -> None:
        import ray

        ray.get(self.actors[0].execute.remote("a=1"))

    def task(self, func: Callable[[], None]) -> None:
        import ray

        ray.get(self._task(func).remote())

    def tasks(self, func: Callable[[], None], n: int) -> bool:
        import ray

        remote = self._task(func)
        self.pending = [remote.remote() for _ in range(n)]
        ray.get(self.pending)
        return True

    def check_tasks(self) -> None:
        self.pending = []  # ray.get raised already if a task failed

    def push(self, array: object) -> None:
        import ray

        ray.get(self.actors[0].push.remote({"a": array}))

    def pull(self) -> object:
        import ray

        return ray.get(self.actors[0].pull.remote("a"))

    def scatter(self, seq: list) -> None:
        import ray

        half = (len(seq) + 1) // 2
        parts = [seq[:half], seq[half:]]
        ray.get([a.push.remote({"x": p}) for a, p in zip(self.actors, parts, strict=True)])

    def gather(self) -> list:
        import ray

        first, second = ray.get([a.pull.remote("x") for a in self.actors])
        return first + second

    def map(self, func: Callable[[int], int], seq: range) -> list:
        import ray

        remote = self._task(func)
        return ray.get([remote.remote(x) for x in seq])

    def share(self, array: object) -> None:
        import ray

        self.shared = None  # frees the previous copy, as a new push to a name would
        self.shared = ray.put(array)

    def read_shared(self) -> float:
        import ray

        return ray.get(self.actors[0].total.remote(self.shared))

    def stop(self) -> None:
        self.shared = None
        self.pending = []
        self.actors = []
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def make_system(name: str) -> System:
    """The peer called ``name``: ``ipyparallel``, ``dask``, ``dask-tls``,
    ``dask-tls-direct`` or ``ray``."""
    if name == "ipyparallel":
        return IpyparallelSystem()
    if name in ("dask", "dask-tls"):
        return DaskSystem(tls=name == "dask-tls")
    if name == "dask-tls-direct":
        return DaskSystem(tls=True, direct=True)
    if name == "ray":
        return RaySystem()
    raise ValueError(f"unknown system {name!r}")
