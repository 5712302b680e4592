"""The ``slurm`` launcher: a batch job of N tasks (``sbatch``), one engine each (``srun``)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from ipkernel.cli.launchers.base import EngineCommand, Launcher, LauncherError, LaunchSettings
from ipkernel.cli.launchers.slurmstate import JobState, explain, parse_queue, queue_argv
from ipkernel.cli.processes import DEFAULT_GRACE, ProcessRunner, terminate

__all__ = ["SlurmLauncher"]


class SlurmLauncher(Launcher):
    """A Slurm batch job of ``n`` tasks, each an engine started by ``srun``.

    The batch script is written to ``script_path`` and submitted with ``sbatch --parsable``;
    the job's output goes to ``<output_dir>/ipengine-slurm-<job id>.log``. Partition, time
    limit and account come from the usual ``SBATCH_*`` environment variables
    (``SBATCH_PARTITION``, ``SBATCH_TIMELIMIT``, ``SBATCH_ACCOUNT``...), which ``sbatch``
    reads itself. The engines read the key file and write logs at the same paths as here,
    so those must be on a file system shared with the compute nodes, and the controller must
    listen where they can reach it (``--ip 0.0.0.0``).

    Once submitted, the job is watched with ``squeue`` every :attr:`POLL_INTERVAL` seconds
    (every :attr:`RUNNING_POLL_INTERVAL` once it has run for :attr:`STARTING_PERIOD`): a
    job that is pending is reported (:attr:`on_report`) with Slurm's reason and what it
    means, again whenever the reason changes; a job that ends, before or after its engines
    came, is reported through :attr:`on_failure` with the last lines of its output.
    Stopping cancels it with ``scancel <id>`` and waits (at most twice the grace period)
    until Slurm says it has ended.
    """

    name = "slurm"
    summary = "sbatch/srun"
    remote = True
    requires = {
        "sbatch": "run ipcluster on a Slurm login node, or use --launcher local",
        "squeue": "run ipcluster on a Slurm login node, or use --launcher local",
        "scancel": "run ipcluster on a Slurm login node, or use --launcher local",
    }
    POLL_INTERVAL = 2.0
    RUNNING_POLL_INTERVAL = 15.0
    # Engines that cannot start end their job within moments: the job is watched closely
    # for this long after it starts running.
    STARTING_PERIOD = 30.0
    # Lines of the job's output quoted when it ends early.
    QUOTED_LINES = 12

    def __init__(
        self,
        runner: ProcessRunner,
        command: EngineCommand,
        script_path: Path,
        output_dir: Path,
        job_name: str = "ipengine",
    ) -> None:
        super().__init__(runner, command)
        self.script_path = Path(script_path)
        self.output_dir = Path(output_dir)
        self.job_name = job_name
        self.job_id: str | None = None
        #: The job's state at the last look (None before the first).
        self.job_state: JobState | None = None
        self._poll_call: Any = None
        self._stopping = False
        self._told_pending = False
        self._running_since: float | None = None

    @classmethod
    def for_cluster(
        cls, runner: ProcessRunner, command: EngineCommand, settings: LaunchSettings
    ) -> SlurmLauncher:
        """The batch script and the job's output go to the cluster's log directory."""
        log_dir = settings.log_dir
        return cls(runner, command, log_dir / f"ipcluster-{os.getpid()}-slurm.sh", log_dir)

    def script(self, n: int) -> str:
        """The batch script for ``n`` engines."""
        output = shlex.quote(str(self.output_dir / "ipengine-slurm-%j.log"))
        return "\n".join(
            [
                "#!/bin/sh",
                f"#SBATCH --job-name={self.job_name}",
                f"#SBATCH --ntasks={n}",
                f"#SBATCH --output={output}",
                "# Written by ipcluster: one ipkernel engine per task; scancel on stop.",
                f"exec srun {shlex.join(self.command.argv())}",
                "",
            ]
        )

    def submit_argv(self) -> list[str]:
        """The ``sbatch`` command line."""
        return ["sbatch", "--parsable", str(self.script_path)]

    def cancel_argv(self) -> list[str]:
        """The ``scancel`` command line (after a successful submission)."""
        if self.job_id is None:
            raise LauncherError("no Slurm job was submitted")
        return ["scancel", self.job_id]

    @staticmethod
    def parse_job_id(output: str) -> str:
        """The job id in ``sbatch --parsable`` output: ``<id>`` or ``<id>;<cluster>``."""
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        job = lines[-1].split(";", 1)[0] if lines else ""
        if not job.isdigit():
            raise LauncherError(f"sbatch did not print a job id: {output.strip()!r}")
        return job

    @property
    def output_file(self) -> Path | None:
        """The job's output file (once submitted)."""
        if self.job_id is None:
            return None
        return self.output_dir / f"ipengine-slurm-{self.job_id}.log"

    @defer.inlineCallbacks
    def start(self, n: int) -> Deferred:
        self.script_path.parent.mkdir(parents=True, exist_ok=True)
        self.script_path.write_text(self.script(n))
        code, output = yield self.runner.run(self.submit_argv())
        if code != 0:
            raise LauncherError(f"sbatch failed (exit code {code}): {output.strip()}")
        self.job_id = self.parse_job_id(output)
        self._poll_later(0)
        return n

    def _poll_later(self, delay: float) -> None:
        if not self._stopping:
            self._poll_call = self.runner.clock.callLater(delay, self._poll)

    @defer.inlineCallbacks
    def _poll(self) -> Deferred:
        self._poll_call = None
        try:
            code, output = yield self.runner.run(queue_argv(self.job_id))
        except OSError as exc:
            code, output = -1, str(exc)
        if self._stopping:
            return
        state = parse_queue(code, output)
        if state is None:
            self._poll_later(self.POLL_INTERVAL)
            return
        previous, self.job_state = self.job_state, state
        if not state.alive:
            self._fail(self._ended_message(state))
            return
        # A job just submitted is pending for no reason ("None") until the scheduler has
        # looked at it: only real reasons are worth a line.
        if state.state == "PENDING" and state.reason != "None" and state != previous:
            self._told_pending = True
            self._report(
                f"Slurm job {self.job_id} is pending ({state.reason}: {explain(state.reason)})"
            )
        elif state.state == "RUNNING" and self._told_pending:
            self._told_pending = False
            self._report(f"Slurm job {self.job_id} is running")
        now = self.runner.clock.seconds()
        if state.state != "RUNNING":
            self._running_since = None
        elif self._running_since is None:
            self._running_since = now
        settled = (
            self._running_since is not None and now - self._running_since >= self.STARTING_PERIOD
        )
        self._poll_later(self.RUNNING_POLL_INTERVAL if settled else self.POLL_INTERVAL)

    def _ended_message(self, state: JobState) -> str:
        how = f"ended ({state.state})" if state.state else "has ended"
        output = self.output_file
        try:
            lines = output.read_text(errors="replace").splitlines()[-self.QUOTED_LINES :]
        except OSError:
            lines = []
        quoted = "".join(f"\n    {line}" for line in lines) if lines else " (none yet)"
        return f"Slurm job {self.job_id} {how}; its output ({output}):{quoted}"

    @defer.inlineCallbacks
    def stop(self, grace: float = DEFAULT_GRACE) -> Deferred:
        self._stopping = True
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        if self.job_id is not None:
            try:
                yield self.runner.run(self.cancel_argv()).addTimeout(grace, self.runner.clock)
                yield self._wait_until_ended(2 * grace)
            except Exception:
                pass
        left = yield terminate(self.processes, self.runner.clock, grace)
        return left

    @defer.inlineCallbacks
    def _wait_until_ended(self, timeout: float) -> Deferred:
        """Poll ``squeue`` until the job is no longer alive, or ``timeout`` seconds pass."""
        clock = self.runner.clock
        deadline = clock.seconds() + timeout
        while clock.seconds() < deadline:
            code, output = yield self.runner.run(queue_argv(self.job_id))
            state = parse_queue(code, output)
            if state is not None and not state.alive and state.state != "COMPLETING":
                return
            yield task.deferLater(clock, 0.2, lambda: None)
