"""The Task interface without sockets: store, task controller, engine batches, client.

- the store and the controller's task parsing, as plain calls;
- the task controller over a real :class:`ControllerService` with fake engines that
  answer when the test says so (batches, retries, engine death, aborts, dependencies,
  recovery chains), time driven by a :class:`~twisted.internet.task.Clock`;
- :class:`EngineCore` running batches inline (task kinds, failures, ``depend``,
  aborts, and the SIGINT that interrupts a running task);
- the whole path in one process: the asynchronous client over in-memory PB, the task
  adapter, the controller and in-process engines.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ipkernel.adapters.gate import GateRoot
from ipkernel.adapters.pb_engine import RemoteEngine
from ipkernel.adapters.pb_task import task_avatar_factory
from ipkernel.client.task_async import AsyncTaskClient
from ipkernel.client.task_types import (
    MapTask,
    StringTask,
    Task,
    TaskResult,
    task_to_wire,
)
from ipkernel.controller.service import ControllerService
from ipkernel.controller.store import MemoryStore, TaskRecord, TaskSpec
from ipkernel.controller.submission import MAX_CHAIN, parse_task
from ipkernel.controller.tasks import TaskController
from ipkernel.engine.core import EngineCore
from ipkernel.engine.interpreter import Interpreter
from ipkernel.engine.properties import Properties
from ipkernel.errors import (
    CompositeError,
    EngineError,
    SerializationError,
    TaskAborted,
    TransferError,
)
from ipkernel.frames import Serialized
from ipkernel.interfaces.records import (
    STATUSES,
    TASK_REPLY,
    TASK_RUN,
    TASK_SUBMIT,
    MalformedRecords,
    RecordCodec,
    pack_results,
    unpack_results,
)
from ipkernel.interfaces.task import ITaskController
from ipkernel.security import roles
from ipkernel.serialization import (
    deserialize,
    deserialize_failure,
    dump,
    load,
    serialize,
)
from ipkernel.wire.broker import ClientFactory, ServerFactory
from ipkernel.wire.kept import KeptPayload
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.transfer import EnginePayloads
from tests.fakes import FakeEngine

SECRET = "t" * 43


def body(tag: str = "x") -> list[bytes]:
    """Task frames the controller never reads (any non-empty list of bytes will do)."""
    return [b"task-" + tag.encode()]


def chain(*links: tuple[int, list[bytes] | None]) -> list[list]:
    """A task's wire form: ``(retries, depend)`` for the task, then each recovery task."""
    return [[retries, body(str(n)), depend] for n, (retries, depend) in enumerate(links)]


def plain(retries: int = 0) -> list[list]:
    return chain((retries, None))


class TaskEngine(FakeEngine):
    """A fake engine that answers ``interrupt`` at once and records the task ids."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupts: list[int] = []

    def call(self, command: str, args: list, options: dict | None = None):
        if command == "interrupt":
            self.calls.append((command, list(args)))
            self.interrupts.append(args[0])
            return succeed(("ok", [b"none"]))
        return super().call(command, args, options)

    def batches(self) -> list[list[int]]:
        """The task ids of every run_task batch received, in order."""
        return [
            [fields[0] for fields, _ in TASK_RUN.unpack(args[0])]
            for command, args in self.calls
            if command == "run_task"
        ]

    def last_batch(self) -> list[int]:
        return self.batches()[-1]


class Rig:
    """A controller service with fake engines; time is a Clock."""

    def __init__(self, n: int = 2) -> None:
        self.clock = Clock()
        self.times = iter(range(1_000_000))
        self.service = ControllerService(clock=self.clock)
        self.tasks: TaskController = self.service.tasks
        self.engines: list[TaskEngine] = []
        for _ in range(n):
            self.add_engine()

    def add_engine(self) -> TaskEngine:
        engine = TaskEngine()
        self.service.register_engine(engine)
        self.engines.append(engine)
        return engine

    def run(self, task: list | None = None) -> int:
        return self.tasks.run(task if task is not None else plain())

    def reply(self, engine: TaskEngine, *entries: tuple) -> None:
        """Answer ``engine``'s batch: entries ``(taskid, status, value[, seconds])``."""
        records = []
        for entry in entries:
            sid, status, value = entry[:3]
            seconds = entry[3] if len(entry) > 3 else 1e-4
            code = STATUSES.index(status)
            if status == "declined":
                records.append(((sid, code, seconds, value), (None,)))
            elif status == "error":
                records.append(((sid, code, seconds, 0), ([value[0].encode(), value[1].encode()],)))
            else:
                records.append(((sid, code, seconds, 0), (value,)))
        engine.answer(("tasks", TASK_REPLY.pack(records)))
        self.clock.advance(0)

    def ok(self, engine: TaskEngine, seconds: float = 1e-4) -> list[int]:
        """Answer ``engine``'s batch with success for every task in it; return the ids."""
        batch = engine.last_batch()
        self.reply(engine, *[(sid, "ok", [b"r%d" % sid], seconds) for sid in batch])
        return batch

    def record(self, taskid: int) -> dict:
        return self.tasks.store.get(taskid).to_wire()


# -- the store and task parsing --------------------------------------------------------------


class ParseTaskTests(SynchronousTestCase):
    def test_chain_with_depend(self):
        """A task and its recovery tasks become specs; depend frames get a SHA-256 digest."""
        specs = parse_task([[2, body("a"), [b"dep"]], [0, body("b"), None]])
        self.assertEqual([s.retries for s in specs], [2, 0])
        self.assertEqual(len(specs[0].digest), 32)
        self.assertIsNone(specs[1].digest)
        self.assertEqual(parse_task([[0, body(), [b"dep"]]])[0].digest, specs[0].digest)

    def test_malformed_tasks_are_refused(self):
        """Anything but a list of [retries >= 0, frames, frames or None] is a ValueError."""
        for bad in (
            [],
            None,
            [[0, body()]],
            [[-1, body(), None]],
            [[True, body(), None]],
            [[0, [], None]],
            [[0, ["text"], None]],
            [[0, body(), [1]]],
            [[0, body(), None]] * (MAX_CHAIN + 2),
        ):
            self.assertRaises(ValueError, parse_task, bad)


