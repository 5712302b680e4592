"""Start and stop a local cluster for benchmarks: ``ipcluster start -n N`` in a temp dir."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


class LocalCluster:
    """``ipcluster start -n N`` in a private IPKERNEL_DIR; ``startup`` is seconds until a
    client sees all N engines."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.dir = Path(tempfile.mkdtemp(prefix="ipkernel-bench-"))
        self.env = dict(os.environ, IPKERNEL_DIR=str(self.dir))
        self.proc: subprocess.Popen | None = None
        self.startup: float | None = None

    @property
    def mec_furl(self) -> str:
        return str(self.dir / "security" / "ipcontroller-mec.furl")

    @property
    def tc_furl(self) -> str:
        return str(self.dir / "security" / "ipcontroller-tc.furl")

    def start(self) -> LocalCluster:
        from ipkernel import client

        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ipkernel.cli.ipcluster", "start", "-n", str(self.n)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = t0 + 60
        while not os.path.exists(self.mec_furl):
            if time.perf_counter() > deadline or self.proc.poll() is not None:
                raise RuntimeError("ipcluster did not write its key files")
            time.sleep(0.005)
        while True:
            try:
                mec = client.MultiEngineClient(self.mec_furl)
                break
            except client.ControllerUnreachable:
                if time.perf_counter() > deadline:
                    raise
                time.sleep(0.005)
        while len(mec.get_ids()) < self.n:
            if time.perf_counter() > deadline:
                raise RuntimeError("engines did not register in time")
            time.sleep(0.005)
        self.startup = time.perf_counter() - t0
        mec.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(
                [sys.executable, "-m", "ipkernel.cli.ipcluster", "stop"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def median_time(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
