"""The ``mpi`` launcher: ``mpiexec -n N <python> -m ipkernel.cli.ipengine ...``."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ipkernel.cli.launchers.base import EngineCommand, Launcher, LauncherError, LaunchSettings
from ipkernel.cli.processes import ProcessRunner

__all__ = ["MPILauncher"]

_ADVICE = (
    "install Open MPI or MPICH (and mpi4py, for engines to know their rank), name the "
    "program with --mpiexec, or use --launcher local"
)


class MPILauncher(Launcher):
    """One ``mpiexec -n N <python> -m ipkernel.cli.ipengine ...``; engines learn their rank.

    ``mpiexec`` is the command that starts MPI programs, with any options of its own
    (``--mpiexec`` of ipcluster, split as a shell would: ``mpiexec.mpich``, ``mpirun
    --oversubscribe``...). Stopping sends SIGTERM to it, which passes it on to its ranks
    (Open MPI and MPICH both do).
    """

    name = "mpi"
    summary = "mpiexec"

    def __init__(
        self, runner: ProcessRunner, command: EngineCommand, mpiexec: Sequence[str] = ("mpiexec",)
    ) -> None:
        super().__init__(runner, command)
        self.mpiexec = list(mpiexec)

    @classmethod
    def for_cluster(
        cls, runner: ProcessRunner, command: EngineCommand, settings: LaunchSettings
    ) -> MPILauncher:
        """The ``mpiexec`` command of ``settings.mpiexec``; :class:`LauncherError` if empty
        or not split-able."""
        try:
            mpiexec = shlex.split(settings.mpiexec)
        except ValueError as exc:
            raise LauncherError(f"--mpiexec {settings.mpiexec!r}: {exc}")
        if not mpiexec:
            raise LauncherError("--mpiexec needs a command, such as mpiexec or mpiexec.mpich")
        return cls(runner, command, mpiexec)

    def check(self) -> None:
        """Raise :class:`LauncherError` if the ``mpiexec`` program cannot be found."""
        program = self.mpiexec[0]
        if self.runner.which(program) is None:
            raise LauncherError(
                f"--launcher mpi needs {program!r}, which is not on PATH; {_ADVICE}"
            )

    def argv(self, n: int) -> list[str]:
        """The ``mpiexec`` command line for ``n`` engines."""
        return [*self.mpiexec, "-n", str(n), *self.command.argv()]

    def start(self, n: int) -> Deferred:
        self._add(self.runner.spawn("mpiexec", self.argv(n)))
        return defer.succeed(n)
