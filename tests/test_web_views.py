"""The read-only views the status page is built from, without sockets.

- the controller's views: throughput (:mod:`ipkernel.controller.throughput`), recent
  failures (:mod:`ipkernel.controller.failures`), each engine's state
  (:meth:`ControllerService.engine_status`), over a real service with fake engines, a
  :class:`~twisted.internet.task.Clock` and a wall clock the test sets;
- the streams in flight and their rates (:mod:`ipkernel.adapters.web.transfers`);
- the status document (:mod:`ipkernel.adapters.web.snapshot`), and how fast it is built
  for 1,000 engines.
"""

from __future__ import annotations

import json
import time

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.adapters.web.snapshot import StatusSnapshot
from ipkernel.adapters.web.transfers import MAX_LISTED, TransferRates
from ipkernel.controller.failures import RecentFailures
from ipkernel.controller.queue import EngineQueue
from ipkernel.controller.service import ControllerService
from ipkernel.controller.store import TaskRecord, TaskSpec
from ipkernel.controller.throughput import Throughput
from ipkernel.interfaces.records import STATUSES, TASK_REPLY, TASK_RUN
from ipkernel.wire.stream_table import StreamTable, streams_in_flight
from tests.fakes import FakeEngine


class Wall:
    """A wall clock the test sets (seconds since the epoch)."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class TaskEngine(FakeEngine):
    """A fake engine that answers ``interrupt`` at once."""

    def call(self, command: str, args: list, options: dict | None = None):
        if command == "interrupt":
            return succeed(("ok", [b"none"]))
        return super().call(command, args, options)

    def last_batch(self) -> list[int]:
        """The task ids of the latest ``run_task`` batch received."""
        args = [a for command, a in self.calls if command == "run_task"][-1]
        return [fields[0] for fields, _ in TASK_RUN.unpack(args[0])]


class Rig:
    """A controller service with ``n`` fake engines; reactor time is a Clock, wall time a Wall."""

    def __init__(self, n: int = 2) -> None:
        self.clock = Clock()
        self.wall = Wall()
        self.service = ControllerService(clock=self.clock, now=self.wall)
        self.engines: list[TaskEngine] = []
        for i in range(n):
            engine = TaskEngine({"host": f"node{i}", "pid": 100 + i, "mpi_rank": i})
            self.service.register_engine(engine)
            self.engines.append(engine)

    def run(self, count: int = 1) -> list[int]:
        return [self.service.tasks.run([[0, [b"body"], None]]) for _ in range(count)]

    def reply(self, engine: TaskEngine, *entries: tuple) -> None:
        """Answer ``engine``'s batch: entries ``(taskid, status, value)``."""
        records = []
        for sid, status, value in entries:
            code = STATUSES.index(status)
            if status == "error":
                records.append(((sid, code, 0.5, 0), ([value[0].encode(), value[1].encode()],)))
            else:
                records.append(((sid, code, 0.5, 0), (value,)))
        engine.answer(("tasks", TASK_REPLY.pack(records)))
        self.clock.advance(0)


class ThroughputTests(SynchronousTestCase):
    def test_counts_per_second_oldest_first(self):
        """Each finished task counts in the second it finished in; the view lists the
        window's seconds oldest first, ending with the current one."""
        throughput = Throughput(5)
        for t in (100.2, 100.7, 102.1):
            throughput.count(t)
        self.assertEqual(throughput.view(102.5), {"end": 102, "counts": [0, 0, 2, 0, 1]})
        self.assertEqual(throughput.view(104.0)["counts"], [2, 0, 1, 0, 0])

    def test_a_slot_is_cleared_when_its_second_comes_round(self):
        """Counts older than the window are gone once time has moved past them."""
        throughput = Throughput(5)
        throughput.count(100.0)
        throughput.count(107.5)
        self.assertEqual(throughput.view(107.9)["counts"], [0, 0, 0, 0, 1])
        throughput.count(102.0)  # older than the window: not counted
        self.assertEqual(sum(throughput.view(107.9)["counts"]), 1)

    def test_a_late_count_within_the_window_lands_in_its_second(self):
        """A task dated a little before the latest count still counts in its own second."""
        throughput = Throughput(5)
        throughput.count(103.0)
        throughput.count(101.5)
        self.assertEqual(throughput.view(103.0)["counts"], [0, 0, 1, 0, 1])

    def test_window_must_hold_a_second(self):
        """A window of less than one second is refused."""
        self.assertRaises(ValueError, Throughput, 0)