class PackedRecordsTests(SynchronousTestCase):
    def test_round_trip(self):
        """Records and their frame groups (None included) come back as they went."""
        codec = RecordCodec("qd", 2)
        records = [((1, 0.5), ([b"a", b"b"], None)), ((-1, 2.0), ([], [b"c"]))]
        message = codec.pack(records)
        self.assertEqual(message[1:], [b"a", b"b", b"c"])
        self.assertEqual(
            codec.unpack(message), [((1, 0.5), [[b"a", b"b"], None]), ((-1, 2.0), [[], [b"c"]])]
        )
        self.assertEqual(codec.unpack(codec.pack([])), [])

    def test_malformed_messages(self):
        """A message that does not match its codec is refused with MalformedRecords."""
        codec = RecordCodec("q", 1)
        good = codec.pack([((1,), ([b"x"],))])
        for bad in (
            [],
            "text",
            [good[0][:-1], b"x"],
            [good[0]],
            [good[0], b"x", b"y"],
            [good[0], "x"],
            [codec.pack([((1,), (None,))])[0][:-4] + (-2).to_bytes(4, "little", signed=True)],
        ):
            self.assertRaises(MalformedRecords, codec.unpack, bad)

    def test_results_round_trip(self):
        """Task records cross as packed results and come back as the same dicts."""
        record = TaskRecord(5, [TaskSpec(body(), None, None, 0)], submitted=1.5)
        record.state, record.outcome, record.attempts = "failed", ("error", ("E", "m")), 2
        done = record.to_wire()
        record2 = TaskRecord(6, [TaskSpec(body(), None, None, 0)], submitted=2.0)
        record2.state, record2.outcome, record2.engine_id = "succeeded", ("ok", [b"v"]), 3
        record2.duration = 0.25
        back = unpack_results(pack_results([done, None, record2.to_wire()]))
        self.assertEqual(back[0]["value"], ("E", "m"))
        self.assertEqual(
            {k: v for k, v in back[0].items() if k != "value"},
            {k: v for k, v in done.items() if k != "value"},
        )
        self.assertIsNone(back[1])
        self.assertEqual(back[2], {**record2.to_wire(), "value": [b"v"]})


# -- the task controller with fake engines ------------------------------------------------------


class ControllerBasicsTests(SynchronousTestCase):
    def test_provides_the_interface(self):
        """The task controller passes the ITaskController interface check."""
        verifyObject(ITaskController, Rig(0).tasks)

    def test_task_waits_for_the_first_engine(self):
        """A task submitted before any engine exists is sent to the first one registered,
        during its registration: no reactor turn is needed."""
        rig = Rig(0)
        tid = rig.run()
        self.assertEqual(
            rig.tasks.queue_status(), {"scheduled": 1, "pending": 0, "succeeded": 0, "failed": 0}
        )
        engine = rig.add_engine()
        self.assertEqual(engine.last_batch(), [tid])
        self.assertEqual(rig.clock.getDelayedCalls(), [])
        rig.ok(engine)
        record = rig.record(tid)
        self.assertEqual(
            (record["state"], record["status"], record["engine_id"]), ("succeeded", "ok", 0)
        )
        self.assertEqual(record["value"], [b"r%d" % tid])

    def test_results_waiters_and_barrier(self):
        """get_task_result answers None or waits; barrier waits for all; unknown ids fail."""
        rig = Rig(1)
        a, b = rig.run(), rig.run()
        self.assertIsNone(self.successResultOf(rig.tasks.get_task_result(a)))
        waiting = rig.tasks.get_task_result(a, block=True)
        many = rig.tasks.get_task_results([a, b], block=True)
        barrier = rig.tasks.barrier([a, b])
        self.assertRaises(IndexError, rig.tasks.barrier, [a, 99])
        self.assertRaises(IndexError, rig.tasks.get_task_result, 99)
        rig.ok(rig.engines[0])
        self.assertEqual(self.successResultOf(waiting)["taskid"], a)
        self.assertNoResult(barrier)
        rig.ok(rig.engines[0])
        self.assertIsNone(self.successResultOf(barrier))
        self.assertEqual([r["taskid"] for r in self.successResultOf(many)], [a, b])
        self.assertEqual(self.successResultOf(rig.tasks.barrier([])), None)

    def test_queue_status_and_clear(self):
        """queue_status counts (or lists) records by state; clear forgets finished ones."""
        rig = Rig(1)
        ids = [rig.run() for _ in range(3)]
        self.assertEqual(
            rig.tasks.queue_status(verbose=True),
            {"scheduled": ids[1:], "pending": ids[:1], "succeeded": [], "failed": []},
        )
        rig.reply(rig.engines[0], (ids[0], "raised", [b"boom"]))
        self.assertEqual(rig.tasks.queue_status()["failed"], 1)
        rig.tasks.clear()
        self.assertRaises(IndexError, rig.tasks.get_task_result, ids[0])
        self.assertEqual(
            rig.tasks.queue_status(), {"scheduled": 1, "pending": 1, "succeeded": 0, "failed": 0}
        )

    def test_run_many_refuses_bad_items_only(self):
        """run_many accepts the good tasks and reports each bad one (bad task, id in use)."""
        rig = Rig(0)
        first = rig.tasks.reserve_ids(3)
        errors = rig.tasks.run_many(
            [
                (first, plain()),
                (first + 1, [[-1, body(), None]]),
                (first, plain()),
                (first + 2, plain()),
            ]
        )
        self.assertIsNone(errors[0])
        self.assertIsInstance(errors[1], ValueError)
        self.assertIn("already in use", str(errors[2]))
        self.assertIsNone(errors[3])
        self.assertEqual(rig.tasks.queue_status(verbose=True)["scheduled"], [first, first + 2])

    def test_restart_queues_unfinished_records(self):
        """A store that kept unfinished records (a restarted controller) gets them queued."""
        store = MemoryStore()
        done = TaskRecord(0, parse_task(plain()), submitted=1.0, state="succeeded")
        done.outcome = ("ok", [b"old"])
        store.add(done)
        store.add(TaskRecord(1, parse_task(plain()), submitted=1.0, state="pending", engine_id=4))
        clock = Clock()
        service = ControllerService(clock=clock)
        controller = TaskController(service, store=store, clock=clock)
        self.assertEqual(controller.queue_status(verbose=True)["scheduled"], [1])
        self.assertEqual(self.successResultOf(controller.get_task_result(0))["value"], [b"old"])


