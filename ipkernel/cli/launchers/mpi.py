"""The ``mpi`` launcher: ``mpiexec -n N <python> -m ipkernel.cli.ipengine ...``."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ipkernel.cli.launchers.base import EngineCommand, Launcher
from ipkernel.cli.processes import ProcessRunner

__all__ = ["MPILauncher"]


class MPILauncher(Launcher):
    """One ``mpiexec -n N <python> -m ipkernel.cli.ipengine ...``; engines learn their rank.

    Stopping sends SIGTERM to ``mpiexec``, which passes it on to its ranks (Open MPI and
    MPICH both do).
    """

    name = "mpi"
    summary = "mpiexec"
    requires = {
        "mpiexec": "install Open MPI or MPICH (and mpi4py, for engines to know their rank), "
        "or use --launcher local",
    }

    def __init__(
        self, runner: ProcessRunner, command: EngineCommand, mpiexec: str = "mpiexec"
    ) -> None:
        super().__init__(runner, command)
        self.mpiexec = mpiexec

    def argv(self, n: int) -> list[str]:
        """The ``mpiexec`` command line for ``n`` engines."""
        return [self.mpiexec, "-n", str(n), *self.command.argv()]

    def start(self, n: int) -> Deferred:
        self._add(self.runner.spawn("mpiexec", self.argv(n)))
        return defer.succeed(n)
