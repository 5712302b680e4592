"""One controller with many engines: how its costs grow. Prints one JSON line.

    python benchmarks/bench_scale.py [--sizes 2,8,32,128,1000] [--repeat N]

For each number of engines N, a fresh ``ipcontroller`` in a temporary ``IPKERNEL_DIR``
and N engines started cheaply: ``python -m ipkernel.cli.manyengines`` processes (one for
up to 32 engines, then up to 4, N split between them), each engine a real TLS connection
that logs in and registers, with its own ``EngineCore`` and namespace. Under
``"N"`` in the output:

- ``register_s``: from the first engine process starting to dial (its own report) until
  a client's ``get_ids()`` lists all N;
- ``execute_s``: blocking ``mec.execute('a=1')`` on all N (median of ``--repeat``);
- ``scatter_s`` / ``gather_s``: ``list(range(1_000_000))`` over all N (medians);
- ``tasks_s`` / ``tasks_per_s``: 10,000 no-op ``MapTask``s submitted, then ``barrier``
  (one run);
- ``controller_rss_idle_MiB`` (before any engine, a client connected),
  ``controller_rss_engines_MiB`` (N engines registered, idle, after one ``execute``),
  ``controller_kib_per_engine`` (the difference over N), ``controller_rss_end_MiB``
  (after the workloads);
- ``controller_cpu_*_s``: the controller's CPU time (user + system) during registration,
  the executes, and the tasks.

Also ``open_files_soft`` / ``open_files_hard``: this process's descriptor limits (the
controller and the engine processes raise their soft limit to the hard one), and
``listen_overflows``: connections the kernel turned away from a full listen queue during
the whole run (``TcpExtListenOverflows``, every process on the host). ``--profile
PREFIX`` runs each controller under ``cProfile`` and writes ``PREFIX-N.prof`` (the figures
are then slower). Targets (issue 14): register 1,000 in under 10 s, execute on all 1,000
in under 1 s, controller memory under 100 KiB per idle engine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _cluster import median_time
from _proc import cpu_seconds, rss_mib

ENGINE_MARKER = "ipkernel-many:"


def noop(*args):
    return None


class Controller:
    """``ipcontroller`` in a temporary IPKERNEL_DIR, and engine processes for it."""

    def __init__(self, profile: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ipkernel-scale-"))
        self.env = dict(os.environ, IPKERNEL_DIR=str(self.dir))
        self.security = self.dir / "security"
        profiler = ["-m", "cProfile", "-o", profile] if profile else []
        self.proc = subprocess.Popen(
            [sys.executable, *profiler, "-m", "ipkernel.cli.ipcontroller", "--no-web"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.engines: list[subprocess.Popen] = []
        deadline = time.monotonic() + 60
        while not (self.security / "ipcontroller-mec.furl").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the controller did not write its key files")
            time.sleep(0.02)

    def start_engines(self, n: int) -> list[float]:
        """Start engine processes for ``n`` engines; fire when each reports it dials."""
        procs = 1 if n <= 32 else min(4, n // 32)
        counts = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        started: list[float] = []
        for count in counts:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ipkernel.cli.manyengines", str(count)],
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.engines.append(proc)
        for proc in self.engines[-procs:]:
            assert proc.stdout is not None
            fields = proc.stdout.readline().split()
            if fields[:2] != [ENGINE_MARKER, "connecting"]:
                raise RuntimeError(f"an engine process said {fields!r}")
            started.append(float(fields[3]))
            # Keep reading its output, so that it never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
        return started

    def stop(self) -> None:
        for proc in [*self.engines, self.proc]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.engines, self.proc]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def listen_overflows() -> int | None:
    """The host's count of connections dropped for a full listen queue, if readable."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def one_size(n: int, repeat: int, tasks: int, profile: str | None) -> dict:
    from ipkernel import client

    figures: dict[str, float] = {}
    controller = Controller(f"{profile}-{n}.prof" if profile else None)
    pid = controller.proc.pid
    try:
        mec = client.MultiEngineClient(str(controller.security / "ipcontroller-mec.furl"))
        time.sleep(0.5)
        figures["controller_rss_idle_MiB"] = round(rss_mib(pid), 1)
        cpu0 = cpu_seconds(pid)
        started = controller.start_engines(n)
        deadline = time.monotonic() + 300
        while len(mec.get_ids()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(mec.get_ids())} of {n} engines registered")
            time.sleep(0.01)
        figures["register_s"] = round(time.time() - min(started), 3)
        figures["controller_cpu_register_s"] = round(cpu_seconds(pid) - cpu0, 3)

        mec.execute("a=1")
        time.sleep(0.5)
        rss = rss_mib(pid)
        figures["controller_rss_engines_MiB"] = round(rss, 1)
        figures["controller_kib_per_engine"] = round(
            (rss - figures["controller_rss_idle_MiB"]) * 1024 / n, 1
        )

        cpu0 = cpu_seconds(pid)
        figures["execute_s"] = round(median_time(lambda: mec.execute("a=1"), repeat, warmup=0), 4)
        figures["controller_cpu_execute_s"] = round((cpu_seconds(pid) - cpu0) / repeat, 4)
        data = list(range(1_000_000))
        figures["scatter_s"] = round(
            median_time(lambda: mec.scatter("x", data), repeat, warmup=0), 4
        )
        figures["gather_s"] = round(median_time(lambda: mec.gather("x"), repeat, warmup=0), 4)
        if mec.gather("x") != data:
            raise AssertionError("gather did not give back what was scattered")
        mec.execute("x = None")

        tc = client.TaskClient(str(controller.security / "ipcontroller-tc.furl"))
        tc.barrier([tc.run(client.MapTask(noop)) for _ in range(100)])
        cpu0 = cpu_seconds(pid)
        start = time.perf_counter()
        tc.barrier([tc.run(client.MapTask(noop)) for _ in range(tasks)])
        elapsed = time.perf_counter() - start
        figures["tasks_s"] = round(elapsed, 3)
        figures["tasks_per_s"] = round(tasks / elapsed)
        figures["controller_cpu_tasks_s"] = round(cpu_seconds(pid) - cpu0, 3)
        tc.clear()
        tc.close()
        figures["controller_rss_end_MiB"] = round(rss_mib(pid), 1)
        mec.close()
    finally:
        controller.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2,8,32,128,1000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="run each controller under cProfile, writing PREFIX-N.prof (slower figures)",
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    figures: dict[str, object] = {
        "benchmark": "scale",
        "python": platform.python_version(),
        "open_files_soft": soft,
        "open_files_hard": hard,
    }
    overflows = listen_overflows()
    for n in (int(s) for s in args.sizes.split(",")):
        figures[str(n)] = one_size(n, args.repeat, args.tasks, args.profile)
    if overflows is not None:
        figures["listen_overflows"] = (listen_overflows() or 0) - overflows
    figures["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