class BatchingTests(SynchronousTestCase):
    def test_batches_grow_for_short_tasks_in_a_deep_queue(self):
        """One task per engine at first; once run times are known to be short and many
        tasks wait, a batch carries many tasks, while staying a fraction of the queue."""
        rig = Rig(2)
        ids = [rig.run() for _ in range(1000)]
        e0, e1 = rig.engines
        self.assertEqual((e0.last_batch(), e1.last_batch()), ([ids[0]], [ids[1]]))
        rig.ok(e0, seconds=1e-5)
        big = e0.last_batch()
        self.assertEqual(len(big), rig.tasks.sizer.max_batch)
        self.assertEqual(big, ids[2 : 2 + len(big)])
        rig.ok(e1, seconds=1e-5)
        self.assertEqual(len(e1.last_batch()), rig.tasks.sizer.max_batch)
        # Drain: batches shrink as the queue does.
        while rig.tasks.queue_status()["pending"]:
            for engine in (e0, e1):
                if engine.waiting:
                    rig.ok(engine, seconds=1e-5)
        sizes = [len(b) for b in e0.batches() + e1.batches()]
        self.assertEqual(sum(sizes), 1000)
        self.assertEqual(sorted(sizes)[:3], [1, 1, 1])
        self.assertEqual(rig.tasks.queue_status()["succeeded"], 1000)

    def test_next_batch_waits_in_the_engine_queue(self):
        """With short tasks in a deep queue a second batch waits in the engine's queue
        and leaves the moment the first is answered, before the controller reads it."""
        rig = Rig(1)
        engine = rig.engines[0]
        ids = [rig.run() for _ in range(1000)]
        rig.ok(engine, seconds=1e-5)
        self.assertEqual(rig.service.queues[0].status()["queue"], ["run_task"])
        first = engine.last_batch()
        records = [((sid, 0, 1e-5, 0), ([b"r"],)) for sid in first]
        engine.answer(("tasks", TASK_REPLY.pack(records)))
        self.assertEqual(len(engine.batches()), 3)
        self.assertEqual(engine.last_batch(), ids[1 + len(first) : 1 + 2 * len(first)])
        self.assertEqual(rig.record(first[0])["state"], "pending")
        rig.clock.advance(0)
        self.assertEqual(rig.record(first[0])["state"], "succeeded")
        self.assertEqual(rig.service.queues[0].status()["queue"], ["run_task"])

    def test_long_tasks_go_one_at_a_time(self):
        """Tasks whose run time is long are sent singly, so each goes to a free engine."""
        rig = Rig(2)
        ids = [rig.run() for _ in range(40)]
        e0, e1 = rig.engines
        rig.ok(e0, seconds=1.0)
        self.assertEqual(e0.last_batch(), [ids[2]])

    def test_busy_engine_gets_nothing_while_another_is_free(self):
        """While an engine runs a batch, new tasks go to the free engine, not behind it."""
        rig = Rig(2)
        e0, e1 = rig.engines
        slow = rig.run()
        self.assertEqual(e0.last_batch(), [slow])
        later = [rig.run() for _ in range(3)]
        self.assertEqual(e1.last_batch(), [later[0]])
        rig.ok(e1)
        self.assertEqual(e1.last_batch(), [later[1]])
        rig.ok(e1)
        rig.ok(e1)
        self.assertEqual(e0.batches(), [[slow]])
        self.assertEqual(rig.tasks.queue_status()["succeeded"], 3)


