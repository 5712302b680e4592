"""The launchers by ``--launcher`` name, and how ipcluster builds the one asked for.

A new launcher is one module in this package with a :class:`~.base.Launcher` subclass, and
one entry in :data:`LAUNCHERS`.
"""

from __future__ import annotations

from ipkernel.cli.launchers.base import EngineCommand, Launcher, LauncherError, LaunchSettings
from ipkernel.cli.launchers.local import LocalLauncher
from ipkernel.cli.launchers.mpi import MPILauncher
from ipkernel.cli.launchers.slurm import SlurmLauncher
from ipkernel.cli.launchers.ssh import SSHLauncher
from ipkernel.cli.processes import ProcessRunner

__all__ = ["LAUNCHERS", "make_launcher"]

#: The launchers by ``--launcher`` name.
LAUNCHERS: dict[str, type[Launcher]] = {
    cls.name: cls for cls in (LocalLauncher, MPILauncher, SSHLauncher, SlurmLauncher)
}


def make_launcher(
    name: str, runner: ProcessRunner, command: EngineCommand, settings: LaunchSettings
) -> Launcher:
    """Build the launcher called ``name`` (a key of :data:`LAUNCHERS`) for a cluster.

    Raises :class:`LauncherError` for an unknown name, for settings the launcher cannot use
    (a missing or bad host file), or when a program it needs is not installed
    (:meth:`Launcher.check`).
    """
    try:
        cls = LAUNCHERS[name]
    except KeyError:
        raise LauncherError(f"unknown launcher {name!r}; choose one of {', '.join(LAUNCHERS)}")
    launcher = cls.for_cluster(runner, command, settings)
    launcher.check()
    return launcher
