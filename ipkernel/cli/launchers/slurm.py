"""The ``slurm`` launcher: a batch job of N tasks (``sbatch``), one engine each (``srun``)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import Deferred

from ipkernel.cli.launchers.base import EngineCommand, Launcher, LauncherError, LaunchSettings
from ipkernel.cli.processes import DEFAULT_GRACE, ProcessRunner, terminate

__all__ = ["SlurmLauncher"]


class SlurmLauncher(Launcher):
    """A Slurm batch job of ``n`` tasks, each an engine started by ``srun``.

    The batch script is written to ``script_path`` and submitted with ``sbatch --parsable``;
    the job id is kept and the job cancelled with ``scancel <id>`` on stop. Partition, time
    limit and account come from the usual ``SBATCH_*`` environment variables
    (``SBATCH_PARTITION``, ``SBATCH_TIMELIMIT``, ``SBATCH_ACCOUNT``...), which ``sbatch``
    reads itself. The engines read the key file and write logs at the same paths as here,
    so those must be on a file system shared with the compute nodes, and the controller must
    listen where they can reach it (``--ip 0.0.0.0``).
    """

    name = "slurm"
    summary = "sbatch/srun"
    remote = True
    requires = {
        "sbatch": "run ipcluster on a Slurm login node, or use --launcher local",
        "scancel": "run ipcluster on a Slurm login node, or use --launcher local",
    }

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

    @defer.inlineCallbacks
    def start(self, n: int) -> Deferred:
        self.script_path.parent.mkdir(parents=True, exist_ok=True)
        self.script_path.write_text(self.script(n))
        code, output = yield self.runner.run(self.submit_argv())
        if code != 0:
            raise LauncherError(f"sbatch failed (exit code {code}): {output.strip()}")
        self.job_id = self.parse_job_id(output)
        return n

    @defer.inlineCallbacks
    def stop(self, grace: float = DEFAULT_GRACE) -> Deferred:
        if self.job_id is not None:
            try:
                yield self.runner.run(self.cancel_argv()).addTimeout(grace, self.runner.clock)
            except Exception:
                pass
        left = yield terminate(self.processes, self.runner.clock, grace)
        return left
