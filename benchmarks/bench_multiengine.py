"""MultiEngine figures: startup, execute latency, scatter/gather, map. Prints one JSON line.

    python benchmarks/bench_multiengine.py [--quick]

- ``startup_2_s`` / ``startup_8_s``: ``ipcluster start -n N`` until a client sees all N
  engines (median of 3 starts);
- ``execute_ms``: median of 1,000 blocking ``execute('a=1')`` on one engine;
- ``scatter_s`` / ``gather_s`` / ``scatter_gather_s``: ``list(range(1_000_000))`` over all
  engines (2), medians;
- ``map_s``: ``map(lambda x: x*x, range(10_000))`` over all engines, median.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _cluster import LocalCluster, median_time  # noqa: E402


def main() -> None:
    quick = "--quick" in sys.argv
    from ipkernel import client

    figures: dict[str, object] = {"benchmark": "multiengine", "python": platform.python_version()}
    for n in (2, 8):
        starts = []
        for _ in range(1 if quick else 3):
            cluster = LocalCluster(n).start()
            starts.append(cluster.startup)
            cluster.stop()
        figures[f"startup_{n}_s"] = round(statistics.median(starts), 3)

    with LocalCluster(2) as cluster:
        mec = client.MultiEngineClient(cluster.mec_furl)
        calls = 200 if quick else 1000
        figures["execute_ms"] = round(
            median_time(lambda: mec.execute("a=1", targets=0), calls, warmup=100) * 1e3, 3
        )
        data = list(range(1_000_000))
        reps = 3 if quick else 9
        figures["scatter_s"] = round(median_time(lambda: mec.scatter("x", data), reps), 4)
        figures["gather_s"] = round(median_time(lambda: mec.gather("x"), reps), 4)

        def round_trip() -> None:
            mec.scatter("x", data)
            if mec.gather("x") != data:
                raise AssertionError("gather did not give back what was scattered")

        figures["scatter_gather_s"] = round(median_time(round_trip, reps), 4)
        figures["map_s"] = round(
            median_time(lambda: mec.map(lambda x: x * x, range(10_000)), 5 if quick else 21), 4
        )
        mec.close()
    figures["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
