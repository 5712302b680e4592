"""The :class:`Cluster` a Python session starts, uses and stops (SPEC §10).

::

    from ipkernel import Cluster
    with Cluster(n=4) as cluster:          # a controller and 4 engines, waited for
        mec = cluster.multiengine_client()
        tc = cluster.task_client()

A Cluster runs the ``ipcluster`` command as a child process
(:class:`~ipkernel.cluster.process.IPClusterProcess`): the command and the Cluster share
one implementation, and nothing of Twisted's process machinery, no reactor and no signal
handler enters the caller's process, which may be a notebook kernel without a terminal.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipkernel
from ipkernel import paths
from ipkernel.cli.ipcluster.cluster import GRACE
from ipkernel.cli.ipcluster.pidfile import PID_FILE, process_runs, read_pid_file
from ipkernel.cli.ipcluster.stop import stop_ipcluster
from ipkernel.cluster.keywords import ipcluster_args
from ipkernel.cluster.process import IPClusterProcess
from ipkernel.errors import ClusterError

if TYPE_CHECKING:
    from ipkernel.client import MultiEngineClient, TaskClient

__all__ = ["Cluster"]

#: The key file of each role, for :meth:`Cluster.key_file`.
_KEY_FILES = {"engine": paths.ENGINE_FURL, "mec": paths.MEC_FURL, "tc": paths.TC_FURL}
# ipcluster's default --timeout.
_DEFAULT_TIMEOUT = 30.0
# Beyond its --timeout, how long ipcluster may take to start Python and to stop what it
# started before it reports a failure.
_REPORT_MARGIN = 3 * GRACE
# How long stop() waits for ipcluster to stop its processes (SIGTERM, SIGKILL after its
# own grace period) before killing it.
_STOP_TIMEOUT = 4 * GRACE


class _Resources:
    """What a Cluster must release, kept apart from it so that a finalizer can release it."""

    def __init__(self, directory: Path, owned: bool) -> None:
        self.directory = directory
        self.owned = owned
        self.process: IPClusterProcess | None = None
        self.clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self.own_client: Any = None

    def release(self) -> None:
        """Close the clients made, stop the ipcluster, remove the directory if it is ours."""
        for client in [self.own_client, *self.clients]:
            if client is not None:
                try:
                    client.close()
                except Exception:
                    pass  # a client already unusable has nothing left to close
        self.own_client = None
        if self.process is not None:
            self.process.stop(_STOP_TIMEOUT)
            self.process = None
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)


class Cluster:
    """A controller and its engines started from Python, stopped with the object.

    ``Cluster(n=None, launcher='local', ipkernel_dir=None, **options)``: ``n`` engines
    (default: the number of CPUs, or the host file's count), started by ``launcher``
    (``local``, ``mpi``, ``ssh``, ``slurm``); ``options`` are ``ipcluster start``'s, by
    name (``ip``, ``location``, ``db``, ``reuse_keys``, ``engine_args``, ``hostfile``,
    ``timeout``, ``exec_engines``, ``security_dir``, ``log_dir``, ports). An unknown name
    raises ``TypeError`` listing the valid ones; a refused value ``ValueError``. The
    cluster's state lives in ``ipkernel_dir``: by default a fresh temporary directory,
    removed when the cluster stops.

    Nothing starts before :meth:`start` (or entering a ``with`` block). Everything it
    started ends on :meth:`stop`, on leaving the ``with`` block, when the object is
    garbage-collected, when the interpreter exits, and when the process that started it
    dies, even by SIGKILL (the ipcluster watches a lifeline from this process).
    """

    def __init__(
        self,
        n: int | None = None,
        launcher: str = "local",
        ipkernel_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        self._args = ipcluster_args({"n": n, "launcher": launcher, **options})
        self._timeout = float(options.get("timeout") or _DEFAULT_TIMEOUT)
        owned = ipkernel_dir is None
        directory = (
            Path(tempfile.mkdtemp(prefix="ipkernel-cluster-"))
            if owned
            else Path(ipkernel_dir).expanduser().absolute()
        )
        self._setup(directory, owned, options.get("security_dir"))
        self._state = "new"

    def _setup(self, directory: Path, owned: bool, security_dir: Any = None) -> None:
        #: The cluster's state directory (its ``$IPKERNEL_DIR``).
        self.ipkernel_dir = directory
        self._security = paths.security_dir(security_dir or directory / "security")
        self._ipcluster_pid: int | None = None
        self._resources = _Resources(directory, owned)
        # Runs release() once: on stop(), on garbage collection, or at interpreter exit.
        self._release = weakref.finalize(self, self._resources.release)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> Cluster:
        """Attach to the cluster that ``ipcluster`` runs for state directory ``path``.

        The key files are read from ``<path>/security``. :meth:`stop` stops that ipcluster
        as ``ipcluster stop`` does; dropping the object leaves it running. Raises
        :class:`ClusterError` if no ipcluster runs there.
        """
        directory = Path(path).expanduser().absolute()
        pid_file = directory / PID_FILE
        try:
            record = read_pid_file(pid_file)
        except FileNotFoundError:
            raise ClusterError(
                f"no ipcluster is running for {directory} (no {pid_file}); start one with "
                f"'IPKERNEL_DIR={directory} ipcluster start', or use Cluster(...).start()"
            ) from None
        except (OSError, ValueError) as exc:
            raise ClusterError(str(exc)) from None
        if not process_runs(record.pid, "ipcluster"):
            raise ClusterError(
                f"no ipcluster is running for {directory}: the pid file {pid_file} is "
                f"stale (pid {record.pid} is gone)"
            )
        cluster = cls.__new__(cls)
        cluster._args = []
        cluster._timeout = _DEFAULT_TIMEOUT
        cluster._setup(directory, owned=False)
        cluster._ipcluster_pid = record.pid
        cluster._state = "attached"
        return cluster

    def __repr__(self) -> str:
        return f"<Cluster {self.ipkernel_dir} {self._state}>"

    def __enter__(self) -> Cluster:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float | None = None) -> Cluster:
        """Start the controller and the engines; return once every engine has registered.

        ``timeout`` (seconds; default: the ``timeout`` option, or 30) bounds the wait.
        Raises :class:`ClusterError` naming what failed (the process, how it ended, the end
        of its output), after stopping everything started; ``ClusterError`` too if this
        Cluster was started before. Returns the Cluster.
        """
        if self._state != "new":
            raise ClusterError(f"this Cluster is {self._state}; make a new one to start")
        self._state = "starting"
        args = list(self._args)
        wait = self._timeout
        if timeout is not None:
            args += ipcluster_args({"timeout": timeout})
            wait = float(timeout)
        env = dict(os.environ, IPKERNEL_DIR=str(self.ipkernel_dir))
        # The ipcluster runs the code this process runs, wherever it was imported from.
        source = str(Path(ipkernel.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        process = IPClusterProcess(args, env, self.ipkernel_dir / PID_FILE)
        self._resources.process = process
        try:
            process.start()
            process.wait_until_up(wait + _REPORT_MARGIN)
        except BaseException as exc:
            self.stop()
            if isinstance(exc, ClusterError) and self._resources.owned:
                raise ClusterError(
                    f"the cluster did not start: {exc}\n(its logs were in the temporary "
                    f"directory {self.ipkernel_dir}, now removed; pass ipkernel_dir= to keep "
                    "them)"
                ) from None
            if isinstance(exc, ClusterError):
                raise ClusterError(f"the cluster did not start: {exc}") from None
            raise
        self._ipcluster_pid = process.pid
        self._state = "running"
        return self

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop every process the cluster runs; return once they have all ended. Idempotent.

        An attached cluster (:meth:`from_dir`) is stopped as ``ipcluster stop`` does:
        raises :class:`ClusterError` if its ipcluster has not exited after ``timeout``
        seconds. The clients made by :meth:`multiengine_client` and :meth:`task_client`
        are closed first.
        """
        attached = self._state == "attached"
        self._state = "stopped"
        self._release()
        if attached:
            try:
                stop_ipcluster(self.ipkernel_dir / PID_FILE, timeout)
            except ClusterError:
                if process_runs(self._ipcluster_pid, "ipcluster"):
                    raise
                # It had already stopped: nothing left to do.

    @property
    def running(self) -> bool:
        """Whether the cluster was started (or attached to) and not stopped."""
        return self._state in ("running", "attached")

    def key_file(self, role: str) -> Path:
        """The key file for ``role``: ``'engine'``, ``'mec'`` (MultiEngine) or ``'tc'`` (Task)."""
        try:
            return self._security / _KEY_FILES[role]
        except KeyError:
            raise ValueError(
                f"role must be one of {', '.join(map(repr, _KEY_FILES))}, not {role!r}"
            ) from None

    def _running_or_raise(self) -> None:
        if not self.running:
            raise ClusterError(f"this Cluster is {self._state}; start it first")

    def multiengine_client(self, **kwargs: Any) -> MultiEngineClient:
        """A new :class:`~ipkernel.client.MultiEngineClient` connected to this cluster.

        ``kwargs`` are the client's (``timeout``, ``transport``). Closed when the cluster
        stops.
        """
        from ipkernel.client import MultiEngineClient

        self._running_or_raise()
        client = MultiEngineClient(self.key_file("mec"), **kwargs)
        self._resources.clients.add(client)
        return client

    def task_client(self, **kwargs: Any) -> TaskClient:
        """A new :class:`~ipkernel.client.TaskClient` connected to this cluster.

        ``kwargs`` are the client's (``timeout``, ``transport``). Closed when the cluster
        stops.
        """
        from ipkernel.client import TaskClient

        self._running_or_raise()
        client = TaskClient(self.key_file("tc"), **kwargs)
        self._resources.clients.add(client)
        return client

    @property
    def engine_ids(self) -> list[int]:
        """The ids of the engines registered now, asked of the controller."""
        self._running_or_raise()
        if self._resources.own_client is None:
            from ipkernel.client import MultiEngineClient

            self._resources.own_client = MultiEngineClient(self.key_file("mec"))
        return sorted(self._resources.own_client.get_ids())
