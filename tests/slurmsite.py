"""A one-node Slurm cluster for tests: this machine, started and stopped by the test.

:class:`SlurmSite` writes a ``slurm.conf`` for one node (this host, by its short name, with
as many CPUs as it has, reached on 127.0.0.1), with its state, spool, logs and pid files in
a temporary directory of its own (removed afterwards), two free ports, ``SlurmUser=root`` and
``AuthType=auth/none`` (no munge needed), and runs Debian's ``slurmctld`` and ``slurmd``
in the foreground until the test's cleanup. Slurm's commands find this cluster through
``SLURM_CONF`` in :attr:`SlurmSite.env`.

The cleanup kills, by PID, the two daemons and every process that carries this cluster's
``SLURM_CONF`` in its environment (``slurmstepd`` and the jobs' processes, which Slurm
starts away from the test's process tree), whatever happened in the test. Without the
programs (package slurm-wlm) or root, the test is skipped naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest

from tests.cluster import stop_process

__all__ = ["SlurmSite"]

_PROGRAMS = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")

_CONFIG = """\
ClusterName=ipktest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=ipk Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SlurmSite:
    """slurmctld and slurmd for one node, this host; removed in the test's cleanup."""

    def __init__(self, testcase) -> None:
        for program in _PROGRAMS:
            if shutil.which(program) is None:
                raise SkipTest(f"needs {program} (Debian package slurm-wlm)")
        if os.geteuid() != 0:
            raise SkipTest("needs root to run slurmd")
        # slurmd makes Unix sockets in its spool directory, whose paths must stay under
        # 108 bytes: a short directory of its own, not the test's deep temporary one.
        base = Path(tempfile.mkdtemp(prefix="ipkslurm-"))
        testcase.addCleanup(shutil.rmtree, base, True)
        self.dir = base
        for sub in ("state", "spool"):
            (base / sub).mkdir(parents=True)
        self.cpus = os.cpu_count() or 1
        self.node = socket.gethostname().split(".")[0]
        ctld_port, slurmd_port = _free_ports(2)
        self.conf = base / "slurm.conf"
        self.conf.write_text(
            _CONFIG.format(
                node=self.node,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                dir=base,
                cpus=self.cpus,
            )
        )
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._marker = f"SLURM_CONF={self.conf}".encode()
        self.daemons: list[subprocess.Popen] = []
        testcase.addCleanup(self.stop)
        for daemon in ("slurmctld", "slurmd"):
            with (base / f"{daemon}.out").open("wb") as out:
                self.daemons.append(
                    subprocess.Popen(
                        [daemon, "-D", "-f", str(self.conf)],
                        env=self.env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=out,
                    )
                )
        self._wait_until_idle()

    def _wait_until_idle(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while True:
            state = self.run("sinfo", "--noheader", "--format", "%T").stdout.strip()
            if state == "idle":
                return
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    self._failed(f"{daemon.args[0]} exited with code {daemon.returncode}")
            if time.monotonic() > end:
                self._failed(f"the node is {state or 'unknown'} after {timeout:g} s")
            time.sleep(0.1)

    def _failed(self, why: str) -> None:
        logs = "".join(
            f"\n--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(self.dir.glob("slurm*.*"))
            if path.suffix in (".out", ".log")
        )
        if "auth/none" in logs and "plugin" in logs:
            raise SkipTest("this Slurm build has no auth/none plugin (package slurm-wlm)")
        raise AssertionError(f"Slurm did not start: {why}{logs}")

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        """Run a Slurm command against this cluster."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)

    def jobs(self) -> list[str]:
        """``<id>|<state>|<reason>`` for every job in the queue (pending, running, ending)."""
        listed = self.run("squeue", "--noheader", "--format", "%i|%T|%r").stdout
        return listed.split()

    def steps(self) -> list[str]:
        """``<job>.<step>|<name>`` for every job step (``batch`` steps included)."""
        listed = self.run("squeue", "--steps", "--noheader", "--format", "%i|%j").stdout
        return listed.split()

    def _ours(self) -> list[int]:
        """PIDs of the processes that carry this cluster's SLURM_CONF."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if self._marker in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """Kill the daemons and whatever this cluster started, by PID (a throw-away
        cluster has no state worth saving)."""
        end = time.monotonic() + 10
        while (pids := self._ours()) and time.monotonic() < end:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for daemon in self.daemons:
                if daemon.pid in pids:
                    daemon.wait(5)
            time.sleep(0.05)
        for daemon in self.daemons:
            stop_process(daemon)
