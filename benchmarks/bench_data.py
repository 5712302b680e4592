"""Large-data figures for both transports. Prints one JSON line.

    python benchmarks/bench_data.py [--quick]

For each path, ``shm`` (client and engines on this host, large buffers through shared
memory) and ``stream`` (``transport='stream'``: the network path, chunks over TLS, over
the client's direct link to the engine where one can be made), on a local
``ipcluster -n 2``:

- ``push_100MB_MBps`` / ``pull_100MB_MBps`` / ``push_1GB_MBps`` / ``pull_1GB_MBps``: a
  float64 array to one engine and back (median of several runs for 100 MB);
- ``controller_cpu_s_per_100MB_push`` / ``..._pull``: the controller's CPU seconds (user
  and system, from ``/proc/<pid>/stat``) per 100 MB push or pull, over those runs;
- ``controller_relayed_MB_per_100MB_push`` / ``..._pull``: the MB of each 100 MB push or
  pull that crossed the controller (its relays' count): about 100 relayed, 0 direct;
- ``scatter_100MB_s`` / ``gather_100MB_s``: a 100 MB array over all engines (median);
- ``controller_rss_idle_MiB``, ``controller_rss_peak_1GB_MiB`` (during the 1 GB push and
  pull), ``controller_rss_after_MiB`` (after 3 rounds of 100 MB push + pull);
- ``small_call_idle_ms`` / ``small_call_during_1GB_ms``: median latency of another
  client's blocking ``execute('a=1')`` on the other engine, idle and while the 1 GB
  transfer runs (``..._p90_ms``: 90th percentile);
- ``two_pushes_MBps``: two 100 MB pushes started together, one to each engine, each one's
  throughput (fair sharing: about equal);
- ``task_100MB_round_trip_s``: a ``MapTask`` whose argument is a 100 MB array and which
  returns it, submitted and its result fetched (median).

And ``relay`` (``transport='relay'``: every byte through the controller, what the
stream path falls back to when no direct link can be made): the push and pull figures
above, with the controller's CPU and relayed MB.

Measured in the same run, as floors: ``raw_tls_MBps`` (TLS loopback between two
processes with Python's ``ssl``, 1 MiB writes, the certificate kind ipkernel uses),
``memcpy_MBps`` (numpy copy of 100 MB into an existing array) and ``memcpy_fresh_MBps``
(the same into newly allocated memory, whose pages the kernel must first provide: the
ceiling of any path that makes the receiver a new copy, shared memory included). Also
``scatter_list_1M_s`` / ``gather_list_1M_s``: ``list(range(1_000_000))`` over 2 engines.

``first_push_100MB_MBps``: the first push of the cluster, a 100 MB array to engine 0 of a
cluster that has just started (nothing sent to it before), through shared memory; the
``shm`` figures come after warm-up pushes. ``first_push_vs_memcpy`` and
``push_vs_memcpy`` divide the first and the usual shared-memory push by ``memcpy_MBps``.
``--quick`` skips the 1 GB figures; ``--fan-out`` measures only the figures below.

Data to many engines (``fan_out``, on a local ``ipcluster -n 8``, ``transport='stream'``):
``push_100MB_1_engine_s`` and ``push_100MB_8_engines_s`` (medians), their ratio
``ratio_8_to_1``, ``client_MB_sent_1`` / ``client_MB_sent_8`` (what this process wrote,
from ``/proc/self/io``, per push: the client sends each byte once whatever the number of
engines), and the CPU seconds per push of the controller and of all the engines together
(``controller_cpu_s_*``, ``engines_cpu_s_*``): on a machine with fewer CPUs than engines,
the engines' own receiving is what the 8-engine push waits for.

One copy for many engines (``share_8``, on a local ``ipcluster -n 8``, shared memory):
``mec.push({'s': array}, share=True)`` of 1 GB (256 MB with ``--quick``) to all 8
engines, each engine then summing it (every page read): ``share_s`` (the push, returning
once every engine has mapped it), ``sum_s`` (the eight sums), ``engines_pss_growth_MB``
(the engines' proportional set sizes summed, after the sums minus before the push) and
``growth_per_copy`` (that growth over the array's size: about 1 when the engines map the
same pages, 8 if each had its own copy).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cluster import LocalCluster, median_time  # noqa: E402
from _many_engines import controller_pid, fan_out, share_many  # noqa: E402
from _proc import cpu_seconds, rss_mib  # noqa: E402

MB = 1_000_000
MiB = 2**20


# Floors


def _tls_receiver(cert: str, key: str, total: int, ports, results) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ports.put(listener.getsockname()[1])
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            buf = memoryview(bytearray(MiB))
            got = 0
            while got < total:
                got += tls.recv_into(buf)
            tls.sendall(b"k")
    results.put(got)


def raw_tls_mbps(total: int = 500 * MB) -> float:
    """TLS loopback throughput between two processes (the floor of the stream path)."""
    from cryptography.hazmat.primitives import serialization

    from ipkernel.security import ControllerIdentity

    identity = ControllerIdentity.generate()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        Path(cert).write_bytes(identity.certificate_pem)
        Path(key).write_bytes(
            identity.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = multiprocessing.get_context("spawn")
        ports, results = ctx.Queue(), ctx.Queue()
        receiver = ctx.Process(target=_tls_receiver, args=(cert, key, total, ports, results))
        receiver.start()
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        data = os.urandom(MiB)
        with client.wrap_socket(socket.create_connection(("127.0.0.1", ports.get()))) as tls:
            tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start = time.perf_counter()
            sent = 0
            while sent < total:
                tls.sendall(data)
                sent += len(data)
            tls.recv(1)
            elapsed = time.perf_counter() - start
        results.get()
        receiver.join()
    return sent / elapsed / MB


def memcpy_mbps() -> tuple[float, float]:
    """Copying 100 MB: into an existing array, and into a newly allocated one."""
    import numpy as np

    src = np.ones(100 * MB // 8)
    dst = np.empty_like(src)
    dst[...] = src
    warm = 100 / median_time(lambda: np.copyto(dst, src), 9, warmup=0)
    fresh = 100 / median_time(lambda: src.copy(), 9, warmup=0)
    return warm, fresh


# The controller process and a second client


def relayed_bytes(mec) -> int | None:
    """Bytes the controller's relays have taken in since it started (None: not counted)."""
    return mec.transfer_stats().get("relayed")


