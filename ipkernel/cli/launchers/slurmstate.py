"""A Slurm job's state as ``squeue`` reports it, and its pending reasons told in words.

:func:`queue_argv` is the ``squeue`` command for one job, :func:`parse_queue` reads its
output into a :class:`JobState`; :func:`explain` turns Slurm's reason code for a pending
job (``Resources``, ``PartitionConfig``...) into what it means and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JobState", "explain", "parse_queue", "queue_argv"]

# States in which the job is, or may still be, running its engines; any other (COMPLETED,
# FAILED, CANCELLED, TIMEOUT, COMPLETING...) means it has ended or is ending.
_ALIVE = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
    }
)

_NO_LIMIT = "an account or QOS limit holds it back (ask the cluster's administrators)"

# What Slurm's reason codes for a pending job mean, and what to do.
_REASONS = {
    "Resources": "waiting for CPUs or nodes to become free",
    "Priority": "jobs of higher priority come first",
    "PartitionConfig": (
        "the job asks for more than the partition has (nodes, CPUs or memory), so it cannot "
        "start as asked: ask for fewer engines (-n), or choose another partition with "
        "SBATCH_PARTITION"
    ),
    "PartitionNodeLimit": (
        "the job needs more nodes than the partition allows: ask for fewer engines (-n), or "
        "choose another partition with SBATCH_PARTITION"
    ),
    "PartitionTimeLimit": (
        "the job's time limit is over the partition's: set a shorter one with SBATCH_TIMELIMIT"
    ),
    "PartitionDown": "the partition is down: choose another with SBATCH_PARTITION",
    "PartitionInactive": "the partition takes no jobs: choose another with SBATCH_PARTITION",
    "ReqNodeNotAvail": "nodes the job needs are down, drained or reserved",
    "NodeDown": "a node the job needs is down",
    "BeginTime": "the job's start time has not come yet",
    "Dependency": "the job waits for another job",
    "launch failed requeued held": (
        "Slurm could not start the job on its node and holds it: see slurmd's log there, "
        "then 'scontrol release <job id>'"
    ),
    "JobHeldUser": "the job is held: release it with 'scontrol release <job id>'",
    "JobHeldAdmin": "the job is held by an administrator",
    "InvalidAccount": "the job's account is not valid: set another with SBATCH_ACCOUNT",
    "InvalidQOS": "the job's QOS is not valid: set another with SBATCH_QOS",
}


@dataclass(frozen=True)
class JobState:
    """One job as ``squeue`` lists it: its ``state`` (``PENDING``...) and ``reason``.

    ``state`` is ``""`` when Slurm no longer knows the job (it ended a while ago).
    """

    state: str
    reason: str = ""

    @property
    def alive(self) -> bool:
        """Whether the job is waiting or running (not ended, not ending)."""
        return self.state in _ALIVE


def queue_argv(job_id: str) -> list[str]:
    """The ``squeue`` command that prints ``<state>|<reason>`` for job ``job_id``."""
    return ["squeue", "--noheader", "--jobs", job_id, "--format", "%T|%r"]


def parse_queue(code: int, output: str) -> JobState | None:
    """The job's state from ``squeue``'s exit ``code`` and ``output``; ``None`` when
    ``squeue`` itself failed (the controller not answering, say)."""
    for line in output.splitlines():
        state, bar, reason = line.strip().partition("|")
        if bar and state.isupper():
            return JobState(state, reason.strip())
    if code == 0 or "Invalid job id" in output:
        return JobState("")
    return None


def explain(reason: str) -> str:
    """What Slurm's ``reason`` for a pending job means, and what to do, in a few words."""
    if reason.startswith(("Assoc", "QOS", "MaxCpu", "MaxNode", "MaxJob")):
        return _NO_LIMIT
    return _REASONS.get(reason, "see 'squeue --start' and Slurm's list of reason codes")