class FakeHeld:
    """A large body or result the controller holds apart (a ``HeldPayload``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nbytes = 1 << 20
        self.closed = False
        self.path: str | None = None

    def sendable(self, share: bool) -> str:
        return f"sendable {self.name}"

    def move_to(self, path: str, *, owns_file: bool) -> None:
        self.path = path

    def close(self) -> None:
        self.closed = True


class HeldPayloadTests(SynchronousTestCase):
    def test_held_bodies_go_apart_and_are_freed_when_finished(self):
        """A held body goes in the batch's dict, by record index, on every attempt, and
        is freed once its task is finished (not before: a retry needs it)."""
        rig = Rig(1)
        [e0] = rig.engines
        held = FakeHeld("body")
        tid = rig.tasks.run([[1, held, None]])
        small = rig.run()
        command, args = e0.calls[-1]
        self.assertEqual(command, "run_task")
        [(_, (frames, _))] = TASK_RUN.unpack(args[0])
        self.assertIsNone(frames)
        self.assertEqual(args[1], {0: held})
        rig.reply(e0, (tid, "raised", [b"first"]))
        self.assertFalse(held.closed)
        self.assertEqual(e0.calls[-1][1][1], {0: held})  # sent again for the retry
        rig.reply(e0, (tid, "ok", [b"done"]))
        self.assertTrue(held.closed)
        # A small task's batch carries no dict.
        self.assertEqual(len(e0.calls[-1][1]), 1)
        rig.ok(e0)
        self.assertEqual(rig.record(small)["state"], "succeeded")

    def test_held_results_are_kept_until_clear(self):
        """A large result answered apart is the record's value until clear() frees it;
        one that could not be kept fails its attempt with TransferError."""
        rig = Rig(1)
        [e0] = rig.engines
        tids = [rig.run(), rig.run()]
        result = FakeHeld("result")
        # The first task's answer is big (held), the second one's did not arrive.
        batch = e0.last_batch()
        self.assertEqual(batch, tids[:1])
        packed = TASK_REPLY.pack([((tids[0], STATUSES.index("ok"), 1e-4, 0), (None,))])
        e0.answer(("tasks", packed, {0: result}))
        rig.clock.advance(0)
        packed = TASK_REPLY.pack([((tids[1], STATUSES.index("ok"), 1e-4, 0), (None,))])
        e0.answer(("tasks", packed, {0: "the connection was lost"}))
        rig.clock.advance(0)
        first, second = (rig.record(t) for t in tids)
        self.assertIs(first["value"], result)
        self.assertEqual(second["status"], "error")
        self.assertEqual(second["value"][0], "TransferError")
        self.assertFalse(result.closed)
        rig.tasks.clear()
        self.assertTrue(result.closed)

    def test_engine_adapter_sends_held_bodies_and_skips_freed_ones(self):
        """The engine adapter turns held bodies into something sendable; a body freed
        while its batch waited (its task aborted) is left out, for the engine to answer
        for that task alone."""
        sent = []

        class Ref:
            def notifyOnDisconnect(self, callback):
                pass

            def callRemote(self, name, command, args, options=None):
                sent.append((command, args, options))
                return succeed(("tasks", TASK_REPLY.pack([])))

        ser = dump(np.ones(20_000))
        live = KeptPayload(ser.header, ser.nbytes, parts=[bytes(p) for p in ser.parts])
        freed = KeptPayload(ser.header, ser.nbytes, parts=[bytes(p) for p in ser.parts])
        freed.close()
        self.assertRaises(TransferError, freed.sendable, False)
        engine = RemoteEngine(Ref(), {})  # no host identity: bodies stream
        outcome = self.successResultOf(engine.call("run_task", [b"batch", {0: freed, 2: live}]))
        self.assertEqual(outcome[0], "tasks")
        [(command, args, options)] = sent
        self.assertEqual(command, "run_task")
        self.assertEqual(list(args[1]), [2])
        self.assertIsInstance(args[1][2], OutgoingPayload)
        self.assertIsNone(options)


class FaultToleranceTests(SynchronousTestCase):
    def test_failed_attempts_are_retried_then_fail(self):
        """A failing task runs retries + 1 times (on any engine) and keeps the last failure."""
        rig = Rig(2)
        tid = rig.run(plain(retries=2))
        e0, e1 = rig.engines
        rig.reply(e0, (tid, "raised", [b"first"]))
        self.assertEqual(rig.record(tid)["state"], "pending")
        engine = e0 if e0.waiting else e1
        rig.reply(engine, (tid, "raised", [b"second"]))
        engine = e0 if e0.waiting else e1
        rig.reply(engine, (tid, "raised", [b"third"]))
        record = rig.record(tid)
        self.assertEqual(
            (record["state"], record["status"], record["value"]), ("failed", "raised", [b"third"])
        )
        self.assertEqual(record["attempts"], 3)

    def test_engine_death_retries_the_task_once(self):
        """A task whose engine dies is retried elsewhere: one attempt used, not two,
        though the batch's EngineError arrives before the engine's departure."""
        rig = Rig(2)
        e0, e1 = rig.engines
        tid = rig.run(plain(retries=1))
        busy = rig.run()
        self.assertEqual(e1.last_batch(), [busy])
        e0.die()
        rig.clock.advance(0)
        rig.ok(e1)
        self.assertEqual(e1.last_batch(), [tid])
        rig.ok(e1)
        record = rig.record(tid)
        self.assertEqual(
            (record["state"], record["attempts"], record["engine_id"]), ("succeeded", 2, 1)
        )

    def test_engine_death_spares_tasks_not_sent(self):
        """When an engine dies, tasks of a batch still waiting in its queue never started:
        they go back to the queue without losing an attempt and run elsewhere."""
        rig = Rig(1)
        e0 = rig.engines[0]
        ids = [rig.run() for _ in range(1000)]
        rig.ok(e0, seconds=1e-5)
        running = e0.last_batch()
        queued = ids[1 + len(running) : 1 + 2 * len(running)]
        self.assertEqual(rig.record(queued[0])["state"], "pending")
        e0.die()
        rig.clock.advance(0)
        self.assertEqual(rig.tasks.queue_status(verbose=True)["failed"], running)
        self.assertEqual(rig.record(running[0])["value"][0], "EngineError")
        self.assertEqual(rig.record(queued[0])["state"], "scheduled")
        self.assertEqual([rig.tasks.scheduler.attempts(t) for t in queued], [0] * len(queued))
        e1 = rig.add_engine()
        self.assertEqual(e1.last_batch()[0], queued[0])

    def test_engine_death_without_retries_is_an_engine_error(self):
        """With no retries left, the task fails with EngineError naming the engine."""
        rig = Rig(1)
        tid = rig.run()
        rig.engines[0].die()
        rig.clock.advance(0)
        record = rig.record(tid)
        self.assertEqual(record["state"], "failed")
        self.assertEqual(record["value"][0], "EngineError")
        self.assertIn("engine 0", record["value"][1])
        self.assertEqual(rig.tasks.queue_status()["failed"], 1)

    def test_engine_error_without_death_is_a_failed_attempt(self):
        """A batch the engine could not run, the engine staying, costs each task an attempt."""
        rig = Rig(1)
        tid = rig.run(plain(retries=1))
        rig.engines[0].answer(("error", ("EngineError", "engine 0 failed to run run_task: x")))
        rig.clock.advance(0)
        self.assertEqual(rig.engines[0].batches(), [[tid], [tid]])
        rig.engines[0].answer(("tasks", ["not packed"]))
        rig.clock.advance(0)
        record = rig.record(tid)
        self.assertEqual((record["state"], record["value"][0]), ("failed", "IPKernelError"))

    def test_cleared_batch_is_sent_again(self):
        """A MultiEngine clear_queue() that drops a waiting batch does not drop the tasks."""
        rig = Rig(1)
        engine = rig.engines[0]
        rig.service.multiengine.call([0], "execute", ["x = 1"])
        tid = rig.run()
        self.assertEqual(engine.batches(), [])
        rig.service.multiengine.clear_queue([0])
        engine.answer(("ok", [b"executed"]))
        self.assertEqual(engine.batches(), [[tid]])
        rig.ok(engine)
        self.assertEqual(rig.record(tid)["state"], "succeeded")

    def test_recovery_task_takes_over_the_id(self):
        """When a task fails for good, its recovery task runs and its outcome stands under
        the task's id; queue_status shows the id once."""
        rig = Rig(1)
        engine = rig.engines[0]
        tid = rig.run(chain((0, None), (0, None), (0, None)))
        rig.reply(engine, (tid, "raised", [b"boom"]))
        self.assertEqual(rig.tasks.queue_status(verbose=True)["pending"], [tid])
        [link] = engine.last_batch()
        self.assertLess(link, 0)
        self.assertNoResult(rig.tasks.get_task_result(tid, block=True))
        rig.reply(engine, (link, "raised", [b"again"]))
        [last] = engine.last_batch()
        rig.reply(engine, (last, "ok", [b"recovered"]))
        record = rig.record(tid)
        self.assertEqual(
            (record["state"], record["value"], record["recovered"]),
            ("succeeded", [b"recovered"], 2),
        )
        self.assertEqual(
            rig.tasks.queue_status(), {"scheduled": 0, "pending": 0, "succeeded": 1, "failed": 0}
        )

    def test_success_drops_the_recovery_chain(self):
        """A task that succeeds never runs its recovery tasks."""
        rig = Rig(1)
        tid = rig.run(chain((0, None), (0, None)))
        rig.ok(rig.engines[0])
        self.assertEqual(rig.engines[0].batches(), [[tid]])
        self.assertEqual(rig.record(tid)["recovered"], 0)