def per_100MB(mec, pid: int, fn, repeat: int, figures: dict, name: str) -> float:
    """Median seconds of ``fn()``; puts into ``figures`` the controller's CPU seconds and
    relayed MB per run (``fn`` moves 100 MB) as ``controller_cpu_s_per_100MB_<name>`` and
    ``controller_relayed_MB_per_100MB_<name>``."""
    relayed, cpu = relayed_bytes(mec), cpu_seconds(pid)
    seconds = median_time(fn, repeat, warmup=0)
    cpu = cpu_seconds(pid) - cpu
    after = relayed_bytes(mec)
    figures[f"controller_cpu_s_per_100MB_{name}"] = round(cpu / repeat, 3)
    figures[f"controller_relayed_MB_per_100MB_{name}"] = (
        None if relayed is None or after is None else round((after - relayed) / repeat / MB, 1)
    )
    return seconds


PROBE = """
import json, statistics, sys, time
from pathlib import Path
from ipkernel import client
mec = client.MultiEngineClient(sys.argv[1])
stop, ready = Path(sys.argv[2]), Path(sys.argv[3])
for _ in range(50):
    mec.execute("a=1", targets=1)
ready.touch()
times = []
while not stop.exists():
    t = time.perf_counter()
    mec.execute("a=1", targets=1)
    times.append(time.perf_counter() - t)
    time.sleep(0.002)
times.sort()
print(json.dumps({"median_ms": statistics.median(times) * 1e3,
                  "p90_ms": times[int(len(times) * 0.9)] * 1e3, "n": len(times)}))
"""


