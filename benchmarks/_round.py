"""One measurement round of one system, run by ``compare.py`` in a child process.

    python benchmarks/_round.py SYSTEM [--quick]

SYSTEM is ``ipkernel`` or ``ipkernel-stream`` (run with the project's Python) or
``ipyparallel``, ``dask``, ``dask-tls``, ``dask-tls-direct``, ``ray`` (run with the peers'
virtual environment, see ``_peers.py``). The round starts a cluster of two
engines/workers, measures every figure once in a fixed order, stops the cluster and
exits. It writes one line per fact to stdout, each ``@@round `` followed by a JSON
object, so that output a library prints itself cannot be mistaken for a figure:

- ``{"pids": [[pid, start_time], ...]}``: the processes this round started (all
  descendants of this process), so that ``compare.py`` can stop any left behind;
- ``{"figure": name, "value": number}``, or ``"value": null`` with a ``"note"`` when the
  system cannot do that workload;
- ``{"done": true}`` after the cluster has been stopped.

Linux only: processes are found and measured through ``/proc``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

MARKER = "@@round "
ENGINES = 2

#: Workload sizes and repetitions of one round, (full, --quick). A timed figure stops
#: repeating once its repetitions have taken ``budget_s`` (it always runs at least once),
#: so that a system that is slow at one workload does not stretch the whole run.
SIZES = {
    "execute_calls": (500, 100),
    "execute_warmup": (50, 10),
    "task_calls": (200, 50),
    "task_warmup": (20, 5),
    "throughput_tasks": (10_000, 1_000),
    "array_bytes": (100_000_000, 100_000_000),
    "push_reps": (5, 2),
    "scatter_length": (1_000_000, 100_000),
    "scatter_reps": (5, 2),
    "map_length": (10_000, 1_000),
    "map_reps": (5, 2),
    "budget_s": (20.0, 5.0),
}


def sizes(quick: bool) -> dict:
    """The sizes of a full round, or of a ``--quick`` one."""
    return {key: pair[1 if quick else 0] for key, pair in SIZES.items()}


#: ``(pid, start time)`` of every process the cluster had once it was up.
STARTED: list[tuple[int, int | None]] = []


class NotAvailable(Exception):
    """The system has no equivalent of this workload (the message says why)."""


# The workload functions live in the script run as ``__main__`` so that every system's
# serializer (cloudpickle for ipkernel and Dask, ipyparallel's own canning) sends them by
# value: engines and workers do not have ``benchmarks/`` on their path.
def noop() -> None:
    """The task body of the latency and throughput figures."""


def square(x: int) -> int:
    """The function of the map figure."""
    return x * x


# --- processes, through /proc -----------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the last ')' ends it.
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """Clock ticks after boot at which ``pid`` started: with the pid, it names one process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def session_members(session: int) -> list[int]:
    """Every living process of session ``session`` (a child started in a new session has
    its pid as session id, and its descendants inherit it unless they start their own)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[3]) == session:
                found.append(int(entry))
    return found


def descendants(root: int) -> list[int]:
    """Every living process below ``root`` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _proc_kb(path: str, key: str) -> float:
    """The ``key: N kB`` value of a /proc status-like file, in kB."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise KeyError(f"{key} not in {path}")


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MB (10^6 bytes)."""
    return _proc_kb(f"/proc/{pid}/status", "VmRSS") * 1024 / 1e6


def pss_mb(pids: list[int]) -> float:
    """Proportional set size of several processes together, in MB.

    PSS, not RSS, because forked helper processes share pages with their parent: summing
    their RSS would count those pages once per process.
    """
    return sum(_proc_kb(f"/proc/{pid}/smaps_rollup", "Pss") for pid in pids) * 1024 / 1e6


def stop_pids(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM each of ``pids`` still alive, then SIGKILL those still there after ``grace``."""
    alive = [pid for pid in pids if start_time(pid) is not None]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if running(pid)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def running(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (a zombie only waits for its parent)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


# --- the systems --------------------------------------------------------------------------


class System:
    """What a round needs from a system; every method blocks until its work is done."""

    name = ""

    def start(self) -> float:
        """Start the cluster; return seconds until a client sees all engines/workers."""
        raise NotImplementedError

    def controller_pid(self) -> int:
        """The controller's (scheduler's) main process."""
        raise NotImplementedError

    def controller_pids(self) -> list[int]:
        """The controller's main process and every helper process it started."""
        pid = self.controller_pid()
        return [pid, *descendants(pid)]

    def execute(self, func: Callable[[], None]) -> None:
        """Run ``a=1`` (or the closest equivalent, ``func``) on engine 0 and wait for it."""
        raise NotImplementedError

    def task(self, func: Callable[[], None]) -> None:
        """Submit one load-balanced task running ``func`` and fetch its result."""
        raise NotImplementedError

    def tasks(self, func: Callable[[], None], n: int) -> bool:
        """Submit ``n`` tasks running ``func`` one after the other, wait for all; True."""
        raise NotImplementedError

    def check_tasks(self) -> None:
        """Raise if the tasks of the last :meth:`tasks` did not succeed (not timed)."""
        raise NotImplementedError

    def push(self, array: object) -> None:
        """Send ``array`` to engine 0 (it stays there until the next push)."""
        raise NotImplementedError

    def pull(self) -> object:
        """Fetch the array last pushed back from engine 0."""
        raise NotImplementedError

    def scatter(self, seq: list) -> None:
        """Split ``seq`` into contiguous parts, one per engine, and send them."""
        raise NotImplementedError

    def gather(self) -> list:
        """Fetch the parts last scattered and join them."""
        raise NotImplementedError

    def map(self, func: Callable[[int], int], seq: range) -> list:
        """``[func(x) for x in seq]`` computed on the engines."""
        raise NotImplementedError

    def share(self, array: object) -> None:
        """Put ``array`` once where every engine can read it without a copy (shared
        memory); it stays there until the next share."""
        raise NotAvailable("no shared-memory object store")

    def read_shared(self) -> float:
        """Engine 0 sums the array last shared, in place; return the sum."""
        raise NotAvailable("no shared-memory object store")

    def stop(self) -> None:
        """Stop every process of the cluster; safe to call twice or after a failed start."""
        raise NotImplementedError