class AbortTests(SynchronousTestCase):
    def test_abort_queued_task(self):
        """A queued task is aborted at once: failed with TaskAborted, never sent."""
        rig = Rig(1)
        running, queued = rig.run(), rig.run()
        rig.tasks.abort(queued)
        record = rig.record(queued)
        self.assertEqual((record["state"], record["value"][0]), ("failed", "TaskAborted"))
        rig.ok(rig.engines[0])
        self.assertEqual(rig.engines[0].batches(), [[running]])
        self.assertEqual(rig.engines[0].interrupts, [])

    def test_abort_running_task_interrupts_its_engine(self):
        """A running task is aborted at once and its engine told to interrupt that task;
        the engine's later report only frees its slot."""
        rig = Rig(1)
        engine = rig.engines[0]
        tid = rig.run(chain((3, None), (0, None)))
        waiting = rig.tasks.get_task_result(tid, block=True)
        rig.tasks.abort(tid)
        self.assertEqual(engine.interrupts, [tid])
        self.assertEqual(self.successResultOf(waiting)["value"][0], "TaskAborted")
        nxt = rig.run()
        self.assertEqual(engine.batches(), [[tid]])
        rig.reply(engine, (tid, "raised", [b"KeyboardInterrupt"]))
        self.assertEqual(engine.last_batch(), [nxt])
        self.assertEqual(rig.record(tid)["value"][0], "TaskAborted")

    def test_abort_finished_or_unknown_task(self):
        """Aborting a finished task raises IndexError 'already completed'; unknown too."""
        rig = Rig(1)
        tid = rig.run()
        rig.ok(rig.engines[0])
        error = self.assertRaises(IndexError, rig.tasks.abort, tid)
        self.assertIn("already completed", str(error))
        self.assertRaises(IndexError, rig.tasks.abort, 12345)


class DependTests(SynchronousTestCase):
    def test_declined_task_waits_for_a_property_change(self):
        """A task its engines decline waits; a property change makes it a candidate again."""
        rig = Rig(2)
        e0, e1 = rig.engines
        tid = rig.run(chain((0, [b"needs-gpu"])))
        rig.reply(e0, (tid, "declined", 0))
        self.assertEqual(e1.last_batch(), [tid])
        rig.reply(e1, (tid, "declined", 0))
        self.assertEqual(rig.record(tid)["state"], "scheduled")
        rig.tasks.spin()
        self.assertEqual(len(e0.batches()) + len(e1.batches()), 2)
        rig.service.properties_changed(1, 1)
        self.assertEqual(e1.last_batch(), [tid])
        rig.ok(e1)
        self.assertEqual((rig.record(tid)["state"], rig.record(tid)["attempts"]), ("succeeded", 1))

    def test_verdicts_are_cached_per_function_and_version(self):
        """A second task with the same depend function is declined by the controller
        itself, without a round trip, until that engine's properties change."""
        rig = Rig(1)
        engine = rig.engines[0]
        first = rig.run(chain((0, [b"same"])))
        rig.reply(engine, (first, "declined", 0))
        second = rig.run(chain((0, [b"same"])))
        other = rig.run(chain((0, [b"different"])))
        self.assertEqual(engine.batches(), [[first], [other]])
        self.assertEqual(rig.record(second)["state"], "scheduled")
        rig.reply(engine, (other, "declined", 0))
        rig.service.properties_changed(0, 1)
        self.assertIn(first, engine.last_batch() + [second])

    def test_decline_at_a_newer_version_is_not_retried_at_once(self):
        """An engine whose properties changed before the controller heard of it declines at
        that version; the task is not offered again until the version changes again."""
        rig = Rig(1)
        engine = rig.engines[0]
        tid = rig.run(chain((0, [b"dep"])))
        rig.reply(engine, (tid, "declined", 7))
        self.assertEqual(engine.batches(), [[tid]])
        rig.service.properties_changed(0, 7)  # the late notice of the same version
        self.assertEqual(engine.batches(), [[tid]])
        rig.service.properties_changed(0, 8)
        self.assertEqual(engine.batches(), [[tid], [tid]])


# -- the engine's side --------------------------------------------------------------------------


