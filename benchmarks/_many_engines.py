"""Figures on a local ``ipcluster -n 8``: one push to many engines, over the network path
(``fan_out``) and as one shared read-only copy (``share_many``). Used by
``bench_data.py``; the figures are described in its docstring."""

from __future__ import annotations

import time

from _cluster import LocalCluster, median_time
from _proc import cpu_seconds, pss_mb

MB = 1_000_000


def bytes_written() -> int:
    """What this process has passed to write() and kin, its TLS connections included."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def controller_pid(cluster: LocalCluster) -> int:
    """The pid of the cluster's controller, as ``ipcluster.pid`` lists it."""
    # ipcluster.pid: the ipcluster's pid, then one "<role> <pid>" line per child.
    for line in (cluster.dir / "ipcluster.pid").read_text().splitlines()[1:]:
        role, _, pid = line.partition(" ")
        if role == "controller":
            return int(pid)
    raise RuntimeError("no controller in ipcluster.pid")


def engine_pids(mec) -> list[int]:
    """The pids of the engines ``mec`` sees, as they report them."""
    infos = mec.get_engine_info()
    return [infos[i]["pid"] for i in sorted(infos)]


def fan_out(quick: bool) -> dict:
    """A 100 MB array pushed over the stream path to one engine, then to 8 at once."""
    import numpy as np

    from ipkernel import client

    figures: dict[str, float] = {}
    with LocalCluster(8) as cluster:
        mec = client.MultiEngineClient(cluster.mec_furl, transport="stream")
        controller, engines = controller_pid(cluster), engine_pids(mec)
        arr = np.random.default_rng(2).random(100 * MB // 8)
        mec.push({"x": arr})
        repeat = 3 if quick else 5

        def engines_cpu() -> float:
            return sum(map(cpu_seconds, engines))

        for n, targets in ((1, 0), (8, "all")):
            written, ctl, eng = bytes_written(), cpu_seconds(controller), engines_cpu()
            seconds = median_time(lambda t=targets: mec.push({"x": arr}, targets=t), repeat, 0)
            figures[f"push_100MB_{n}_engine{'s' if n > 1 else ''}_s"] = round(seconds, 3)
            figures[f"client_MB_sent_{n}"] = round((bytes_written() - written) / repeat / MB, 1)
            figures[f"controller_cpu_s_{n}"] = round((cpu_seconds(controller) - ctl) / repeat, 3)
            figures[f"engines_cpu_s_{n}"] = round((engines_cpu() - eng) / repeat, 3)
        mec.execute("s = float(x.sum())")
        if set(mec.pull("s")) != {float(arr.sum())}:
            raise AssertionError("an engine did not get the array whole")
        mec.close()
    figures["ratio_8_to_1"] = round(
        figures["push_100MB_8_engines_s"] / figures["push_100MB_1_engine_s"], 2
    )
    return figures


def share_many(quick: bool) -> dict:
    """One read-only array pushed with ``share=True`` to 8 local engines: its time and
    what it adds to the engines' memory, summed."""
    import numpy as np

    from ipkernel import client

    size = (256 if quick else 1000) * MB
    arr = np.random.default_rng(3).random(size // 8)
    expected = float(arr.sum())
    figures: dict[str, float] = {"array_MB": size / MB}
    with LocalCluster(8) as cluster:
        mec = client.MultiEngineClient(cluster.mec_furl)
        mec.execute("import numpy")  # its pages counted before, not in the growth
        engines = engine_pids(mec)
        if len(engines) != 8:
            raise RuntimeError(f"found {len(engines)} engine processes, expected 8")
        before = sum(map(pss_mb, engines))
        t0 = time.perf_counter()
        mec.push({"s": arr}, share=True)
        figures["share_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        mec.execute("total = float(s.sum())")
        figures["sum_s"] = round(time.perf_counter() - t0, 3)
        if set(mec.pull("total")) != {expected}:
            raise AssertionError("an engine did not see the shared array whole")
        growth = sum(map(pss_mb, engines)) - before
        mec.close()
    figures["engines_pss_growth_MB"] = round(growth, 1)
    figures["growth_per_copy"] = round(growth / (size / MB), 2)
    return figures