def _record(taskid: int, outcome: tuple) -> TaskRecord:
    record = TaskRecord(taskid, [TaskSpec([b"body"], None, None, 0)], submitted=1.0)
    record.state, record.outcome, record.engine_id = "failed", outcome, 3
    record.completed, record.attempts, record.duration = 2.0, 1, float("inf")
    return record


class RecentFailuresTests(SynchronousTestCase):
    def test_what_travels_in_the_clear_is_shown(self):
        """An error the controller or engine named shows its type and message; an
        exception raised by user code (pickled) shows only its size."""
        failures = RecentFailures()
        failures.add(_record(1, ("error", ("EngineError", "engine 3 died"))))
        failures.add(_record(2, ("raised", [b"abc", b"defgh"])))
        newest, oldest = failures.view()
        self.assertEqual((newest["taskid"], newest["status"], newest["bytes"]), (2, "raised", 8))
        self.assertIsNone(newest["type"])
        self.assertEqual((oldest["type"], oldest["message"]), ("EngineError", "engine 3 died"))
        self.assertEqual((oldest["engine"], oldest["attempts"]), (3, 1))
        self.assertIsNone(oldest["duration"], "a non-finite duration is left out (JSON)")

    def test_only_the_latest_are_kept(self):
        """Past ``keep`` failures the oldest go first."""
        failures = RecentFailures(keep=3)
        for taskid in range(5):
            failures.add(_record(taskid, ("error", ("TaskAborted", "aborted"))))
        self.assertEqual([f["taskid"] for f in failures.view()], [4, 3, 2])


class EngineQueueViewTests(SynchronousTestCase):
    def test_command_in_flight_since_and_waiting(self):
        """The queue says what the engine runs, since when (its clock), and how many
        commands wait behind it."""
        wall = Wall(50.0)
        engine = FakeEngine()
        queue = EngineQueue(engine, wall)
        self.assertEqual((queue.in_flight, queue.in_flight_since, queue.waiting), (None, None, 0))
        queue.submit("execute", ["a=1"])
        wall.t = 51.0
        queue.submit("pull", ["a"])
        self.assertEqual(
            (queue.in_flight, queue.in_flight_since, queue.waiting), ("execute", 50.0, 1)
        )
        engine.answer()
        self.assertEqual((queue.in_flight, queue.in_flight_since, queue.waiting), ("pull", 51.0, 0))
        engine.answer()
        self.assertEqual((queue.in_flight, queue.in_flight_since), (None, None))