def run_batch(core: EngineCore, *specs: tuple) -> list[tuple]:
    """Run ``(taskid, task, depend function or frames, digest)`` specs on ``core`` inline;
    return ``(taskid, status, value, version)`` per task, values decoded."""
    records = []
    for spec in specs:
        taskid, task = spec[0], spec[1]
        depend = spec[2] if len(spec) > 2 else None
        digest = spec[3] if len(spec) > 3 else bytes(32)
        if callable(depend):
            depend = serialize(depend)
        wire = task_to_wire(task)[0][1] if not isinstance(task, list) else task
        records.append(((taskid, digest), (wire, depend)))
    outcome = SynchronousTestCase().successResultOf(core.call("run_task", [TASK_RUN.pack(records)]))
    assert outcome[0] == "tasks", outcome
    out = []
    for (sid, code, _seconds, version), (group,) in TASK_REPLY.unpack(outcome[1]):
        status = STATUSES[code]
        if status == "ok":
            value = deserialize(group)
        elif status == "raised":
            value = deserialize_failure(group)
        elif status == "error":
            value = (group[0].decode(), group[1].decode())
        else:
            value = None
        out.append((sid, status, value, version))
    return out


CURRENT: dict = {}


def abort_myself(seconds: float) -> str:
    """Run as a task: have the engine abort this very task, then sleep."""
    CURRENT["core"].cmd_interrupt(CURRENT["taskid"])
    time.sleep(seconds)
    return "not interrupted"


def stale_signal() -> str:
    """Run as a task: a SIGINT left over from an abort of another task arrives now."""
    core = CURRENT["core"]
    core.tasks._signals += 1
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    return "still running"


class BodyPayload:
    """A received task body, as an engine gets one apart from its batch."""

    def __init__(self, serialized) -> None:
        self._serialized = serialized

    def open(self):
        return self._serialized.header, self._serialized.parts


class EngineTaskTests(SynchronousTestCase):
    def make(self, **kwargs) -> EngineCore:
        return EngineCore(Interpreter(), Properties(kwargs.pop("properties", None)), **kwargs)

    def test_string_and_map_tasks(self):
        """Code runs with push bound first and pull brought back; a MapTask's return value
        comes back; clear_before/clear_after reset the namespace."""
        core = self.make()
        results = run_batch(
            core,
            (1, StringTask("a = b * 2\nc = 1", push={"b": 21}, pull=["a", "b"])),
            (2, MapTask(lambda x, y=0: x + y, args=(1,), kwargs={"y": 2}, pull="c")),
            (3, StringTask("d = 1", clear_before=True, pull="d", clear_after=True)),
        )
        self.assertEqual(results[0][:3], (1, "ok", ({"a": 42, "b": 21}, None)))
        self.assertEqual(results[1][:3], (2, "ok", ({"c": 1}, 3)))
        self.assertEqual(results[2][:3], (3, "ok", ({"d": 1}, None)))
        self.assertEqual(sorted(core.interpreter.keys()), ["id", "mpi"])

    def test_large_values_leave_apart_and_cannot_change_meanwhile(self):
        """With a payload policy, a large body comes apart and large results leave apart
        (by entry index); a streamed result of a task that is not the batch's last is a
        copy, so a later task of the batch cannot change it before it is sent. A task
        whose body is missing fails alone."""
        policy = EnginePayloads(None, lambda: 1, transport="stream")  # streams every large value
        core = self.make(payloads=policy)
        big = np.arange(100_000, dtype=np.float64)
        body = task_to_wire(StringTask("a = b + 0", push={"b": big}, pull="a"))[0][1]
        self.assertIsInstance(body, Serialized)  # large: the client sends it apart
        first = task_to_wire(StringTask("a[:] = -1"))[0][1]
        records = [
            ((1, bytes(32)), (None, None)),
            ((2, bytes(32)), (first, None)),
            ((3, bytes(32)), (None, None)),
        ]
        outcome = self.successResultOf(
            core.call("run_task", [TASK_RUN.pack(records), {0: BodyPayload(body)}])
        )
        self.assertEqual(outcome[0], "tasks")
        entries = TASK_REPLY.unpack(outcome[1])
        self.assertEqual([STATUSES[fields[1]] for fields, _ in entries], ["ok", "ok", "raised"])
        self.assertIsNone(entries[0][1][0])  # apart, under its entry index
        self.assertEqual(list(outcome[2]), [0])
        sent = outcome[2][0].serialized
        pulled, _ = load(sent.header, sent.parts)
        np.testing.assert_array_equal(pulled["a"], big)  # not the -1 the next task wrote
        self.assertIn("malformed frames", str(deserialize_failure(entries[2][1][0])))

    def test_a_failure_affects_only_its_task(self):
        """A task that raises comes back raised with its traceback; the next task runs."""
        core = self.make()
        results = run_batch(
            core,
            (1, StringTask("x = 1 / 0", clear_after=True)),
            (2, StringTask("y = 2", pull="y")),
            (3, StringTask("import threading; z = threading.Lock()", pull="z")),
        )
        self.assertEqual(results[0][1], "raised")
        self.assertIsInstance(results[0][2], ZeroDivisionError)
        self.assertIn("x = 1 / 0", results[0][2].remote_traceback)
        self.assertEqual(results[1][2], ({"y": 2}, None))
        self.assertIsInstance(results[2][2], SerializationError)
        self.assertIn("lock", str(results[2][2]))

    def test_depend_decides_on_the_engine(self):
        """depend sees the engine's properties; false or raising declines at the version."""
        core = self.make(properties={"gpu": True})
        core.properties["ram"] = 4
        results = run_batch(
            core,
            (1, StringTask("a = 1"), lambda p: p["gpu"] and p["ram"] >= 4),
            (2, StringTask("a = 2"), lambda p: p["ram"] > 4),
            (3, StringTask("a = 3"), lambda p: p["missing"]),
        )
        self.assertEqual([r[1] for r in results], ["ok", "declined", "declined"])
        self.assertEqual(results[1][3], 1)

    def test_verdicts_are_cached_by_digest_and_version(self):
        """The verdict for a digest holds until the properties change."""
        core = self.make()
        digest = b"d" * 32
        first = run_batch(core, (1, StringTask("a = 1"), lambda p: False, digest))
        second = run_batch(core, (2, StringTask("a = 1"), lambda p: True, digest))
        self.assertEqual([first[0][1], second[0][1]], ["declined", "declined"])
        core.properties["x"] = 1
        third = run_batch(core, (3, StringTask("a = 1"), lambda p: True, digest))
        self.assertEqual(third[0][1], "ok")

    def test_aborted_task_is_skipped(self):
        """A task aborted before its batch reaches it does not run; the others do."""
        interrupted = []
        core = self.make(on_interrupt=lambda: interrupted.append(1))
        core.call("interrupt", [2])
        results = run_batch(core, (1, StringTask("a = 1")), (2, StringTask("b = 1")))
        self.assertEqual(
            results[1][:3],
            (2, "error", ("TaskAborted", "task 2 was aborted with abort() before it started")),
        )
        self.assertEqual(core.interpreter.keys(), ["id", "mpi", "a"])
        self.assertEqual(interrupted, [])

    def test_abort_interrupts_the_running_task_only(self):
        """An abort of the running task raises KeyboardInterrupt in it (a real SIGINT to
        the main thread); the next task of the batch runs normally."""
        if threading.current_thread() is not threading.main_thread():
            self.skipTest("signals need the main thread")
        main = threading.main_thread().ident
        core = self.make(on_interrupt=lambda: signal.pthread_kill(main, signal.SIGINT))
        CURRENT.update(core=core, taskid=5)
        self.addCleanup(CURRENT.clear)
        before = signal.getsignal(signal.SIGINT)
        start = time.monotonic()
        results = run_batch(
            core, (5, MapTask(abort_myself, args=(5.0,))), (6, MapTask(stale_signal))
        )
        self.assertLess(time.monotonic() - start, 4.0)
        self.assertEqual(results[0][1], "raised")
        self.assertIsInstance(results[0][2], KeyboardInterrupt)
        self.assertEqual(results[1][:3], (6, "ok", ({}, "still running")))
        self.assertIs(signal.getsignal(signal.SIGINT), before)

    def test_malformed_batch(self):
        """A batch that is not a packed list is refused as a whole, not raised."""
        core = self.make()
        outcome = self.successResultOf(core.call("run_task", [["garbage"]]))
        self.assertEqual(outcome[0], "error")
        outcome = self.successResultOf(core.call("run_task", []))
        self.assertEqual(outcome[0], "error")


