"""Engine launchers for ``ipcluster``: start engines somewhere, and stop them all again.

A launcher starts the engines of one cluster in one way (SPEC §8); each is one module:

- :mod:`~ipkernel.cli.launchers.local`: engines on this host, forked from one Python that
  has loaded the engine code (:mod:`ipkernel.cli.forkengines`), or one ``ipengine``
  subprocess each;
- :mod:`~ipkernel.cli.launchers.mpi`: ``<mpiexec> -n N <python> -m ipkernel.cli.ipengine ...``;
- :mod:`~ipkernel.cli.launchers.ssh`: engines on the hosts of a host file, over ``ssh``,
  after checking each host (:mod:`~ipkernel.cli.launchers.hostcheck`) and copying the
  engine key file there with ``scp``;
- :mod:`~ipkernel.cli.launchers.slurm`: a batch job (``sbatch``) that runs ``srun <python>
  -m ipkernel.cli.ipengine ...``, watched with ``squeue``
  (:mod:`~ipkernel.cli.launchers.slurmstate`) and cancelled with ``scancel`` on stop.

:mod:`~ipkernel.cli.launchers.base` holds the contract they share (:class:`Launcher`,
:class:`EngineCommand`, :class:`LaunchSettings`), :mod:`~ipkernel.cli.launchers.registry`
the launchers by ``--launcher`` name (:data:`LAUNCHERS`, :func:`make_launcher`).
"""

from ipkernel.cli.launchers.base import (
    ENGINE_MODULE,
    EngineCommand,
    Launcher,
    LauncherError,
    LaunchSettings,
    wait_for_file,
)
from ipkernel.cli.launchers.local import FORK_MODULE, LocalLauncher
from ipkernel.cli.launchers.mpi import MPILauncher
from ipkernel.cli.launchers.registry import LAUNCHERS, make_launcher
from ipkernel.cli.launchers.slurm import SlurmLauncher
from ipkernel.cli.launchers.ssh import HostEntry, SSHLauncher, parse_host_file

__all__ = [
    "ENGINE_MODULE",
    "FORK_MODULE",
    "LAUNCHERS",
    "EngineCommand",
    "HostEntry",
    "LaunchSettings",
    "Launcher",
    "LauncherError",
    "LocalLauncher",
    "MPILauncher",
    "SSHLauncher",
    "SlurmLauncher",
    "make_launcher",
    "parse_host_file",
    "wait_for_file",
]
