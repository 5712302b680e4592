"""Engines started under MPI, with Open MPI and with MPICH: `mpiexec -n N ipengine` and
`ipcluster --launcher mpi`. Each engine's id is its MPI rank, `mpi` (mpi4py's ``MPI``) is in
its namespace, and a collective run through ``execute`` works.

Each implementation is tested when its ``mpiexec`` is installed and mpi4py here runs under
it: mpi4py's wheels carry a build for Open MPI's ABI and one for MPICH's, whose library is
``libmpi.so.12``; Debian names MPICH's ``libmpich.so.12``, so for MPICH the test points
mpi4py at it (``MPI4PY_LIBMPI``) through a ``libmpi.so.12`` link in a directory of its own
(``LD_LIBRARY_PATH``). When that cannot work (an mpi4py built for one implementation
only), the test is skipped saying so.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from tests.cluster import Cluster, child_env, stop_process
from tests.commands import CLIProcess, stop_ipcluster

try:
    import mpi4py  # noqa: F401
except ImportError:  # pragma: no cover - depends on the machine
    mpi4py = None

ENGINES = 3
MPICH_LIBRARY = "/usr/lib/x86_64-linux-gnu/libmpich.so.12"
_CHECK = "from mpi4py import MPI; print(MPI.Get_library_version())"


def _implementation(testcase, name: str) -> tuple[list[str], dict[str, str]]:
    """The mpiexec command (with its options) and the environment that run mpi4py under
    ``name`` ("Open MPI" or "MPICH"); SkipTest naming what is missing otherwise."""
    if mpi4py is None:
        raise SkipTest("needs mpi4py (pip install mpi4py)")
    env: dict[str, str] = {}
    if name == "Open MPI":
        program, package = "mpiexec.openmpi", "openmpi-bin"
        # Three engines on a machine with fewer cores; and Open MPI refuses root unless told.
        mpiexec = [program, "--oversubscribe"]
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    else:
        program, package = "mpiexec.mpich", "mpich"
        mpiexec = [program]
        if Path(MPICH_LIBRARY).exists():
            libdir = Path(tempfile.mkdtemp(prefix="ipk-mpich-"))
            testcase.addCleanup(shutil.rmtree, libdir, True)
            (libdir / "libmpi.so.12").symlink_to(MPICH_LIBRARY)
            env.update(LD_LIBRARY_PATH=str(libdir), MPI4PY_LIBMPI=str(libdir / "libmpi.so.12"))
    if shutil.which(program) is None:
        raise SkipTest(f"needs {program} (Debian package {package})")
    check = subprocess.run(
        [*mpiexec, "-n", "1", sys.executable, "-c", _CHECK],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if name not in check.stdout:
        raise SkipTest(
            f"mpi4py does not run under {name} here (it is built for another MPI): "
            f"{(check.stdout + check.stderr).strip()[-300:]}"
        )
    return mpiexec, env


_CLIENT = textwrap.dedent(
    """
    import json
    from ipkernel import client
    mec = client.MultiEngineClient()
    mec.execute(
        "rank = mpi.COMM_WORLD.Get_rank(); total = mpi.COMM_WORLD.allreduce(rank); "
        "library = mpi.Get_library_version(); import os; pid = os.getpid()"
    )
    print(json.dumps([mec.get_ids(), mec.pull(("id", "rank", "total", "library", "pid"))]))
    """
)


class _MPITests:
    """The tests, run with one MPI implementation (:attr:`implementation`)."""

    implementation = ""
    timeout = 180

    def setUp(self):
        self.mpiexec, self.mpi_env = _implementation(self, self.implementation)

    @inlineCallbacks
    def test_mpiexec_ipengine(self):
        """`mpiexec -n 3 ipengine`: each engine asks for its rank as its id, has `mpi`
        bound, and an allreduce across the engines works."""
        cluster = Cluster(self, n=0, env=self.mpi_env)
        cluster.start_controller()
        mpiexec = subprocess.Popen(
            [*self.mpiexec, "-n", str(ENGINES), sys.executable, "-m", "ipkernel.cli.ipengine"],
            env=cluster.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(stop_process, mpiexec)
        mec = yield cluster.connect()
        ids = yield cluster.wait_for_engines(mec, ENGINES)
        self.assertEqual(ids, [0, 1, 2])
        yield mec.execute(
            "rank = mpi.COMM_WORLD.Get_rank(); total = mpi.COMM_WORLD.allreduce(rank); "
            "library = mpi.Get_library_version()"
        )
        pulled = yield mec.pull(("id", "rank", "total"))
        self.assertEqual(pulled, [[0, 0, 3], [1, 1, 3], [2, 2, 3]])
        libraries = yield mec.pull("library")
        self.assertTrue(all(self.implementation in text for text in libraries), libraries)

    def test_ipcluster_launcher(self):
        """`ipcluster --launcher mpi --mpiexec CMD -n 3`: engine id = rank, `mpi` in each
        namespace, an allreduce through execute; `ipcluster stop` ends every engine."""
        base = Path(self.mktemp()).absolute()
        env = child_env(base / "ipk", self.mpi_env)
        argv = [
            sys.executable,
            "-m",
            "ipkernel.cli.ipcluster",
            "--launcher",
            "mpi",
            "--mpiexec",
            shlex.join(self.mpiexec),
            "-n",
            str(ENGINES),
            "--timeout",
            "90",
        ]
        cluster = CLIProcess(self, argv, env)
        out = cluster.read_until("Connect with:", deadline=90)
        self.assertIn(f"a controller and {ENGINES} engines are running", out)
        result = subprocess.run(
            [sys.executable, "-c", _CLIENT], env=env, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        ids, pulled = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertEqual(ids, [0, 1, 2])
        self.assertEqual([row[:3] for row in pulled], [[0, 0, 3], [1, 1, 3], [2, 2, 3]])
        self.assertTrue(all(self.implementation in row[3] for row in pulled), pulled)
        engines = [row[4] for row in pulled]
        stop_ipcluster(self, cluster, env, engines, "the engines to end")


class OpenMPITests(_MPITests, TestCase):
    implementation = "Open MPI"


class MPICHTests(_MPITests, TestCase):
    implementation = "MPICH"