# -- the whole path in one process ----------------------------------------------------------------


class _CallFromThread:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def callFromThread(self, f, *args):  # noqa: N802 - Twisted's name
        self.clock.callLater(0, f, *args)


class Grid:
    """Controller service, in-process engines, and an AsyncTaskClient over in-memory PB."""

    def __init__(self, testcase: SynchronousTestCase, n: int = 2) -> None:
        self.testcase = testcase
        self.clock = Clock()
        self.service = ControllerService(clock=self.clock)
        self.engines = []
        for _ in range(n):
            core = EngineCore(Interpreter(), Properties())
            self.service.register_engine(core)
            core.properties.add_listener(
                lambda version, core=core: self.service.properties_changed(core.id, version)
            )
            self.engines.append(core)
        root = GateRoot([(roles.TASK, SECRET, task_avatar_factory(self.service.tasks))], self.clock)
        server_factory, client_factory = ServerFactory(root), ClientFactory()
        _, _, self.pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
        )
        d = client_factory.getRootObject()
        d.addCallback(lambda root: root.callRemote("login", SECRET, roles.TASK))
        self.pump.flush()
        avatar = testcase.successResultOf(d)
        avatar.broker.raise_limits()
        self.client = AsyncTaskClient(avatar, _CallFromThread(self.clock))

    def settle(self) -> None:
        for _ in range(20):
            self.pump.flush()
            self.clock.advance(0)

    def result(self, d):
        self.settle()
        return self.testcase.successResultOf(d)

    def failure(self, d, *types):
        self.settle()
        return self.testcase.failureResultOf(d, *types)


