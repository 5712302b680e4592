"""``ipcluster --launcher slurm``: the job watched through ``squeue``, and a real Slurm.

The unit tests drive :class:`SlurmLauncher` with a fake runner and a fake clock; the
integration tests start a one-node Slurm of their own (:mod:`tests.slurmsite`) and run
``ipcluster`` against it: engines as the tasks of a job step, a job that cannot start,
a job whose engines cannot run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.cli.launchers import SlurmLauncher
from ipkernel.cli.launchers.slurmstate import JobState, explain, parse_queue, queue_argv
from tests.cluster import child_env
from tests.commands import CLIProcess, stop_ipcluster
from tests.slurmsite import SlurmSite
from tests.test_cli import FakeRunner, command

STARTUP = 90.0


class QueueTests(SynchronousTestCase):
    def test_parse_queue(self):
        """squeue's `<state>|<reason>` line is read; an unknown job is one that has left the
        queue; squeue failing otherwise gives None (ask again later)."""
        self.assertEqual(
            queue_argv("7"), ["squeue", "--noheader", "--jobs", "7", "--format", "%T|%r"]
        )
        self.assertEqual(parse_queue(0, "PENDING|Resources\n"), JobState("PENDING", "Resources"))
        self.assertTrue(parse_queue(0, "RUNNING|None\n").alive)
        self.assertFalse(parse_queue(0, "COMPLETING|None\n").alive)
        self.assertFalse(parse_queue(0, "FAILED|NonZeroExitCode\n").alive)
        self.assertEqual(parse_queue(0, ""), JobState(""))
        gone_job = "slurm_load_jobs error: Invalid job id specified\n"
        self.assertEqual(parse_queue(1, gone_job), JobState(""))
        self.assertIsNone(
            parse_queue(1, "slurm_load_jobs error: Unable to contact slurm controller")
        )

    def test_explain(self):
        """Common pending reasons are told in words with what to do; limits of accounts and
        QOS as one; others point to squeue --start."""
        self.assertIn("ask for fewer engines (-n)", explain("PartitionConfig"))
        self.assertIn("SBATCH_PARTITION", explain("PartitionConfig"))
        self.assertIn("waiting for CPUs or nodes", explain("Resources"))
        self.assertIn("SBATCH_TIMELIMIT", explain("PartitionTimeLimit"))
        self.assertIn("administrators", explain("AssocGrpCpuLimit"))
        self.assertIn("administrators", explain("QOSMaxCpuPerUserLimit"))
        self.assertIn("squeue --start", explain("SomethingNew"))


class WatchTests(SynchronousTestCase):
    def launcher(self):
        runner = FakeRunner(results={"sbatch": (0, "12\n"), "squeue": (0, "PENDING|None\n")})
        base = Path(self.mktemp())
        launcher = SlurmLauncher(runner, command(), base / "job.sh", base)
        self.reports: list[str] = []
        self.failures: list[str] = []
        launcher.on_report = self.reports.append
        launcher.on_failure = self.failures.append
        return launcher, runner

    def test_pending_reason_reported_when_it_changes(self):
        """A pending job is reported with its reason once the scheduler has given one
        (not while it is "None"), again only when the reason changes, and once when it
        starts running; squeue is asked every 2 s until it has run for 30 s, then every
        15 s."""
        launcher, runner = self.launcher()
        self.successResultOf(launcher.start(2))
        runner.clock.advance(0)
        self.assertEqual(self.reports, [])
        runner.results["squeue"] = (0, "PENDING|Priority\n")
        runner.clock.advance(2)
        self.assertEqual(
            self.reports, ["Slurm job 12 is pending (Priority: jobs of higher priority come first)"]
        )
        runner.clock.advance(2)
        self.assertEqual(len(self.reports), 1)
        runner.results["squeue"] = (0, "PENDING|Resources\n")
        runner.clock.advance(2)
        self.assertIn("Slurm job 12 is pending (Resources: waiting for CPUs", self.reports[-1])
        runner.results["squeue"] = (0, "RUNNING|None\n")
        runner.clock.advance(2)
        self.assertEqual(self.reports[-1], "Slurm job 12 is running")
        self.assertEqual(len(self.reports), 3)
        runner.clock.pump([2] * 15)
        asked = len(runner.ran)
        runner.clock.advance(2)
        self.assertEqual(len(runner.ran), asked, "after 30 s running, asked about less often")
        runner.clock.advance(SlurmLauncher.RUNNING_POLL_INTERVAL)
        self.assertEqual(len(runner.ran), asked + 1)
        self.assertEqual(len(self.reports), 3)
        self.assertEqual(self.failures, [])

    def test_job_that_ends_is_a_failure_quoting_its_output(self):
        """A job that ends is reported through on_failure with its state and the last lines
        of its output file; then it is no longer watched."""
        launcher, runner = self.launcher()
        runner.results["squeue"] = (0, "FAILED|NonZeroExitCode\n")
        self.successResultOf(launcher.start(2))
        launcher.output_file.write_text("srun: error: node1: task 0: Exited with exit code 2\n")
        runner.clock.advance(0)
        self.assertEqual(len(self.failures), 1)
        self.assertIn("Slurm job 12 ended (FAILED); its output (", self.failures[0])
        self.assertIn("ipengine-slurm-12.log):\n    srun: error: node1: task 0", self.failures[0])
        asked = len(runner.ran)
        runner.clock.advance(60)
        self.assertEqual(len(runner.ran), asked)

    def test_stop_ends_the_watch(self):
        """After stop, squeue is no longer polled for reports."""
        launcher, runner = self.launcher()
        self.successResultOf(launcher.start(2))
        runner.results["squeue"] = (0, "")
        self.successResultOf(launcher.stop())
        asked = len(runner.ran)
        runner.clock.advance(60)
        self.assertEqual(len(runner.ran), asked)
        self.assertEqual(self.reports, [])


class SlurmClusterTests(TestCase):
    timeout = 240

    def ipcluster(self, site: SlurmSite, base: Path, *args: str) -> tuple[CLIProcess, dict]:
        env = child_env(base / "ipk", {"SLURM_CONF": str(site.conf)})
        argv = [sys.executable, "-m", "ipkernel.cli.ipcluster", "--launcher", "slurm", *args]
        return CLIProcess(self, argv, env), env

    def test_engines_are_the_tasks_of_a_job_step(self):
        """`ipcluster --launcher slurm -n 2`: one batch job whose step runs the two engines
        (one per task); code runs on them; `ipcluster stop` cancels the job and the queue
        is empty, the engines gone."""
        base = Path(self.mktemp()).absolute()
        site = SlurmSite(self)
        cluster, env = self.ipcluster(site, base, "-n", "2", "--timeout", str(STARTUP))
        cluster.read_until("Connect with:", deadline=STARTUP)
        [job] = site.jobs()
        job_id, state, _ = job.split("|")
        self.assertEqual(state, "RUNNING")
        self.assertEqual(
            sorted(step.split("|")[0] for step in site.steps()), [f"{job_id}.0", f"{job_id}.batch"]
        )
        script = textwrap.dedent(
            """
            import json, os
            from ipkernel import client
            mec = client.MultiEngineClient()
            mec.execute(
                "import os; job = os.environ['SLURM_JOB_ID']; "
                "step = os.environ['SLURM_STEP_ID']; task = int(os.environ['SLURM_PROCID']); "
                "pid = os.getpid()"
            )
            print(json.dumps(mec.pull(("job", "step", "task", "pid"))))
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        pulled = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertEqual(
            sorted((j, s, t) for j, s, t, _ in pulled), [(job_id, "0", 0), (job_id, "0", 1)]
        )
        engines = [pid for *_, pid in pulled]

        stop_ipcluster(self, cluster, env, engines, "the engines to end")
        self.assertEqual(site.jobs(), [])

    def test_job_that_cannot_start_says_why(self):
        """A job asking for more CPUs than the cluster has stays pending: ipcluster says so
        at once with Slurm's reason and what to do, and when --timeout passes it fails
        naming it again, and cancels the job."""
        base = Path(self.mktemp()).absolute()
        site = SlurmSite(self)
        too_many = str(site.cpus + 1)
        cluster, _ = self.ipcluster(site, base, "-n", too_many, "--timeout", "6")
        code, _, err = cluster.wait(timeout=60)
        self.assertEqual(code, 1, err)
        pending = "is pending (PartitionConfig: the job asks for more than the partition has"
        self.assertIn("ipcluster: Slurm job ", err)
        self.assertIn(pending, err)
        self.assertIn("ask for fewer engines (-n)", err)
        self.assertIn(f"only 0 of {too_many} engines registered", err)
        self.assertIn("within 6 s (--timeout); Slurm job ", err)
        self.assertEqual(site.jobs(), [])

    def test_job_whose_engines_cannot_run_fails_at_once(self):
        """A job whose engines cannot start (no such Python on the node) ends at once, and
        ipcluster fails without waiting for --timeout, quoting the job's output."""
        base = Path(self.mktemp()).absolute()
        site = SlurmSite(self)
        cluster, _ = self.ipcluster(
            site, base, "-n", "1", "--timeout", str(STARTUP), "--engine-python", "/no/such/python"
        )
        code, _, err = cluster.wait(timeout=60)
        self.assertEqual(code, 1, err)
        self.assertIn("ipcluster: Slurm job ", err)
        self.assertRegex(err, r"Slurm job 1 (ended \((FAILED|COMPLETED)\)|has ended); its output")
        self.assertIn("/no/such/python", err)
        self.assertNotIn("--timeout", err)
        self.assertEqual(site.jobs(), [])
