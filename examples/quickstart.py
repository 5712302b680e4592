"""Start a local cluster of 4 engines, do some real work on it, and stop it.

    python examples/quickstart.py

It runs ``ipcluster start -n 4`` in the background (in a private IPKERNEL_DIR unless one
is set), waits until all four engines are registered, then:

- estimates pi by Monte Carlo, each engine drawing its own samples;
- scatters a numpy array, transforms each part where it lives, and gathers it back;
- maps a function over a range in parallel and checks it against the serial result;

and finally stops the cluster (every process it started).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from ipkernel import client


def start_cluster(n: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ipkernel.cli.ipcluster", "start", "-n", str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:  # ipcluster prints how to connect once all n are up
        if "MultiEngineClient" in line:
            return proc
    raise SystemExit(f"ipcluster did not start (exit code {proc.wait()})")


def main() -> None:
    os.environ.setdefault("IPKERNEL_DIR", tempfile.mkdtemp(prefix="ipkernel-quickstart-"))
    started = time.perf_counter()
    cluster = start_cluster(4)
    try:
        mec = client.MultiEngineClient()
        print(f"{len(mec.get_ids())} engines ready in {time.perf_counter() - started:.2f} s")

        # Monte Carlo pi: every engine draws 2 million points with its own seed.
        mec.execute(
            "import numpy as np\n"
            "rng = np.random.default_rng(id)\n"
            "xy = rng.random((2_000_000, 2))\n"
            "hits = int(((xy ** 2).sum(axis=1) < 1.0).sum())"
        )
        hits = mec.pull("hits")
        print(f"pi ~ {4 * sum(hits) / (2_000_000 * len(hits)):.5f} from {len(hits)} engines")

        # Scatter an array, work on the parts where they are, gather the result.
        data = np.linspace(0.0, 1.0, 1_000_000)
        mec.scatter("x", data)
        mec.execute("y = np.sqrt(x) * 2")
        y = mec.gather("y")
        assert np.allclose(y, np.sqrt(data) * 2)
        print(f"gathered {y.size:,} values computed on the engines; max {y.max():.3f}")

        # Parallel map equals the serial one.
        squares = mec.map(lambda k: k * k, range(10_000))
        assert squares == [k * k for k in range(10_000)]
        print(f"parallel map of 10,000 items: sum of squares = {sum(squares):,}")
    finally:
        subprocess.run([sys.executable, "-m", "ipkernel.cli.ipcluster", "stop"], check=False)
        cluster.wait(30)
    print("cluster stopped")


if __name__ == "__main__":
    main()
