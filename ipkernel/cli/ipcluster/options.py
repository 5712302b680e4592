"""The options of ``ipcluster [start]`` and ``ipcluster stop``, and the command lines they give.

``ipcluster [start]`` takes its own options (``-n``, ``--launcher``...) and every controller
option; :func:`controller_argv` passes the controller options on to the controller, and
:func:`engine_args` the directories and ``--engine-arg`` values to every engine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.python import usage

from ipkernel import paths
from ipkernel.cli import lifeline
from ipkernel.cli.command_options import CommandOptions
from ipkernel.cli.ipcluster.restarts import RESTART_LIMIT, RESTART_PERIOD
from ipkernel.cli.launchers import LAUNCHERS
from ipkernel.controller_options import Options as ControllerOptions

__all__ = ["CONTROLLER_MODULE", "StartOptions", "StopOptions", "controller_argv", "engine_args"]

#: The module ipcluster runs with ``python -m`` to start the controller.
CONTROLLER_MODULE = "ipkernel.cli.ipcontroller"

_CPUS = os.cpu_count() or 1


def _engine_count(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"the number of engines (-n) must be a positive integer, not {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, not {value!r}")
    return number


def _controller_option_names() -> list[str]:
    return [entry[0] for entry in (*ControllerOptions.optParameters, *ControllerOptions.optFlags)]


class StartOptions(CommandOptions, ControllerOptions):
    """Options of ``ipcluster [start]``: the cluster's own, plus every controller option."""

    synopsis = "Usage: ipcluster [start] [-n N] [options]\n       ipcluster stop [options]"
    longdesc = (
        "Start a controller and N engines, wait until every engine has registered, print "
        "how to connect a client, and run until Ctrl-C, SIGTERM or 'ipcluster stop' "
        "(see 'ipcluster stop --help'); then stop every process started. The controller "
        "options are passed to the controller; --security-dir and --log-dir to the engines "
        "too. Children's output goes to <log-dir>/ipcluster-<pid>.log."
    )
    optParameters = [
        [
            "n",
            "n",
            _CPUS,
            f"Number of engines (default: the number of CPUs, {_CPUS}).",
            _engine_count,
        ],
        [
            "launcher",
            None,
            "local",
            "How to start engines (default: local): "
            + ", ".join(f"{name} ({cls.summary})" for name, cls in LAUNCHERS.items())
            + ".",
        ],
        [
            "hostfile",
            None,
            None,
            "For --launcher ssh: a file of 'host [n_engines]' lines (# comments); it sets "
            "the number of engines.",
        ],
        [
            "mpiexec",
            None,
            "mpiexec",
            "For --launcher mpi: the command that starts MPI programs, with any options of "
            "its own, split as a shell would, e.g. 'mpiexec.mpich' or 'mpirun "
            "--oversubscribe'.",
        ],
        [
            "engine-python",
            None,
            None,
            "The Python that runs the engines (default: this one, at the same path on "
            "every host); it must be of this one's version, with ipkernel installed. For "
            "--launcher ssh a relative path is taken from the remote home directory.",
        ],
        [
            "timeout",
            None,
            30.0,
            "Seconds to wait for the controller and every engine to come up.",
            _seconds,
        ],
        ["lifeline-fd", None, None, lifeline.HELP, lifeline.open_fd],
    ]
    optFlags = [
        [
            "no-restart",
            None,
            "Do not replace local engines that die, nor restart a controller that dies; "
            "by default an engine that crashes or is killed by a signal is replaced by a "
            "new engine (with a new id), and with --db a controller is started again "
            f"with --reuse-keys, at most {RESTART_LIMIT} times in {RESTART_PERIOD:g} s "
            "per engine or controller.",
        ],
        [
            "exec-engines",
            None,
            "Start each local engine as its own 'python -m ipkernel.cli.ipengine' instead of "
            "forking them all from one Python that has loaded the engine code (slower).",
        ],
    ]
    metavars = {
        "n": "N",
        "launcher": "NAME",
        "hostfile": "FILE",
        "engine-python": "PATH",
        "mpiexec": "COMMAND",
        "timeout": "SECONDS",
        "engine-arg": "ARG",
        "lifeline-fd": "FD",
    }
    listed_last = ("lifeline-fd",)

    def __init__(self) -> None:
        super().__init__()
        self["engine-arg"] = []

    def opt_engine_arg(self, value: str) -> None:
        """Pass ARG on to every ipengine, e.g. --engine-arg=--property=gpu=1 (repeatable)."""
        self["engine-arg"].append(value)

    def option_sections(self) -> list[tuple[str, list[str]]]:
        """ipcluster's own options, then the controller's."""
        controller = _controller_option_names()
        own = [name for name in self.option_names() if name not in controller]
        return [("Options", own), ("Controller options", controller)]

    def postOptions(self) -> None:  # noqa: N802 - Twisted's name
        super().postOptions()  # the controller options' own checks
        launcher = LAUNCHERS.get(self["launcher"])
        if launcher is None:
            raise usage.UsageError(
                f"--launcher must be one of {', '.join(LAUNCHERS)}, not {self['launcher']!r}"
            )
        for name in launcher.required_options:
            if not self[name]:
                raise usage.UsageError(f"--launcher {launcher.name} needs {self.spelling(name)}")


class StopOptions(CommandOptions):
    """Options of ``ipcluster stop``."""

    synopsis = "Usage: ipcluster stop [options]"
    longdesc = (
        "Stop the ipcluster running for this $IPKERNEL_DIR (found by its pid file, "
        "<ipkernel_dir>/ipcluster.pid): send it SIGTERM and wait until it has stopped "
        "every process it started and exited."
    )
    optParameters = [
        ["timeout", None, 30.0, "Seconds to wait for the ipcluster to exit.", _seconds],
    ]
    metavars = {"timeout": "SECONDS"}


def controller_argv(options: usage.Options, python: str = sys.executable) -> list[str]:
    """The controller's command line: every controller option given to ipcluster, passed on.

    Options left at their default are not repeated; directories are made absolute.
    """
    argv = [python, "-m", CONTROLLER_MODULE]
    for name, _short, default, *_rest in ControllerOptions.optParameters:
        value = options[name]
        if value is None or value == default:
            continue
        if name in ("security-dir", "log-dir", "db"):
            value = str(Path(value).expanduser().absolute())
        argv += [f"--{name}", str(value)]
    for name, *_rest in ControllerOptions.optFlags:
        if options[name]:
            argv.append(f"--{name}")
    return argv


def engine_args(options: usage.Options) -> tuple[str, ...]:
    """The ``ipengine`` options other than ``--furl-file``: directories given, ``--engine-arg``."""
    args: list[str] = []
    if options["security-dir"]:
        args += ["--security-dir", str(paths.security_dir(options["security-dir"]))]
    if options["log-dir"]:
        args += ["--log-dir", str(paths.log_dir(options["log-dir"]))]
    return (*args, *options["engine-arg"])
