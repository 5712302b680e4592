"""Tasks through faults: the controller SIGKILLed and restarted, engines killed; one JSON line.

    python benchmarks/bench_chaos.py [--tasks 1000] [--engines 4] [--engine-kills 3]

A controller with ``--db`` and 4 engines run 1,000 ``MapTask``s of random 0–50 ms work
(seeded), each with ``retries=2``, submitted at once from one ``TaskClient``. While they
run, the benchmark:

1. SIGKILLs the controller once a quarter of the tasks are done, and starts it again at
   once with ``--reuse-keys --db`` (same key files, same database);
2. once half are done, SIGKILLs ``--engine-kills`` engines and starts as many new ones.
   ``ipcluster`` does not replace crashed engines itself yet, so the benchmark does; for
   the same reason it starts ``ipcontroller`` and the engines itself rather than through
   ``ipcluster``, which stops its engines when its controller dies.

The client keeps going by itself (it logs in again, sends again what was lost, and its
``barrier`` waits on). Figures: ``lost`` (tasks without a result, must be 0), ``wrong``
(results not the expected value, must be 0), ``failed`` (tasks that ran out of retries),
``controller_restart_to_progress_s`` (from starting the new controller until a client
sees a task completing again), ``total_s`` against ``baseline_s``, the same workload on a
fresh cluster with no fault (run first), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def work(i: int, ms: float) -> int:
    import time

    time.sleep(ms / 1000)
    return i * i


class Processes:
    """A controller and engines in one private ``IPKERNEL_DIR``, stopped by PID."""

    def __init__(self, directory: Path, db: Path) -> None:
        self.env = dict(os.environ, IPKERNEL_DIR=str(directory))
        self.db = db
        self.controller: subprocess.Popen | None = None
        self.engines: list[subprocess.Popen] = []
        self.tc_furl = directory / "security" / "ipcontroller-tc.furl"

    def spawn(self, module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_controller(self, *args: str) -> None:
        self.controller = self.spawn("ipkernel.cli.ipcontroller", "--db", str(self.db), *args)

    def start_engines(self, n: int) -> None:
        self.engines += [self.spawn("ipkernel.cli.ipengine") for _ in range(n)]

    def stop(self) -> None:
        procs = [p for p in (self.controller, *self.engines) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(predicate, what: str, deadline: float = 60.0, interval: float = 0.02) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def one_run(args: argparse.Namespace, faults: bool) -> dict:
    """Run the workload on a fresh cluster (with the faults if asked); its figures."""
    from ipkernel import client

    directory = Path(tempfile.mkdtemp(prefix="ipkernel-chaos-"))
    os.environ["IPKERNEL_DIR"] = str(directory)
    procs = Processes(directory, directory / "tasks.db")
    figures: dict = {}
    try:
        procs.start_controller()
        wait_until(procs.tc_furl.exists, "the key files")
        procs.start_engines(args.engines)
        mec = client.MultiEngineClient()
        wait_until(lambda: len(mec.get_ids()) >= args.engines, "the engines")
        mec.close()
        tc = client.TaskClient()
        rng = random.Random(args.seed)
        work_ms = [rng.uniform(0, 50) for _ in range(args.tasks)]
        start = time.perf_counter()
        tids = [tc.run(client.MapTask(work, (i, ms), retries=2)) for i, ms in enumerate(work_ms)]

        def done() -> int:
            status = tc.queue_status()
            return status["succeeded"] + status["failed"]

        if faults:
            wait_until(lambda: done() >= args.tasks // 4, "a quarter of the tasks")
            os.kill(procs.controller.pid, signal.SIGKILL)
            procs.controller.wait()
            restarted = time.perf_counter()
            procs.start_controller("--reuse-keys")
            first = done()  # the client logs in again by itself
            wait_until(lambda: done() > first, "a task completing after the restart", 120)
            figures["controller_restart_to_progress_s"] = round(time.perf_counter() - restarted, 3)
            if args.engine_kills:
                wait_until(lambda: done() >= args.tasks // 2, "half of the tasks")
                victims = procs.engines[: args.engine_kills]
                for engine in victims:
                    os.kill(engine.pid, signal.SIGKILL)
                for engine in victims:
                    engine.wait()
                procs.engines = procs.engines[args.engine_kills :]
                procs.start_engines(args.engine_kills)
        tc.barrier(tids)
        figures["total_s"] = round(time.perf_counter() - start, 3)
        results = tc.get_task_results(tids)
        lost = sum(r is None for r in results)
        failed = [r for r in results if r is not None and r.failure is not None]
        wrong = sum(
            r is not None and r.failure is None and r.result != i * i for i, r in enumerate(results)
        )
        figures.update(lost=lost, wrong=wrong, failed=len(failed))
        if failed:
            figures["first_failure"] = str(failed[0].failure)[:200]
        tc.close()
    finally:
        procs.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--engine-kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args(argv)
    baseline = one_run(args, faults=False)
    faulty = one_run(args, faults=True)
    figures = {
        "benchmark": "chaos",
        "tasks": args.tasks,
        "engines": args.engines,
        "engine_kills": args.engine_kills,
        "engines_replaced_by": "the benchmark (ipcluster does not replace engines yet)",
        **faulty,
        "baseline_s": baseline["total_s"],
        "baseline_lost": baseline["lost"],
        "baseline_wrong": baseline["wrong"],
        "ratio_total_to_baseline": round(faulty["total_s"] / baseline["total_s"], 3),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))
    return 0 if faulty["lost"] == 0 and faulty["wrong"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
