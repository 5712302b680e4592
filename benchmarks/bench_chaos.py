"""Tasks through faults: engines and the controller SIGKILLed under ipcluster --db; one JSON line.

    python benchmarks/bench_chaos.py [--tasks 1000] [--engines 4] [--engine-kills 3]

``ipcluster -n 4 --db`` runs 1,000 ``MapTask``s of random 0-50 ms work (seeded), each with
``retries=2``, submitted at once from one blocking ``TaskClient``. While they run, the
benchmark SIGKILLs, at random moments (seeded) within the first 80 % of the run without
faults, three engines (``ipcluster`` replaces each) and the controller once (``ipcluster``
starts it again with ``--reuse-keys --db``); the victims are read from ``ipcluster``'s pid
file. The client keeps going by itself: it logs in again, sends again what was lost, and
its ``barrier`` waits on.

Figures: ``lost`` (tasks without a result, must be 0), ``failed`` (tasks that ran out of
retries, must be 0), ``wrong`` (results not the expected value, must be 0),
``restart_to_progress_s`` (from the new controller process appearing in the pid file to
the client seeing a task complete again; target under 5 s), ``kill_to_progress_s`` (the
same from the SIGKILL), ``total_s`` against ``baseline_s`` (the same workload on a fresh
``ipcluster --db`` with no fault, run first) and their ratio (target under 1.5).
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


def children(directory: Path) -> list[tuple[str, int]]:
    """``(role, pid)`` of the processes ipcluster lists in its pid file now."""
    lines = (directory / "ipcluster.pid").read_text().splitlines()[1:]
    return [(role, int(pid)) for role, pid in (line.split() for line in lines)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def controller_pid(directory: Path) -> int:
    return next(pid for role, pid in children(directory) if role == "controller")


def wait_until(predicate, what: str, deadline: float = 60.0, interval: float = 0.01) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


class IPCluster:
    """``ipcluster start -n N --db`` in a private ``IPKERNEL_DIR``, stopped at the end."""

    def __init__(self, engines: int) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ipkernel-chaos-"))
        env = dict(os.environ, IPKERNEL_DIR=str(self.directory))
        db = self.directory / "tasks.db"
        output = self.directory / "ipcluster.out"
        with open(output, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ipkernel.cli.ipcluster", "-n", str(engines)]
                + ["--db", str(db)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def started() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ipcluster exited: {output.read_text()}")
            return "Connect with:" in output.read_text()

        wait_until(started, "ipcluster to start its engines")
        self.seen: set[int] = {pid for _, pid in children(self.directory)}

    def stop(self) -> None:
        self.seen |= {pid for _, pid in children(self.directory)}
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self.seen:  # anything ipcluster left behind: by PID, ours only
            try:
                if b"ipkernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)


def finished(tc) -> int:
    status = tc.queue_status()
    return status["succeeded"] + status["failed"]


def kill_engine(cluster: IPCluster, rng: random.Random) -> int:
    engines = [pid for role, pid in children(cluster.directory) if role == "engine"]
    victim = rng.choice([pid for pid in engines if alive(pid)])
    cluster.seen.add(victim)
    os.kill(victim, signal.SIGKILL)
    return victim


def kill_controller(cluster: IPCluster, tc) -> dict:
    """SIGKILL the controller; wait for ipcluster's new one and for a task to complete."""
    old = controller_pid(cluster.directory)
    os.kill(old, signal.SIGKILL)
    killed = time.perf_counter()
    wait_until(lambda: controller_pid(cluster.directory) != old, "ipcluster's new controller")
    restarted = time.perf_counter()
    cluster.seen.add(controller_pid(cluster.directory))
    first = finished(tc)  # the client logs in again by itself, once the controller is up
    wait_until(lambda: finished(tc) > first, "a task completing after the restart", 120)
    progress = time.perf_counter()
    return {
        "restart_to_progress_s": round(progress - restarted, 3),
        "kill_to_progress_s": round(progress - killed, 3),
    }


def one_run(args: argparse.Namespace, schedule: list[tuple[float, str]]) -> dict:
    """The workload on a fresh ``ipcluster --db``, with the faults in ``schedule``
    (``(seconds after submission, 'engine' or 'controller')``); its figures."""
    from ipkernel import client

    cluster = IPCluster(args.engines)
    os.environ["IPKERNEL_DIR"] = str(cluster.directory)
    figures: dict = {}
    try:
        tc = client.TaskClient()
        rng = random.Random(args.seed)
        work_ms = [rng.uniform(0, 50) for _ in range(args.tasks)]
        start = time.perf_counter()
        tids = [tc.run(client.MapTask(work, (i, ms), retries=2)) for i, ms in enumerate(work_ms)]
        victims = []
        for at, what in schedule:
            time.sleep(max(0.0, start + at - time.perf_counter()))
            if what == "engine":
                victims.append(kill_engine(cluster, rng))
            else:
                figures.update(kill_controller(cluster, tc))
        tc.barrier(tids)
        figures["total_s"] = round(time.perf_counter() - start, 3)
        results = tc.get_task_results(tids)
        failed = [r for r in results if r is not None and r.failure is not None]
        figures.update(
            lost=sum(r is None for r in results),
            failed=len(failed),
            wrong=sum(
                r is not None and r.failure is None and r.result != i * i
                for i, r in enumerate(results)
            ),
            engines_killed=len(victims),
        )
        mec = client.MultiEngineClient()
        figures["engine_ids_at_end"] = mec.get_ids()
        mec.close()
        if failed:
            figures["first_failure"] = str(failed[0].failure)[:200]
        tc.close()
    finally:
        cluster.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--engine-kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args(argv)
    baseline = one_run(args, [])
    rng = random.Random(args.seed + 1)
    moments = sorted(
        (rng.uniform(0.05, 0.8) * baseline["total_s"], what)
        for what in ["engine"] * args.engine_kills + ["controller"]
    )
    faulty = one_run(args, moments)
    figures = {
        "benchmark": "chaos",
        "tasks": args.tasks,
        "engines": args.engines,
        "engine_kills": args.engine_kills,
        "fault_times_s": [round(at, 2) for at, _ in moments],
        "fault_order": [what for _, what in moments],
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
    ok = faulty["lost"] == 0 and faulty["wrong"] == 0 and faulty["failed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