class LatencyProbe:
    """Another client process timing blocking executes on engine 1 until stopped."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ipkernel-probe-"))
        self.stop_file, ready = self.dir / "stop", self.dir / "ready"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(PROBE),
                cluster.mec_furl,
                str(self.stop_file),
                str(ready),
            ],
            env=cluster.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the latency probe did not start")
            time.sleep(0.01)

    def finish(self) -> dict:
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
        return json.loads(out)


# Data to many engines


# One path


def two_pushes(mec, arr) -> list[int]:
    """Throughput of each of two pushes of ``arr`` started together to engines 0 and 1."""
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        done: dict[int, float] = {}
        pending = [mec.push({"y": arr}, targets=i, block=False) for i in (0, 1)]
        for i, pr in enumerate(pending):
            pr.future.add_done_callback(
                lambda f, i=i, done=done: done.setdefault(i, time.perf_counter())
            )
        mec.barrier(pending)
        for pr in pending:
            pr.get_result()
        rates.append([round(arr.nbytes / MB / (done[i] - start)) for i in (0, 1)])
    rates.sort(key=lambda pair: sum(pair))
    return rates[1]


def _identity(x):
    return x


def task_round_trip(cluster: LocalCluster, transport: str, arr) -> float:
    """Median seconds of a MapTask taking ``arr`` and returning it, submitted and its
    result fetched (the controller keeps both: cleared after each run)."""
    import numpy as np

    from ipkernel import client

    tc = client.TaskClient(cluster.tc_furl, transport=transport)

    def once() -> None:
        tid = tc.run(client.MapTask(_identity, args=(arr,)))
        tr = tc.get_task_result(tid, block=True)
        assert tr.result.nbytes == arr.nbytes
        tc.clear()

    once()
    tid = tc.run(client.MapTask(_identity, args=(arr,)))
    assert np.array_equal(tc.get_task_result(tid, block=True).result, arr)
    tc.clear()
    seconds = median_time(once, 5, warmup=0)
    tc.close()
    return round(seconds, 4)


def push_pull_100MB(mec, pid: int, arr, figures: dict) -> None:
    """``push_100MB_MBps`` and ``pull_100MB_MBps``, with the controller's share of each."""
    push = per_100MB(mec, pid, lambda: mec.push({"x": arr}, targets=0), 5, figures, "push")
    pull = per_100MB(mec, pid, lambda: mec.pull("x", targets=0), 5, figures, "pull")
    figures["push_100MB_MBps"] = round(100 / push)
    figures["pull_100MB_MBps"] = round(100 / pull)


