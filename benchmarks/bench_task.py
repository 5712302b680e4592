"""Task interface figures on a local cluster of 2 engines; prints one JSON line.

- ``round_trip_ms``: median time of ``tc.run(StringTask('a=1'))`` followed by
  ``tc.get_task_result(tid, block=True)``;
- ``tasks_per_s``: 10,000 no-op ``MapTask``s submitted in a loop, then ``barrier``:
  tasks over the whole time; ``submit_per_s``: the submission loop alone;
- ``map_items_per_s``: ``tc.map`` of a no-op over ``range(10_000)``.

The script starts ``ipcontroller`` and 2 ``ipengine`` processes in a temporary
``IPKERNEL_DIR`` and stops them (by PID) at the end. Options: ``--engines N``,
``--tasks N``, ``--round-trips N``, ``--repeat N`` (the median of that many runs of each
throughput figure is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def noop(*args):
    return None


def start_cluster(directory: Path, engines: int) -> list[subprocess.Popen]:
    env = dict(os.environ, IPKERNEL_DIR=str(directory))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    procs = [subprocess.Popen([sys.executable, "-m", "ipkernel.cli.ipcontroller"], **quiet)]
    furl = directory / "security" / "ipcontroller-tc.furl"
    deadline = time.monotonic() + 30
    while not furl.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the controller did not write its key files")
        time.sleep(0.02)
    for _ in range(engines):
        procs.append(subprocess.Popen([sys.executable, "-m", "ipkernel.cli.ipengine"], **quiet))
    return procs


def stop_cluster(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(engines: int, tasks: int, round_trips: int, repeat: int) -> dict:
    from ipkernel import client

    mec = client.MultiEngineClient()
    deadline = time.monotonic() + 30
    while len(mec.get_ids()) < engines:
        if time.monotonic() > deadline:
            raise RuntimeError("the engines did not register")
        time.sleep(0.02)
    tc = client.TaskClient()

    # Warm up both engines and the code paths.
    tc.barrier([tc.run(client.MapTask(noop)) for _ in range(200)])
    tc.map(noop, range(1000))

    times = []
    for _ in range(round_trips):
        start = time.perf_counter()
        tid = tc.run(client.StringTask("a=1"))
        tc.get_task_result(tid, block=True)
        times.append(time.perf_counter() - start)

    task_rates, submit_rates, map_rates = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        tids = [tc.run(client.MapTask(noop)) for _ in range(tasks)]
        submitted = time.perf_counter()
        tc.barrier(tids)
        done = time.perf_counter()
        task_rates.append(tasks / (done - start))
        submit_rates.append(tasks / (submitted - start))
        tc.clear()

        start = time.perf_counter()
        result = tc.map(noop, range(10_000))
        map_rates.append(10_000 / (time.perf_counter() - start))
        assert result == [None] * 10_000
        tc.clear()

    tc.close()
    mec.close()
    return {
        "benchmark": "task",
        "engines": engines,
        "round_trip_ms": round(statistics.median(times) * 1e3, 3),
        "tasks": tasks,
        "tasks_per_s": round(statistics.median(task_rates)),
        "submit_per_s": round(statistics.median(submit_rates)),
        "map_items_per_s": round(statistics.median(map_rates)),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # Other work on the machine skews every figure: say how busy it was.
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="ipkernel-bench-"))
    os.environ["IPKERNEL_DIR"] = str(directory)
    procs = start_cluster(directory, args.engines)
    try:
        figures = measure(args.engines, args.tasks, args.round_trips, args.repeat)
    finally:
        stop_cluster(procs)
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
