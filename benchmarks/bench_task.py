"""Task interface figures on a local cluster of 2 engines; prints one JSON line.

- ``round_trip_ms``: median time of ``tc.run(StringTask('a=1'))`` followed by
  ``tc.get_task_result(tid, block=True)``;
- ``tasks_per_s``: 10,000 no-op ``MapTask``s submitted in a loop, then ``barrier``:
  tasks over the whole time; ``submit_per_s``: the submission loop alone;
- ``map_items_per_s``: ``tc.map`` of a no-op over ``range(10_000)``;
- ``page_closed_tasks_per_s`` and ``page_open_tasks_per_s``: ``--page-tasks`` no-op
  ``MapTask``s as for ``tasks_per_s``, with no status page open and with one open (a
  reader subscribed to ``/api/events``, reading every event), runs alternating;
  ``page_open_ratio`` is the median, over the pairs of runs next to each other, of open
  over closed (target: at least 0.95); ``page_events`` the events the reader got per open
  run; ``page_closed_controller_us_per_task`` and ``page_open_controller_us_per_task``:
  the controller's CPU time (user + system, from ``/proc``) per task in those runs, which
  other work on the machine skews less. ``--page-tasks 0`` leaves these runs out.
- ``tasks_per_s_bar``: ``tasks_per_s`` with the ``barrier``'s progress bar shown from
  its start (tqdm drawing on a pseudo-terminal, whatever this script's stderr is), and
  ``progress_cost_pct``: how much slower that is than ``tasks_per_s``: the median, over
  the pairs of runs next to each other, of 1 - with bar / without (target: under 2).
  The runs with and without the bar alternate, each going first in turn.
  ``progress_cpu_cost_pct``: the same for the CPU time (user + system) that the client
  and the controller spend per run, which other work on the machine skews less.

With ``--db``, a second cluster runs beside the first, its controller keeping task
records in SQLite (``ipcontroller --db``), and runs of ``--tasks`` no-op ``MapTask``s
alternate between the two (each going first in turn): ``db_memory_tasks_per_s`` and
``db_tasks_per_s`` are their medians, ``db_ratio`` the median over the pairs of runs next
to each other of SQLite over memory (target: at least 0.8); ``db_map_ratio`` the same for
``tc.map``; ``db_writes``, ``db_rows``, ``db_write_s`` (seconds writing, in the reactor
thread) and ``db_write_max_ms`` (the longest write) are the store's, from the line its
controller logs when it stops.

The script starts ``ipcontroller`` and 2 ``ipengine`` processes in a temporary
``IPKERNEL_DIR`` (two such clusters with ``--db``) and stops them (by PID) at the end.
Options: ``--engines N``, ``--tasks N``, ``--round-trips N``, ``--repeat N`` (the median
of that many runs of each throughput figure is reported; make it even, so that the runs
with and without a bar go first equally often), ``--page-tasks N``, ``--db``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from _proc import cpu_seconds


def noop(*args):
    return None


def start_cluster(directory: Path, engines: int, db: Path | None = None) -> list[subprocess.Popen]:
    env = dict(os.environ, IPKERNEL_DIR=str(directory))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    argv = [sys.executable, "-m", "ipkernel.cli.ipcontroller"]
    if db is not None:
        argv += ["--db", str(db)]
    procs = [subprocess.Popen(argv, **quiet)]
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


class PageReader:
    """An open status page: a thread reading ``/api/events`` from the URL in ``url_file``."""

    def __init__(self, url_file: Path) -> None:
        url = urllib.parse.urlsplit(url_file.read_text().strip())
        self._connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        self._connection.request("GET", "/api/events?" + url.query)
        self._response = self._connection.getresponse()
        if self._response.status != 200:
            raise RuntimeError(f"/api/events answered {self._response.status}")
        self.events = 0
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._first.wait(10):
            raise RuntimeError("no status event within 10 s")

    def _read(self) -> None:
        try:
            for line in self._response:
                if line.startswith(b"data: "):
                    self.events += 1
                    self._first.set()
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed by close()

    def close(self) -> int:
        """Close the page; return how many events it read."""
        sock = self._connection.sock
        if sock is not None:
            sock.shutdown(2)
        self._thread.join(10)
        self._connection.close()
        return self.events


def task_rate(tc, client, tasks: int, controller_pid: int) -> tuple[float, float]:
    """``tasks`` no-op tasks: tasks per second, and the controller's CPU µs per task."""
    cpu = cpu_seconds(controller_pid)
    start = time.perf_counter()
    tc.barrier([tc.run(client.MapTask(noop)) for _ in range(tasks)])
    rate = tasks / (time.perf_counter() - start)
    cpu = cpu_seconds(controller_pid) - cpu
    tc.clear()
    return rate, cpu / tasks * 1e6