class EngineStatusTests(SynchronousTestCase):
    def test_engines_idle_then_running_tasks(self):
        """Each engine shows its registration info, and while a batch runs: state
        ``tasks``, the task ids, how many are in flight and since when."""
        rig = Rig(2)
        idle = rig.service.engine_status()
        self.assertEqual([e["state"] for e in idle], ["idle", "idle"])
        self.assertEqual(
            [(e["id"], e["host"], e["pid"], e["rank"]) for e in idle],
            [(0, "node0", 100, 0), (1, "node1", 101, 1)],
        )
        rig.wall.t = 1_010.0
        tids = rig.run(2)
        engines = rig.service.engine_status()
        self.assertEqual([e["state"] for e in engines], ["tasks", "tasks"])
        self.assertEqual(sorted(t for e in engines for t in e["tasks"]), tids)
        self.assertEqual(
            [(e["running"], e["since"], e["task_count"]) for e in engines],
            [("run_task", 1_010.0, 1)] * 2,
        )
        for engine in rig.engines:
            batch = engine.last_batch()
            rig.reply(engine, *[(sid, "ok", [b"r"]) for sid in batch])
        self.assertEqual([e["state"] for e in rig.service.engine_status()], ["idle", "idle"])

    def test_engine_running_a_command_with_more_queued(self):
        """A MultiEngine command in flight makes the engine ``busy``; the commands behind
        it are counted."""
        rig = Rig(1)
        rig.service.multiengine.call(0, "execute", ["a=1"])
        rig.service.multiengine.call(0, "pull", ["a"])
        (engine,) = rig.service.engine_status()
        self.assertEqual(
            (engine["state"], engine["running"], engine["queue"]), ("busy", "execute", 1)
        )

    def test_properties_version_follows_announcements(self):
        """The latest properties version an engine announced is shown (an older one
        arriving late changes nothing); an engine that leaves is forgotten."""
        rig = Rig(2)
        rig.service.properties_changed(0, 3)
        rig.service.properties_changed(0, 2)
        rig.service.properties_changed(7, 1)  # no such engine
        self.assertEqual([e["properties_version"] for e in rig.service.engine_status()], [3, 0])
        rig.engines[0].die()
        self.assertEqual([e["id"] for e in rig.service.engine_status()], [1])

    def test_info_of_the_wrong_type_is_left_out(self):
        """Registration info is whatever the engine sent: values of the wrong type show
        as None rather than break the document."""
        rig = Rig(0)
        rig.service.register_engine(FakeEngine({"host": b"bytes", "pid": "12", "mpi_rank": True}))
        (engine,) = rig.service.engine_status()
        self.assertEqual((engine["host"], engine["pid"], engine["rank"]), (None, None, None))
        json.dumps(engine)


class TaskViewTests(SynchronousTestCase):
    def test_throughput_and_failures_follow_finished_tasks(self):
        """Finished tasks count in the second their record is completed; failed ones are
        listed newest first, an aborted one too."""
        rig = Rig(1)
        engine = rig.engines[0]
        tasks = rig.service.tasks
        tids = rig.run(3)
        rig.wall.t = 1_001.5
        batch = engine.last_batch()
        self.assertEqual(batch, [tids[0]])
        rig.reply(engine, (batch[0], "raised", [b"pickled failure"]))
        rig.wall.t = 1_003.2
        batch = engine.last_batch()
        lost = ("TransferError", "lost")
        rig.reply(engine, (batch[0], "ok", [b"r"]), *[(sid, "error", lost) for sid in batch[1:]])
        while tasks.queue_status()["scheduled"] or tasks.queue_status()["pending"]:
            batch = engine.last_batch()
            rig.reply(engine, *[(sid, "error", lost) for sid in batch])
        view = tasks.throughput(1_004.0)
        self.assertEqual(view["end"], 1_004)
        self.assertEqual(view["counts"][-4:], [1, 0, 2, 0])
        failures = tasks.recent_failures()
        self.assertEqual([f["taskid"] for f in failures], [tids[2], tids[0]])
        self.assertEqual((failures[0]["type"], failures[0]["message"]), ("TransferError", "lost"))
        self.assertEqual((failures[1]["status"], failures[1]["bytes"]), ("raised", 15))
        aborted = rig.run()[0]
        tasks.abort(aborted)
        self.assertEqual(tasks.recent_failures()[0]["type"], "TaskAborted")


class StreamsInFlightTests(SynchronousTestCase):
    def test_relayed_stream_shows_its_progress(self):
        """A stream relayed by the controller is listed with its size, the bytes received
        and the bytes held (not yet forwarded)."""
        sent: list = []
        table = StreamTable(sent.append, lambda *a: None, relay=True, odd=False)
        payload = table.open_incoming(3, 1_000, b"header")
        payload.relay.chunk_received(0, b"x" * 100)
        mine = [s for s in streams_in_flight() if s["connection"] == id(table)]
        self.assertEqual(
            mine,
            [
                {
                    "connection": id(table),
                    "sid": 3,
                    "direction": "in",
                    "total": 1_000,
                    "done": 100,
                    "held": 100,
                }
            ],
        )
        table.connection_lost()
        self.assertEqual([s for s in streams_in_flight() if s["connection"] == id(table)], [])


