"""``ipcluster``: start a controller and N engines with one command, and stop them all again.

::

    ipcluster -n 4              # or: ipcluster start -n 4
    ipcluster stop              # from another terminal: stops the running ipcluster

``ipcluster start`` runs one controller (``python -m ipkernel.cli.ipcontroller``) and the
engines at the same time (engines wait for the controller's key file by themselves). Local
engines are forked from one Python that has loaded the engine code once
(:mod:`ipkernel.cli.forkengines`), which makes N engines start about as fast as one;
``--exec-engines`` runs ``python -m ipkernel.cli.ipengine`` for each instead. It waits
until every engine has registered, prints the Python lines that connect a client, and runs
until Ctrl-C, SIGTERM or ``ipcluster stop``. It then stops every process it started, by PID
(SIGTERM, then SIGKILL after a few seconds), waits for each, and exits 0. It exits non-zero,
with a message and the end of the failing process's output, when the controller or an
engine ends or does not come up within ``--timeout`` seconds; a controller that stops
later (for example ``mec.kill(controller=True)``) ends the cluster too. A local engine
that dies while the cluster runs (a crash, a signal; not ``mec.kill()``) is replaced by
a new one, at most 3 times a minute per engine (:mod:`~ipkernel.cli.ipcluster.restarts`),
unless ``--no-restart``.

Children's output does not reach the terminal: it is appended, line by line and tagged with
the child's role and PID, to ``<log-dir>/ipcluster-<pid>.log`` (the children also keep
their own log files there).

The pid file ``<ipkernel_dir>/ipcluster.pid`` (:mod:`~ipkernel.cli.ipcluster.pidfile`)
holds the ipcluster's PID and a ``<role> <pid>`` line per process it started; ``ipcluster
stop`` sends SIGTERM to the first and waits until it is gone. One ipcluster runs per
``$IPKERNEL_DIR``; a pid file left by one that was killed is removed, and the processes it
lists that are still running ipkernel are stopped, by ``ipcluster stop`` and by the next
``ipcluster start``.

The controller and local engines are given ipcluster's lifeline
(:mod:`ipkernel.cli.lifeline`): should ipcluster be killed, they stop by themselves. With
``--lifeline-fd FD`` ipcluster watches one of its own and stops the cluster when the
program that started it ends; :class:`ipkernel.Cluster` runs it so.

Engines elsewhere: ``--launcher mpi|ssh|slurm`` (see :mod:`ipkernel.cli.launchers`).

Modules: :mod:`~ipkernel.cli.ipcluster.command` (the command and its reactor),
:mod:`~ipkernel.cli.ipcluster.options` (its options, and the controller's and engines'
command lines), :mod:`~ipkernel.cli.ipcluster.cluster` (one running cluster),
:mod:`~ipkernel.cli.ipcluster.registration` (waiting for the engines),
:mod:`~ipkernel.cli.ipcluster.restarts` (which dead engines are replaced),
:mod:`~ipkernel.cli.ipcluster.output` (what it prints and logs),
:mod:`~ipkernel.cli.ipcluster.stop` and :mod:`~ipkernel.cli.ipcluster.pidfile`
(``ipcluster stop`` and the pid file).
"""

import gc

# Loading these modules, and Twisted's under them, makes many objects and no garbage:
# collections meanwhile would only slow every start of ipcluster.
_collecting = gc.isenabled()
gc.disable()
try:
    from ipkernel.cli.ipcluster.cluster import ClusterSupervisor, StopRequested
    from ipkernel.cli.ipcluster.command import main, start_main
    from ipkernel.cli.ipcluster.options import (
        StartOptions,
        StopOptions,
        controller_argv,
        engine_args,
    )
    from ipkernel.cli.ipcluster.output import connect_lines
    from ipkernel.cli.ipcluster.stop import stop_main
finally:
    if _collecting:
        gc.enable()

__all__ = [
    "ClusterSupervisor",
    "StartOptions",
    "StopOptions",
    "StopRequested",
    "connect_lines",
    "controller_argv",
    "engine_args",
    "main",
    "start_main",
    "stop_main",
]