class InMemoryTaskClientTests(SynchronousTestCase):
    def test_run_and_task_result(self):
        """A task's result comes back as a TaskResult with its metadata and repr."""
        grid = Grid(self, n=2)
        tc = grid.client
        self.assertIs(Task, StringTask)
        tid = grid.result(tc.run(StringTask("a = id + 73", pull="a")))
        tr = grid.result(tc.get_task_result(tid, block=True))
        self.assertIsInstance(tr, TaskResult)
        self.assertEqual((tr.taskid, tr.engineid, tr.attempts, tr.failure), (tid, 0, 1, None))
        self.assertEqual(repr(tr), f"TaskResult[ID:{tid}]:{{'a': 73}}")
        self.assertEqual((tr.results, tr.ns.a, tr.result), ({"a": 73}, 73, None))
        self.assertLessEqual(tr.submitted, tr.completed)
        self.assertGreaterEqual(tr.duration, 0)
        tid = grid.result(tc.run(MapTask(divmod, args=(7, 2))))
        self.assertEqual(grid.result(tc.get_task_result(tid, block=True)).result, (3, 1))

    def test_failed_task_result_is_returned_not_raised(self):
        """A failed task's result holds the failure; reading its values raises it."""
        grid = Grid(self, n=1)
        tc = grid.client
        tid = grid.result(tc.run(StringTask("def f():\n    raise KeyError('k')\nf()", pull="a")))
        tr = grid.result(tc.get_task_result(tid, block=True))
        self.assertIsInstance(tr.failure, KeyError)
        self.assertIn("raise KeyError('k')", tr.failure.remote_traceback)
        for reader in (lambda: tr.results, lambda: tr.ns, lambda: tr.result, tr.raise_exception):
            self.assertRaises(KeyError, reader)
        self.assertIn("KeyError", repr(tr))

    def test_task_options_are_checked_at_run(self):
        """A looping recovery chain, bad retries or pull, and unpicklable values are
        refused by run, naming what is wrong."""
        grid = Grid(self, n=1)
        tc = grid.client
        a, b = StringTask("a = 1"), StringTask("b = 1")
        a.recovery_task, b.recovery_task = b, a
        self.assertIn("loops", str(grid.failure(tc.run(a), ValueError).value))
        grid.failure(tc.run(StringTask("x", retries=-1)), ValueError)
        grid.failure(tc.run(StringTask("x", pull=3)), TypeError)
        grid.failure(tc.run(StringTask(3)), TypeError)
        failure = grid.failure(
            tc.run(StringTask("x", push={"lock": threading.Lock()})), SerializationError
        )
        self.assertIn("'lock'", str(failure.value))

    def test_map_is_serial_map_and_lists_every_failure(self):
        """map equals the serial map; failures come as one CompositeError listing every
        failed item, with the other items' values kept."""
        grid = Grid(self, n=2)
        tc = grid.client
        self.assertEqual(
            grid.result(tc.map(lambda x: x * x, range(25))), [x * x for x in range(25)]
        )
        self.assertEqual(grid.result(tc.map(abs, [])), [])
        self.assertEqual(grid.result(tc.map(str, "abc", chunksize=1)), ["a", "b", "c"])
        error = grid.failure(
            tc.map(lambda x: 10 // x, [5, 0, 2, 0], chunksize=3), CompositeError
        ).value
        self.assertEqual([(i, m) for i, m, _ in error.elist], [(1, "map"), (3, "map")])
        self.assertEqual(error.results[0], 2)
        self.assertIsInstance(error.results[1], ZeroDivisionError)
        self.assertEqual(error.results[2], 5)
        self.assertIn("ZeroDivisionError", error.elist[0][2].remote_traceback)
        self.assertNotIn("map_chunk", error.elist[0][2].remote_traceback)

    def test_abort_and_errors_cross_the_wire(self):
        """abort of a finished task and unknown ids fail with IndexError on the client."""
        grid = Grid(self, n=1)
        tc = grid.client
        tid = grid.result(tc.run(StringTask("a = 1")))
        grid.result(tc.barrier(tid))
        self.assertIn("already completed", str(grid.failure(tc.abort(tid), IndexError).value))
        grid.failure(tc.get_task_result(10_000), IndexError)
        status = grid.result(tc.queue_status(verbose=True))
        self.assertEqual(status, {"scheduled": [], "pending": [], "succeeded": [tid], "failed": []})

    def test_abort_queued_task_over_the_wire(self):
        """An aborted task's result is failed with TaskAborted, returned, not raised."""
        grid = Grid(self, n=0)
        tc = grid.client
        tid = grid.result(tc.run(StringTask("a = 1")))
        grid.result(tc.abort(tid))
        tr = grid.result(tc.get_task_result(tid))
        self.assertIsInstance(tr.failure, TaskAborted)

    def test_adapter_checks_its_arguments(self):
        """The adapter refuses malformed calls with the type of error they deserve."""
        grid = Grid(self, n=0)
        avatar = grid.client._avatar
        for method, args, error in (
            ("reserve_ids", (0,), "ValueError"),
            ("reserve_ids", ("9",), "TypeError"),
            ("run_tasks", (["junk"],), "TypeError"),
            ("run_tasks", (TASK_SUBMIT.pack([((-1, 0), (body(), None))]),), "TypeError"),
            ("get_task_result", (1.5,), "TypeError"),
            ("barrier", (["1"],), "TypeError"),
        ):
            failure = grid.failure(avatar.callRemote(method, *args))
            self.assertIn(error, str(failure.value))

    def test_ids_not_reserved_are_refused(self):
        """The adapter takes tasks only under ids this client reserved; the refusal shows
        when the client asks about that id."""
        grid = Grid(self, n=1)
        tc = grid.client
        tc.send(777_777, task_to_wire(StringTask("a = 1")))
        grid.result(tc.sync())
        self.assertIn(
            "not reserved", str(grid.failure(tc.get_task_result(777_777), ValueError).value)
        )

    def test_depend_and_property_change_on_the_engine(self):
        """A task no engine can take waits; when code on an engine sets the property it
        needs, it runs there, without spin()."""
        grid = Grid(self, n=2)
        tc = grid.client
        tid = grid.result(tc.run(StringTask("a = id", pull="a", depend=lambda p: p.get("ready"))))
        self.assertIsNone(grid.result(tc.get_task_result(tid)))
        self.assertEqual(
            grid.result(tc.queue_status()),
            {"scheduled": 1, "pending": 0, "succeeded": 0, "failed": 0},
        )
        grid.engines[1].properties["ready"] = True
        grid.settle()
        self.assertEqual(grid.result(tc.get_task_result(tid, block=True)).ns.a, 1)

    def test_engine_error_reaches_the_task_result(self):
        """A task whose engine dies with no retries left fails with EngineError."""
        grid = Grid(self, n=0)
        tc = grid.client
        grid.service.register_engine(TaskEngine())  # never answers, then dies
        grid.settle()
        tid = grid.result(tc.run(StringTask("a = 1")))
        grid.service.registry.get(0).die()
        grid.settle()
        tr = grid.result(tc.get_task_result(tid, block=True))
        self.assertIsInstance(tr.failure, EngineError)
        self.assertIn("engine 0", str(tr.failure))


class ResultDumpTests(SynchronousTestCase):
    def test_constants_and_others_round_trip(self):
        """A task's return value comes back the same whether the engine pickles it with
        the standard pickler (constants, nothing pulled) or with cloudpickle."""
        from ipkernel.engine.tasks import _dump_result
        from ipkernel.serialization import deserialize

        for result in (({}, None), ({}, 3), ({}, "s"), ({"a": 1}, 2), ({}, [1, {2}])):
            self.assertEqual(deserialize(_dump_result(result).frames()), result)
        got = deserialize(_dump_result(({}, lambda: 7)).frames())
        self.assertEqual(got[1](), 7)