def measure_page(tc, client, tasks: int, repeat: int, url_file: Path, controller_pid: int) -> dict:
    """Task throughput with the status page closed and open, runs alternating."""
    closed, opened, events = [], [], []
    for i in range(repeat):
        for page in (False, True) if i % 2 == 0 else (True, False):
            if not page:
                closed.append(task_rate(tc, client, tasks, controller_pid))
                continue
            reader = PageReader(url_file)
            try:
                opened.append(task_rate(tc, client, tasks, controller_pid))
            finally:
                events.append(reader.close())
    closed_rate = statistics.median(rate for rate, _ in closed)
    open_rate = statistics.median(rate for rate, _ in opened)
    return {
        "page_tasks": tasks,
        "page_closed_tasks_per_s": round(closed_rate),
        "page_open_tasks_per_s": round(open_rate),
        # Each pair ran back to back, under much the same load from elsewhere.
        "page_open_ratio": round(
            statistics.median(o / c for (o, _), (c, _) in zip(opened, closed, strict=True)), 3
        ),
        "page_events": round(statistics.median(events)),
        "page_closed_controller_us_per_task": round(statistics.median(c for _, c in closed), 1),
        "page_open_controller_us_per_task": round(statistics.median(c for _, c in opened), 1),
    }


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass  # EIO: the terminal's other end is closed


@contextlib.contextmanager
def progress_bar_shown() -> Iterator[None]:
    """Waits show their bar at once, drawn by tqdm on an 80-column pseudo-terminal
    (stderr, for the duration) that a thread reads and discards."""
    from ipkernel.client import progress

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    terminal = os.fdopen(slave, "w")
    drain = threading.Thread(target=_drain, args=(master,), daemon=True)
    drain.start()
    saved = sys.stderr, progress.DELAY
    sys.stderr, progress.DELAY = terminal, 0.0
    try:
        yield
    finally:
        sys.stderr, progress.DELAY = saved
        terminal.close()
        drain.join()
        os.close(master)


def task_run(tc, tasks: int, bar: bool, controller_pid: int) -> tuple[float, float, float]:
    """One run of ``tasks`` no-op MapTasks and their barrier, with or without a bar
    shown; returns (tasks/s overall, tasks/s of the submission loop, CPU seconds of
    this process and the controller)."""
    from ipkernel import client

    with progress_bar_shown() if bar else contextlib.nullcontext():
        cpu = time.process_time() + cpu_seconds(controller_pid)
        start = time.perf_counter()
        tids = [tc.run(client.MapTask(noop)) for _ in range(tasks)]
        submitted = time.perf_counter()
        tc.barrier(tids)
        done = time.perf_counter()
        cpu = time.process_time() + cpu_seconds(controller_pid) - cpu
    tc.clear()
    return tasks / (done - start), tasks / (submitted - start), cpu


