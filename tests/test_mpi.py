"""Engines started under MPI (``mpiexec -n N ipengine``) know their rank and talk MPI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.cluster import Cluster, stop_process

try:
    import mpi4py  # noqa: F401
except ImportError:  # pragma: no cover - depends on the machine
    mpi4py = None


class MPIEngineTests(TestCase):
    timeout = 120

    def setUp(self):
        if shutil.which("mpiexec") is None or mpi4py is None:
            raise self.skipTest("needs mpiexec and mpi4py")

    @inlineCallbacks
    def test_engines_get_their_rank_as_id(self):
        """Under mpiexec each engine asks for its MPI rank as its id and has `mpi` bound."""
        cluster = Cluster(self, n=0)
        cluster.start_controller()
        env = dict(cluster.env)
        if os.geteuid() == 0:  # Open MPI refuses root unless told otherwise
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        mpiexec = subprocess.Popen(
            [
                "mpiexec",
                "--oversubscribe",
                "-n",
                "3",
                sys.executable,
                "-m",
                "ipkernel.cli.ipengine",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(stop_process, mpiexec)
        mec = yield cluster.connect()
        ids = yield cluster.wait_for_engines(mec, 3)
        self.assertEqual(ids, [0, 1, 2])
        yield mec.execute(
            "rank = mpi.COMM_WORLD.Get_rank(); total = mpi.COMM_WORLD.allreduce(rank)"
        )
        self.assertEqual((yield mec.pull(("rank", "total"))), [[0, 3], [1, 3], [2, 3]])