def bench_relay(cluster: LocalCluster) -> dict:
    """Push and pull of 100 MB with ``transport='relay'``, every byte through the
    controller (empty where this ipkernel has no such transport)."""
    import numpy as np

    from ipkernel import client

    figures: dict[str, float] = {}
    try:
        mec = client.MultiEngineClient(cluster.mec_furl, transport="relay")
    except ValueError:
        return figures
    arr = np.random.default_rng(0).random(100 * MB // 8)
    mec.push({"x": arr}, targets=0)  # warm up both ways
    mec.pull("x", targets=0)
    push_pull_100MB(mec, controller_pid(cluster), arr, figures)
    mec.execute("x = None")
    mec.close()
    return figures


def first_push(cluster: LocalCluster) -> float:
    """MB/s of the first push a new cluster gets: 100 MB to engine 0, before anything else."""
    import numpy as np

    from ipkernel import client

    arr = np.random.default_rng(2).random(100 * MB // 8)
    mec = client.MultiEngineClient(cluster.mec_furl)
    mec.get_ids()  # the client's own connection set up, as before any first call
    start = time.perf_counter()
    mec.push({"first": arr}, targets=0)
    seconds = time.perf_counter() - start
    mec.execute("first = None", targets=0)
    mec.close()
    return 100 / seconds


def bench_path(cluster: LocalCluster, transport: str, quick: bool) -> dict:
    import numpy as np

    from ipkernel import client

    figures: dict[str, float] = {}
    mec = client.MultiEngineClient(cluster.mec_furl, transport=transport)
    pid = controller_pid(cluster)
    mec.execute("a=1")
    figures["controller_rss_idle_MiB"] = round(rss_mib(pid), 1)

    arr = np.random.default_rng(0).random(100 * MB // 8)
    mec.push({"x": arr}, targets=0)  # warm up both ways
    [back] = mec.pull("x", targets=0)
    assert np.array_equal(back, arr)
    del back
    push_pull_100MB(mec, pid, arr, figures)
    figures["scatter_100MB_s"] = round(median_time(lambda: mec.scatter("s", arr), 5, warmup=0), 4)
    figures["gather_100MB_s"] = round(median_time(lambda: mec.gather("s"), 5, warmup=0), 4)
    for _ in range(3):
        mec.push({"x": arr}, targets=0)
        mec.pull("x", targets=0)
    mec.execute("x = s = None")
    figures["controller_rss_after_MiB"] = round(rss_mib(pid), 1)
    figures["two_pushes_MBps"] = two_pushes(mec, arr)
    figures["task_100MB_round_trip_s"] = task_round_trip(cluster, transport, arr)

    probe = LatencyProbe(cluster)
    time.sleep(0.5)
    figures["small_call_idle_ms"] = round(probe.finish()["median_ms"], 3)
    if not quick:
        big = np.random.default_rng(1).random(1000 * MB // 8)
        peak = rss_mib(pid)
        probe = LatencyProbe(cluster)
        import threading

        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss_mib(pid))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        mec.push({"big": big}, targets=0)
        middle = time.perf_counter()
        [back] = mec.pull("big", targets=0)
        end = time.perf_counter()
        latency = probe.finish()
        sampling = False
        sampler.join()
        assert np.array_equal(back, big)
        del back
        mec.execute("big = None", targets=0)
        figures["push_1GB_MBps"] = round(1000 / (middle - start))
        figures["pull_1GB_MBps"] = round(1000 / (end - middle))
        figures["controller_rss_peak_1GB_MiB"] = round(peak, 1)
        figures["small_call_during_1GB_ms"] = round(latency["median_ms"], 3)
        figures["small_call_during_1GB_p90_ms"] = round(latency["p90_ms"], 3)
    figures["controller_rss_end_MiB"] = round(rss_mib(pid), 1)
    mec.close()
    return figures


def main() -> None:
    quick = "--quick" in sys.argv
    figures: dict[str, object] = {"benchmark": "data", "python": platform.python_version()}
    if "--fan-out" in sys.argv:
        figures["fan_out"] = fan_out(quick)
        figures["share_8"] = share_many(quick)
        print(json.dumps(figures))
        return
    figures["raw_tls_MBps"] = round(raw_tls_mbps())
    warm, fresh = memcpy_mbps()
    figures["memcpy_MBps"] = round(warm)
    figures["memcpy_fresh_MBps"] = round(fresh)
    with LocalCluster(2) as cluster:
        from ipkernel import client

        figures["first_push_100MB_MBps"] = round(first_push(cluster))
        for transport, name in (("auto", "shm"), ("stream", "stream")):
            figures[name] = bench_path(cluster, transport, quick)
        figures["relay"] = bench_relay(cluster)
        mec = client.MultiEngineClient(cluster.mec_furl)
        data = list(range(1_000_000))
        figures["scatter_list_1M_s"] = round(
            median_time(lambda: mec.scatter("l", data), 7, warmup=0), 4
        )
        figures["gather_list_1M_s"] = round(median_time(lambda: mec.gather("l"), 7, warmup=0), 4)
        mec.close()
    shared = figures["shm"]
    assert isinstance(shared, dict)
    figures["first_push_vs_memcpy"] = round(figures["first_push_100MB_MBps"] / warm, 2)
    figures["push_vs_memcpy"] = round(shared["push_100MB_MBps"] / warm, 2)
    figures["fan_out"] = fan_out(quick)
    figures["share_8"] = share_many(quick)
    figures["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