def measure(
    engines: int,
    tasks: int,
    round_trips: int,
    repeat: int,
    page_tasks: int,
    url_file: Path,
    controller_pid: int,
) -> dict:
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

    # The bar's first showing imports tqdm: do that before anything is timed.
    with progress_bar_shown():
        tc.barrier([tc.run(client.MapTask(noop)) for _ in range(200)])
    tc.clear()

    task_runs, bar_runs, map_rates = [], [], []
    for i in range(repeat):
        # Alternate which run goes first, so that drift in the machine's load, and
        # whatever a run leaves behind for the next, fall on the runs with and without a
        # bar alike (the maps run apart, below).
        for bar in (False, True) if i % 2 == 0 else (True, False):
            (bar_runs if bar else task_runs).append(task_run(tc, tasks, bar, controller_pid))

    for _ in range(repeat):
        start = time.perf_counter()
        result = tc.map(noop, range(10_000))
        map_rates.append(10_000 / (time.perf_counter() - start))
        assert result == [None] * 10_000
        tc.clear()

    page = (
        measure_page(tc, client, page_tasks, repeat, url_file, controller_pid) if page_tasks else {}
    )
    tc.close()
    mec.close()
    pairs = list(zip(task_runs, bar_runs, strict=True))
    return {
        "benchmark": "task",
        "engines": engines,
        "round_trip_ms": round(statistics.median(times) * 1e3, 3),
        "tasks": tasks,
        "tasks_per_s": round(statistics.median(rate for rate, _, _ in task_runs)),
        "tasks_per_s_bar": round(statistics.median(rate for rate, _, _ in bar_runs)),
        # Each pair ran back to back, under much the same load from elsewhere.
        "progress_cost_pct": round(100 * statistics.median(1 - b[0] / t[0] for t, b in pairs), 2),
        "progress_cpu_cost_pct": round(
            100 * statistics.median(b[2] / t[2] - 1 for t, b in pairs), 2
        ),
        "submit_per_s": round(statistics.median(submit for _, submit, _ in task_runs)),
        "map_items_per_s": round(statistics.median(map_rates)),
        **page,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # Other work on the machine skews every figure: say how busy it was.
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def wait_for_engines(mec, engines: int) -> None:
    deadline = time.monotonic() + 30
    while len(mec.get_ids()) < engines:
        if time.monotonic() > deadline:
            raise RuntimeError("the engines did not register")
        time.sleep(0.02)


def map_rate(tc, items: int) -> float:
    start = time.perf_counter()
    result = tc.map(noop, range(items))
    rate = items / (time.perf_counter() - start)
    assert result == [None] * items
    tc.clear()
    return rate


def measure_db(memory_dir: Path, db_dir: Path, engines: int, tasks: int, repeat: int) -> dict:
    """Task throughput with the in-memory store and with SQLite, runs alternating between
    the two clusters (both running throughout)."""
    from ipkernel import client

    clients = {}
    for name, directory in (("memory", memory_dir), ("db", db_dir)):
        security = directory / "security"
        mec = client.MultiEngineClient(security / "ipcontroller-mec.furl")
        wait_for_engines(mec, engines)
        mec.close()
        tc = client.TaskClient(security / "ipcontroller-tc.furl")
        tc.barrier([tc.run(client.MapTask(noop)) for _ in range(200)])  # warm up
        tc.clear()
        clients[name] = tc
    rates: dict[str, list[float]] = {"memory": [], "db": []}
    maps: dict[str, list[float]] = {"memory": [], "db": []}
    for i in range(repeat):
        for name in ("memory", "db") if i % 2 == 0 else ("db", "memory"):
            rates[name].append(task_run(clients[name], tasks, False)[0])
            maps[name].append(map_rate(clients[name], tasks))
    for tc in clients.values():
        tc.close()

    def ratio(runs: dict[str, list[float]]) -> float:
        # Each pair ran back to back, under much the same load from elsewhere.
        pairs = zip(runs["db"], runs["memory"], strict=True)
        return round(statistics.median(d / m for d, m in pairs), 3)

    return {
        "db_memory_tasks_per_s": round(statistics.median(rates["memory"])),
        "db_tasks_per_s": round(statistics.median(rates["db"])),
        "db_ratio": ratio(rates),
        "db_map_ratio": ratio(maps),
    }


_STORE_LINE = re.compile(r"(\d+) writes of (\d+) rows, ([\d.]+) s in all, longest ([\d.]+) ms")


def store_writes(directory: Path) -> dict:
    """The task store's writes, from the line its controller logs when it stops."""
    for log in (directory / "log").glob("ipcontroller-*.log"):
        found = _STORE_LINE.search(log.read_text())
        if found:
            writes, rows, seconds, longest = found.groups()
            return {
                "db_writes": int(writes),
                "db_rows": int(rows),
                "db_write_s": float(seconds),
                "db_write_max_ms": float(longest),
            }
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--page-tasks", type=int, default=30_000)
    parser.add_argument("--db", action="store_true", help="also compare with the SQLite task store")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="ipkernel-bench-"))
    db_dir = Path(tempfile.mkdtemp(prefix="ipkernel-bench-db-")) if args.db else None
    os.environ["IPKERNEL_DIR"] = str(directory)
    procs = start_cluster(directory, args.engines)
    db_procs = start_cluster(db_dir, args.engines, db_dir / "tasks.db") if db_dir else []
    try:
        url_file = directory / "security" / "ipcontroller-web.url"
        figures = measure(
            args.engines,
            args.tasks,
            args.round_trips,
            args.repeat,
            args.page_tasks,
            url_file,
            procs[0].pid,
        )
        if db_dir is not None:
            figures.update(measure_db(directory, db_dir, args.engines, args.tasks, args.repeat))
    finally:
        stop_cluster([*procs, *db_procs])
        writes = store_writes(db_dir) if db_dir is not None else {}
        for path in (directory, db_dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
    figures.update(writes)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