class IpkernelSystem(System):
    """``ipcluster start -n 2`` (see ``_cluster.LocalCluster``) with a MultiEngine client
    and, when it exists, a Task client.

    ``transport`` is ipkernel's ``IPKERNEL_TRANSPORT`` for the whole cluster: ``auto``
    (its default: large payloads between processes of one host go through shared memory)
    or ``stream`` (always the network, as between hosts: large payloads over direct TLS
    links between client and engine, or through the controller; the peers have no
    shared-memory path, so this is the like-for-like data path).
    """

    def __init__(self, transport: str) -> None:
        from _cluster import LocalCluster

        self.name = "ipkernel" if transport == "auto" else f"ipkernel-{transport}"
        # Set here, not inherited, so that a value left in the shell cannot change what
        # the "ipkernel" column measures; LocalCluster passes it on to every process.
        os.environ["IPKERNEL_TRANSPORT"] = transport
        self.cluster = LocalCluster(ENGINES)
        self.mec = None
        self.tc = None

    def start(self) -> float:
        from ipkernel import client

        self.cluster.start()
        self.mec = client.MultiEngineClient(self.cluster.mec_furl)
        if hasattr(client, "TaskClient"):
            self.tc = client.TaskClient(self.cluster.tc_furl)
        return self.cluster.startup

    def controller_pid(self) -> int:
        # ipcluster.pid: the ipcluster's pid, then one "<role> <pid>" line per child.
        for line in (self.cluster.dir / "ipcluster.pid").read_text().splitlines()[1:]:
            role, _, pid = line.partition(" ")
            if role == "controller":
                return int(pid)
        raise RuntimeError("no controller in ipcluster.pid")

    def execute(self, func: Callable[[], None]) -> None:
        self.mec.execute("a=1", targets=0)

    def _task_client(self):
        if self.tc is None:
            raise NotAvailable("ipkernel.client has no TaskClient yet")
        return self.tc

    def task(self, func: Callable[[], None]) -> None:
        from ipkernel import client

        tc = self._task_client()
        failure = tc.get_task_result(tc.run(client.MapTask(func)), block=True).failure
        if failure is not None:
            raise AssertionError(f"ipkernel: a task failed: {failure!r}")

    def tasks(self, func: Callable[[], None], n: int) -> bool:
        from ipkernel import client

        tc = self._task_client()
        self.task_ids = [tc.run(client.MapTask(func)) for _ in range(n)]
        tc.barrier(self.task_ids)
        return True

    def check_tasks(self) -> None:
        # One result fetch per task would take longer than the figure: the first and last
        # stand for the rest (a barrier also counts failed tasks as finished).
        for taskid in (self.task_ids[0], self.task_ids[-1]):
            failure = self.tc.get_task_result(taskid, block=True).failure
            if failure is not None:
                raise AssertionError(f"ipkernel: task {taskid} failed: {failure!r}")

    def push(self, array: object) -> None:
        self.mec.push({"a": array}, targets=0)

    def pull(self) -> object:
        value = self.mec.pull("a", targets=0)
        return value[0] if isinstance(value, list) else value

    def scatter(self, seq: list) -> None:
        self.mec.scatter("x", seq)

    def gather(self) -> list:
        return self.mec.gather("x")

    def map(self, func: Callable[[int], int], seq: range) -> list:
        return self.mec.map(func, seq)

    def share(self, array: object) -> None:
        self.mec.push({"s": array}, share=True)

    def read_shared(self) -> float:
        self.mec.execute("total = float(s.sum())", targets=0)
        [total] = self.mec.pull("total", targets=0)
        return total

    def stop(self) -> None:
        for connection in (self.tc, self.mec):
            if connection is not None and hasattr(connection, "close"):
                try:
                    connection.close()
                except Exception as exc:  # the cluster must be stopped all the same
                    print(f"closing {connection!r}: {exc}", file=sys.stderr)
        self.tc = self.mec = None
        self.cluster.stop()