class TransferRatesTests(SynchronousTestCase):
    def setUp(self):
        self.streams = [
            {"connection": 1, "sid": 2, "direction": "in", "total": 5_000, "done": 0, "held": 10},
            {"connection": 1, "sid": 3, "direction": "out", "total": 900, "done": 100, "held": 0},
        ]
        self.rates = TransferRates(lambda: [dict(s) for s in self.streams])

    def test_rates_from_one_sample_to_the_next(self):
        """A stream's rate is what it moved since the previous sample over the time
        between them; unknown at its first sample."""
        first = self.rates.sample(10.0)
        self.assertEqual([s["rate"] for s in first["streams"]], [None, None])
        self.assertEqual((first["incoming"], first["outgoing"], first["held"]), (1, 1, 10))
        self.streams[0]["done"] = 2_000
        self.streams[1]["done"] = 400
        second = self.rates.sample(12.0)
        self.assertEqual([s["rate"] for s in second["streams"]], [1_000.0, 150.0])
        self.assertEqual((second["rate_in"], second["rate_out"]), (1_000.0, 150.0))
        self.assertEqual([s["total"] for s in second["streams"]], [5_000, 900], "largest first")

    def test_samples_close_together_keep_the_rates(self):
        """A sample soon after another reports the rates already known rather than a
        difference over a few milliseconds."""
        self.rates.sample(10.0)
        self.streams[0]["done"] = 1_000
        self.rates.sample(11.0)
        self.streams[0]["done"] = 1_001
        again = self.rates.sample(11.01)
        self.assertEqual(again["streams"][0]["rate"], 1_000.0)

    def test_many_streams_are_counted_but_not_all_listed(self):
        """Only the largest streams are listed one by one; the totals count them all."""
        self.streams = [
            {"connection": 1, "sid": i, "direction": "in", "total": i, "done": 0, "held": 1}
            for i in range(MAX_LISTED + 10)
        ]
        sample = self.rates.sample(1.0)
        self.assertEqual(len(sample["streams"]), MAX_LISTED)
        self.assertEqual((sample["incoming"], sample["held"]), (MAX_LISTED + 10, MAX_LISTED + 10))


class SnapshotTests(SynchronousTestCase):
    def test_document_gathers_every_view(self):
        """The status document holds the engines, their states, the task counts, the
        throughput, the failures and the transfers, and is JSON."""
        rig = Rig(2)
        rig.run(3)
        snapshot = StatusSnapshot(rig.service, now=rig.wall, transfers=TransferRates(list))
        status = json.loads(snapshot.encode())
        self.assertEqual(status["time"], 1_000.0)
        self.assertEqual([e["id"] for e in status["engines"]], [0, 1])
        self.assertEqual(status["engine_states"], {"idle": 0, "tasks": 2, "busy": 0})
        self.assertEqual(
            status["tasks"], {"scheduled": 1, "pending": 2, "succeeded": 0, "failed": 0}
        )
        self.assertEqual(len(status["throughput"]["counts"]), 300)
        self.assertEqual((status["failures"], status["transfers"]["streams"]), ([], []))

    def test_a_thousand_engines_in_a_few_milliseconds(self):
        """The document for 1,000 engines, most running tasks, is built and encoded in a
        few milliseconds: about 4 ms of CPU here; the best of ten runs must stay under
        30 ms of CPU even on a loaded machine (a cost that grew with the square of the
        engines, or per task, would not)."""
        rig = Rig(1_000)
        rig.run(800)
        for engine_id in range(0, 1_000, 3):
            rig.service.multiengine.call(engine_id, "execute", ["a=1"])
        snapshot = StatusSnapshot(rig.service, now=rig.wall, transfers=TransferRates(list))
        times = []
        for _ in range(10):
            start = time.thread_time()
            body = snapshot.encode()
            times.append(time.thread_time() - start)
        status = json.loads(body)
        self.assertEqual(len(status["engines"]), 1_000)
        self.assertEqual(status["engine_states"]["tasks"], 800)
        self.assertLess(min(times), 0.030, f"{min(times) * 1e3:.1f} ms")