def make_system(name: str) -> System:
    """The system called ``name``; peers are imported only when asked for."""
    if name == "ipkernel":
        return IpkernelSystem("auto")
    if name == "ipkernel-stream":
        return IpkernelSystem("stream")
    import _peers

    return _peers.make_system(name)


# --- the round ----------------------------------------------------------------------------


def emit(**fact: object) -> None:
    """Write one fact for ``compare.py``."""
    print(MARKER + json.dumps(fact), flush=True)


def timed(
    fn: Callable[[], object], reps: int, warmup: int = 0, budget: float = float("inf")
) -> tuple[float, int, object]:
    """Time ``fn()``: ``(median seconds, calls timed, last return value)``.

    ``warmup`` untimed calls first; then ``reps`` timed ones, or fewer once they have
    taken ``budget`` seconds together (never fewer than one).
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    result = None
    while len(times) < reps and (not times or sum(times) < budget):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times), result


def measure(system: System, quick: bool) -> None:
    """Start ``system``, emit every figure, and leave it running (the caller stops it)."""
    size = sizes(quick)
    budget = size["budget_s"]

    emit(figure="startup_s", value=system.start(), reps=1)
    STARTED.extend((pid, start_time(pid)) for pid in descendants(os.getpid()))
    emit(pids=STARTED)

    # Idle means: started, one client connected, nothing asked yet; the second lets
    # start-up work that finishes after the engines are seen settle.
    time.sleep(1.0)
    emit(figure="rss_idle_mb", value=rss_mb(system.controller_pid()))
    emit(figure="pss_idle_mb", value=pss_mb(system.controller_pids()))

    def figure(name: str, scale: float, fn: Callable[[], object], reps: int, warmup: int = 0):
        """Emit the median of ``fn`` as ``name``; return its last result (None if n/a)."""
        try:
            seconds, done, result = timed(fn, reps, warmup, budget)
        except NotAvailable as exc:
            emit(figure=name, value=None, note=str(exc))
            return None
        emit(figure=name, value=seconds * scale, reps=done)
        return result

    figure(
        "execute_ms",
        1e3,
        lambda: system.execute(noop),
        size["execute_calls"],
        size["execute_warmup"],
    )
    figure("task_ms", 1e3, lambda: system.task(noop), size["task_calls"], size["task_warmup"])
    if figure("throughput_s", 1, lambda: system.tasks(noop, size["throughput_tasks"]), 1):
        system.check_tasks()

    import numpy

    array = numpy.random.default_rng(0).random(size["array_bytes"] // 8)
    figure("push_s", 1, lambda: system.push(array), size["push_reps"])
    pulled = figure("pull_s", 1, system.pull, size["push_reps"])
    if not numpy.array_equal(pulled, array):
        raise AssertionError(f"{system.name}: pull did not give back what was pushed")
    figure("share_s", 1, lambda: system.share(array), size["push_reps"])
    total = figure("share_read_s", 1, system.read_shared, size["push_reps"])
    if total is not None and total != float(array.sum()):
        raise AssertionError(f"{system.name}: the shared array read back wrong")
    # Drop every copy, so that the controller can give the memory back before "after".
    system.push(None)
    try:
        system.share(None)
    except NotAvailable:
        pass
    array = pulled = None

    data = list(range(size["scatter_length"]))
    figure("scatter_s", 1, lambda: system.scatter(data), size["scatter_reps"])
    if figure("gather_s", 1, system.gather, size["scatter_reps"]) != data:
        raise AssertionError(f"{system.name}: gather did not give back what was scattered")

    seq = range(size["map_length"])
    if list(figure("map_s", 1, lambda: system.map(square, seq), size["map_reps"])) != [
        x * x for x in seq
    ]:
        raise AssertionError(f"{system.name}: map gave a wrong result")

    time.sleep(1.0)
    emit(figure="rss_after_mb", value=rss_mb(system.controller_pid()))
    emit(figure="pss_after_mb", value=pss_mb(system.controller_pids()))


def _watch_parent(parent: int) -> None:
    """Stop this round (SIGTERM to itself) if ``compare.py`` goes away without telling it."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _terminate(signum: int, frame: object) -> None:
    # Ignore further signals so that the clean-up this exception starts runs to its end.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    """Run one round of the system named in ``argv``; exit status 0 if it completed."""
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    # _peers imports this module by name: let it find this very copy, not load a second.
    sys.modules.setdefault("_round", sys.modules[__name__])
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    system = make_system(argv[0])
    try:
        measure(system, quick="--quick" in argv)
    finally:
        try:
            system.stop()
        finally:
            # Whatever the system's own stop left behind (a failed start, a hung engine, a
            # helper whose parent has exited and which is no longer below this process).
            left = [pid for pid, tick in STARTED if tick and start_time(pid) == tick]
            stop_pids(sorted(set(left + descendants(os.getpid()))))
    emit(done=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
