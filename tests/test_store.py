"""Task stores: one behaviour suite for every ``ITaskStore``, then what SQLite adds.

- :class:`StoreBehaviour` (a mixin) pins down the contract; it runs against
  :class:`MemoryStore` and :class:`SQLiteStore` (time and batched writes driven by a
  :class:`~twisted.internet.task.Clock`);
- the SQLite store across reopening (what a restarted controller finds), its batched
  writes, its lock, and its payload files;
- the payload shelf (memory budget, then files), ``--task-max-age`` and the controller
  options that choose a store.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ipkernel import tap
from ipkernel.adapters.pb_task import TaskAdapter
from ipkernel.cli.ipcluster.options import StartOptions, controller_argv
from ipkernel.controller.service import ControllerService
from ipkernel.controller.store import ITaskStore, MemoryStore, TaskRecord, TaskSpec
from ipkernel.controller.store_payloads import PayloadShelf
from ipkernel.controller.store_sqlite import SQLiteStore, StoreUnavailable, payload_directory
from ipkernel.controller.tasks import TaskController
from ipkernel.interfaces.records import STATUSES, TASK_REPLY, TASK_RUN, TASK_SUBMIT
from ipkernel.serialization import dump
from ipkernel.wire.errors import WireError
from ipkernel.wire.kept import KeptPayload, open_kept
from tests.fakes import FakeEngine


def spec(tag: bytes = b"x", retries: int = 0, depend: list[bytes] | None = None) -> TaskSpec:
    return TaskSpec([b"task-" + tag], depend, b"d" * 32 if depend else None, retries)


def record(taskid: int, *specs: TaskSpec, submitted: float = 1.0) -> TaskRecord:
    return TaskRecord(taskid, list(specs) or [spec()], submitted=submitted)


def finish(store, rec: TaskRecord, outcome: tuple, completed: float = 2.0) -> None:
    """Finish ``rec`` as the controller does: state, outcome, time, then save."""
    rec.state = "succeeded" if outcome[0] == "ok" else "failed"
    rec.outcome = outcome
    rec.completed = completed
    store.save(rec)


def kept(n: int = 20_000) -> KeptPayload:
    """A large payload held in memory, as a stream received whole leaves it."""
    ser = dump(np.arange(n, dtype=np.float64))
    return KeptPayload(ser.header, ser.nbytes, parts=[bytes(p) for p in ser.parts])


def sent_bytes(held) -> bytes:
    """The bytes a held payload would send (its parts, joined)."""
    return b"".join(bytes(p) for p in held.sendable(False).serialized.parts)


class StoreBehaviour:
    """What every ``ITaskStore`` does; ``make_store`` and ``settle`` are the store's."""

    def make_store(self) -> ITaskStore:
        raise NotImplementedError

    def settle(self) -> None:
        """Let the store write what it batched."""

    def test_provides_the_interface(self):
        """The store passes the ITaskStore interface check."""
        verifyObject(ITaskStore, self.make_store())

    def test_reserved_ids_are_never_handed_out_twice(self):
        """Blocks of ids follow each other; an id added by hand is skipped later;
        next_id is the first id never handed out."""
        store = self.make_store()
        self.assertEqual(store.reserve_ids(3), 0)
        self.assertEqual(store.reserve_ids(2), 3)
        store.add(record(10))
        self.assertEqual(store.reserve_ids(1), 11)
        self.assertEqual(store.next_id, 12)
        self.assertRaises(ValueError, store.reserve_ids, 0)

    def test_next_engine_id_is_kept(self):
        """next_engine_id starts at 0 and reads back what was last kept."""
        store = self.make_store()
        self.assertEqual(store.next_engine_id, 0)
        store.keep_next_engine_id(3)
        self.assertEqual(store.next_engine_id, 3)

    def test_records_are_filed_by_state(self):
        """save() re-files a record whose state changed; queries follow; finished ones go."""
        store = self.make_store()
        records = [record(i) for i in range(4)]
        for r in records:
            store.add(r)
        self.assertRaises(ValueError, store.add, record(2))
        records[1].state = "pending"
        store.save(records[1])
        finish(store, records[2], ("ok", [b"r2"]))
        finish(store, records[3], ("error", ("EngineError", "engine 0 died")))
        self.settle()
        self.assertEqual([store.count(s) for s in ("scheduled", "pending")], [1, 1])
        self.assertEqual(store.ids("succeeded"), [2])
        self.assertEqual(store.ids("pending"), [1])
        self.assertEqual([r.taskid for r in store.unfinished()], [0, 1])
        self.assertEqual(store.size, 4)
        self.assertEqual(store.remove_finished(), [2, 3])
        self.assertIsNone(store.get(2))
        self.assertEqual(store.size, 2)
        self.assertEqual(store.ids("failed"), [])
        self.assertEqual(store.count("succeeded"), 0)

    def test_finished_records_read_back(self):
        """A finished record reads back with its outcome, times, engine and attempts."""
        store = self.make_store()
        ok, failed = record(0), record(1)
        store.add(ok)
        store.add(failed)
        ok.engine_id, ok.attempts, ok.started, ok.duration = 3, 2, 1.5, 0.25
        finish(store, ok, ("raised", [b"failure", b"frames"]), completed=4.0)
        finish(store, failed, ("error", ("TaskAborted", "task 1 was aborted")))
        self.settle()
        wire = store.get(0).to_wire()
        self.assertEqual(
            {k: wire[k] for k in ("state", "status", "value", "engine_id", "attempts")},
            {
                "state": "failed",
                "status": "raised",
                "value": [b"failure", b"frames"],
                "engine_id": 3,
                "attempts": 2,
            },
        )
        self.assertEqual((wire["started"], wire["completed"], wire["duration"]), (1.5, 4.0, 0.25))
        self.assertEqual(store.get(1).to_wire()["value"], ["TaskAborted", "task 1 was aborted"])
        self.assertIsNone(store.get(7))

    def test_remove_finished_before_a_time_keeps_the_newer(self):
        """remove_finished(before) forgets only records completed before that time."""
        store = self.make_store()
        records = [record(i) for i in range(3)]
        for r in records:
            store.add(r)
        finish(store, records[0], ("ok", [b"old"]), completed=10.0)
        finish(store, records[1], ("ok", [b"new"]), completed=20.0)
        self.settle()
        self.assertEqual(store.remove_finished(before=15.0), [0])
        self.assertEqual(store.ids("succeeded"), [1])
        self.assertEqual([r.taskid for r in store.unfinished()], [2])

    def test_state(self):
        """state() follows the record's state; None for an unknown id."""
        store = self.make_store()
        rec = record(0)
        store.add(rec)
        self.assertEqual(store.state(0), "scheduled")
        finish(store, rec, ("ok", [b"r"]))
        self.settle()
        self.assertEqual(store.state(0), "succeeded")
        self.assertIsNone(store.state(1))

    def test_committed_fires(self):
        """committed() fires once every change is kept."""
        store = self.make_store()
        store.add(record(0))
        d = store.committed()
        self.settle()
        self.assertIsNone(self.successResultOf(d))


class MemoryStoreTests(StoreBehaviour, SynchronousTestCase):
    def make_store(self) -> MemoryStore:
        return MemoryStore()

    def test_large_results_are_freed_when_removed(self):
        """remove_finished closes the large results of the records it forgets."""
        store = MemoryStore()
        held = kept()
        rec = record(0)
        store.add(rec)
        finish(store, rec, ("ok", held))
        store.remove_finished()
        self.assertTrue(held.closed)


class SQLiteStoreTests(StoreBehaviour, SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "tasks.db"
        self.stores: list[SQLiteStore] = []

    def tearDown(self) -> None:
        for store in self.stores:
            store.close()

    def make_store(self) -> SQLiteStore:
        shelf = PayloadShelf.persistent(payload_directory(self.path), open_kept)
        store = SQLiteStore(self.path, clock=self.clock, shelf=shelf)
        self.stores.append(store)
        return store

    def reopen(self, store: SQLiteStore) -> SQLiteStore:
        """What a restarted controller finds: this store killed (nothing more written)."""
        self.stores.remove(store)
        # As after SIGKILL: whatever was not committed is lost.
        store._closed = store.writes.closed = True
        store._db.close()
        return self.make_store()

    def settle(self) -> None:
        """Past the delay of new rows and the next write."""
        writes = self.stores[-1].writes
        self.clock.pump([writes.interval] * (int(writes.delay / writes.interval) + 2))

    def payload_files(self) -> list[str]:
        return sorted(os.listdir(payload_directory(self.path)))

    def test_records_survive_a_restart(self):
        """Committed records read back from a new store: finished ones with their
        outcome, unfinished ones with their whole chain (depend and digest included)."""
        store = self.make_store()
        first = store.reserve_ids(4)
        done = record(first)
        waiting = record(first + 1, spec(b"a", 2, [b"dep"]), spec(b"recovery", 1))
        waiting.state, waiting.engine_id, waiting.link = "pending", 5, 1
        store.add(done)
        store.add(waiting)
        finish(store, done, ("ok", [b"result"]))
        self.settle()
        again = self.reopen(store)
        self.assertEqual(again.get(first).to_wire()["value"], [b"result"])
        [revived] = again.unfinished()
        self.assertEqual(revived.taskid, first + 1)
        self.assertEqual((revived.state, revived.engine_id, revived.link), ("pending", 5, 1))
        self.assertEqual(revived.chain, waiting.chain)
        self.assertEqual([again.count(s) for s in ("pending", "succeeded")], [1, 1])
        # Ids reserved before the restart are never handed out again.
        self.assertEqual(again.reserve_ids(1), first + 4)

    def test_engine_ids_continue_after_a_restart(self):
        """A controller restarted from the store gives new engines ids past every id of
        the earlier run, and an engine asking for its old id gets it."""
        service = ControllerService(clock=self.clock, store=self.make_store())
        ids = [service.register_engine(FakeEngine()) for _ in range(3)]
        self.assertEqual(ids, [0, 1, 2])
        restarted = ControllerService(clock=self.clock, store=self.reopen(service.tasks.store))
        self.assertEqual(restarted.register_engine(FakeEngine()), 3)
        self.assertEqual(restarted.register_engine(FakeEngine(), requested_id=1), 1)
        self.assertEqual(restarted.register_engine(FakeEngine()), 4)

    def test_a_waited_submission_is_answered_at_once(self):
        """The Task adapter answers run_tasks once the store keeps the tasks: with a
        later batch of writes when the client does not wait for the answer, at once
        (with the tasks before) when it says it waits; a flag that is not a bool is
        refused."""
        adapter = TaskAdapter(ControllerService(clock=self.clock, store=self.make_store()).tasks)
        first = adapter.remote_reserve_ids(3)

        def message(taskid: int) -> bytes:
            return TASK_SUBMIT.pack([((taskid, 0), ([b"body"], None))])

        unwaited = adapter.remote_run_tasks(message(first))
        self.clock.advance(0)
        self.assertNoResult(unwaited)
        self.assertEqual(
            self.successResultOf(adapter.remote_run_tasks(message(first + 1), None, True)), []
        )
        self.assertEqual(self.successResultOf(unwaited), [])
        error = self.assertRaises(WireError, adapter.remote_run_tasks, message(first + 2), None, 1)
        self.assertEqual(error.type_name, "TypeError")

    def test_changes_not_committed_are_lost_at_a_crash(self):
        """Changes are batched: until the next write, a crash loses them (which is why
        the controller answers only after committed())."""
        store = self.make_store()
        store.add(record(0))
        self.settle()
        rec = store.get(0)
        finish(store, rec, ("ok", [b"late"]))
        again = self.reopen(store)
        self.assertEqual([r.taskid for r in again.unfinished()], [0])

    def test_writes_are_batched(self):
        """Changes are written every interval, in one transaction; a task added and
        finished before its row was written is one row written once."""
        store = self.make_store()
        writes = store.writes
        for i in range(50):
            rec = record(i)
            store.add(rec)
            finish(store, rec, ("ok", [b"r"]))
        self.assertEqual(writes.stats["writes"], 0)
        self.clock.advance(writes.interval)
        self.assertEqual((writes.stats["writes"], writes.stats["rows"]), (1, 50))

    def test_new_rows_wait_for_their_task_to_finish(self):
        """A new task's row waits up to `delay` seconds (a task finishing meanwhile is
        written once, finished); committed() fires once the rows of everything before it
        are written; committed(now=True) writes everything at once."""
        store = self.make_store()
        writes = store.writes
        waiting = record(0)
        store.add(waiting)
        accepted = store.committed()
        self.clock.advance(writes.interval)
        self.assertEqual(writes.stats["rows"], 0)
        self.assertNoResult(accepted)
        quick = record(1)
        store.add(quick)
        finish(store, quick, ("ok", [b"r"]))
        self.clock.advance(writes.interval)
        self.assertEqual(writes.stats["rows"], 1)
        self.assertNoResult(accepted)
        self.clock.pump([writes.interval] * int(writes.delay / writes.interval))  # past it
        self.successResultOf(accepted)
        self.assertEqual(writes.stats["rows"], 2)
        finish(store, waiting, ("ok", [b"r"]))  # its row is updated
        store.add(record(2))
        self.successResultOf(store.committed(now=True))  # a few rows: written at once
        self.assertEqual((writes.stats["rows"], store.writes.pending()), (4, False))

    def test_a_burst_is_written_in_chunks(self):
        """Many rows due at once are written in transactions of at most max_rows (each
        at a reactor turn of its own); a waiter fires once the last is written."""
        store = self.make_store()
        writes = store.writes
        for i in range(writes.max_rows * 2 + 1):
            store.add(record(i))
        d = store.committed(now=True)
        self.assertNoResult(d)
        self.clock.advance(0)  # a Clock runs the calls for later turns at once
        self.successResultOf(d)
        self.assertEqual(
            (writes.stats["writes"], writes.stats["rows"]), (3, 2 * writes.max_rows + 1)
        )

    def test_a_second_controller_is_refused(self):
        """The database is one controller's: another store on it is refused, naming it;
        a file that is not a task database is refused too."""
        self.make_store()
        error = self.assertRaises(StoreUnavailable, self.make_store)
        self.assertIn(str(self.path), str(error))
        self.assertIn("another controller", str(error))
        other = self.dir / "other.db"
        other.write_bytes(b"not a database at all" * 100)
        shelf = PayloadShelf.persistent(payload_directory(other), open_kept)
        self.assertRaises(StoreUnavailable, SQLiteStore, other, clock=self.clock, shelf=shelf)

    def test_database_is_private(self):
        """The database file is made with mode 0600."""
        self.make_store()
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_large_payloads_live_in_files_beside_the_database(self):
        """A large body goes to a 0600 file in <db>-payloads at add; it survives a
        restart, and its file goes once the finished row is committed. A large result
        goes to a file, read back after a restart, deleted at remove_finished."""
        store = self.make_store()
        body = kept()
        rec = record(0, TaskSpec(body, None, None, 0))
        store.add(rec)
        self.assertEqual(self.payload_files(), ["0.0.body"])
        mode = os.stat(payload_directory(self.path) / "0.0.body").st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        self.assertEqual(stat.S_IMODE(payload_directory(self.path).stat().st_mode), 0o700)
        self.settle()
        again = self.reopen(store)
        [revived] = again.unfinished()
        self.assertEqual(sent_bytes(revived.chain[0].body), sent_bytes(body))
        result = kept(30_000)
        expected = sent_bytes(result)
        finish(again, revived, ("ok", result))
        revived.chain[0].body.close()  # as the controller does once a task is finished
        self.assertEqual(self.payload_files(), ["0.0.body", "0.result"])
        self.settle()
        self.assertEqual(self.payload_files(), ["0.result"])
        third = self.reopen(again)
        self.assertEqual(sent_bytes(third.get(0).outcome[1]), expected)
        self.assertEqual(third.remove_finished(), [0])
        self.assertEqual(self.payload_files(), [])

    def test_files_no_row_names_are_deleted_at_open(self):
        """A payload file written by a run that crashed before committing its row is
        deleted when the store opens; a body whose file is gone fails its task."""
        store = self.make_store()
        store.add(record(0, TaskSpec(kept(), None, None, 0)))
        store.add(record(1, TaskSpec(kept(), None, None, 0)))
        self.settle()
        store.add(record(2, TaskSpec(kept(), None, None, 0)))  # never committed
        os.unlink(payload_directory(self.path) / "1.0.body")
        again = self.reopen(store)
        self.assertEqual(self.payload_files(), ["0.0.body"])
        self.assertEqual([r.taskid for r in again.unfinished()], [0])
        lost = again.get(1).to_wire()
        self.assertEqual(lost["state"], "failed")
        self.assertEqual(lost["value"][0], "TransferError")

    def test_controller_restarts_from_the_store(self):
        """A task controller over a reopened store queues the unfinished tasks again (no
        attempt used) and answers the finished ones; answers wait for the commit."""
        store = self.make_store()
        clock = self.clock
        controller = TaskController(ControllerService(clock=clock), store=store, clock=clock)
        first = controller.reserve_ids(3)
        for i in range(3):
            controller.run([[0, [b"task"], None]], first + i)
        rec = store.get(first)
        finish(store, rec, ("ok", [b"done"]))
        store.get(first + 1).state = "pending"
        store.save(store.get(first + 1))
        self.assertTrue(store.writes.pending())
        answer = controller.get_task_result(first)  # written before it is answered
        self.assertFalse(store.writes.pending())
        self.assertEqual(self.successResultOf(answer)["value"], [b"done"])
        service = ControllerService(clock=clock, store=self.reopen(store))
        restarted = service.tasks
        self.assertEqual(restarted.queue_status(verbose=True)["scheduled"], [first + 1, first + 2])
        self.assertEqual(restarted.reserve_ids(1), first + 3)
        clock.advance(0)
        self.assertEqual(self.successResultOf(restarted.get_task_result(first))["value"], [b"done"])
        restarted.reclaim_ids(first, 3)
        self.assertRaises(ValueError, restarted.reclaim_ids, first + 3, 10)
        engine = FakeEngine()
        service.register_engine(engine)
        [(command, args)] = engine.calls
        self.assertEqual(command, "run_task")
        [(fields, _)] = TASK_RUN.unpack(args[0])
        self.assertEqual(fields[0], first + 1)
        entry = ((first + 1, STATUSES.index("ok"), 1e-3, 0), ([b"again"],))
        engine.answer(("tasks", TASK_REPLY.pack([entry])))
        clock.advance(1.0)
        wire = restarted.store.get(first + 1).to_wire()
        self.assertEqual((wire["value"], wire["attempts"]), ([b"again"], 1))


class PayloadShelfTests(SynchronousTestCase):
    def test_payloads_past_the_budget_go_to_a_temporary_directory(self):
        """Payloads stay in memory within the budget; past it they go to 0600 files in a
        private temporary directory; closing one deletes its file; closing the shelf
        removes the directory."""
        budget = kept().nbytes + 10
        shelf = PayloadShelf.temporary(budget)
        first, second, third = kept(), kept(), kept()
        shelf.place(first, "a")
        self.assertIsNone(first.path)
        self.assertIsNone(shelf.directory)
        expected = sent_bytes(second)
        shelf.place(second, "b")
        directory = shelf.directory
        self.assertEqual(second.path, str(directory / "b"))
        self.assertEqual(stat.S_IMODE(directory.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(second.path).st_mode), 0o600)
        self.assertEqual(sent_bytes(second), expected)
        self.assertEqual(shelf.in_memory(), first.nbytes)
        first.close()  # frees room in memory
        shelf.place(third, "c")
        self.assertIsNone(third.path)
        second.close()
        self.assertEqual(os.listdir(directory), [])
        shelf.place(kept(), "d")
        shelf.close()
        self.assertFalse(directory.exists())

    def test_memory_store_spills_and_clear_frees(self):
        """A MemoryStore with a small budget keeps large bodies and results in files;
        remove_finished (clear) deletes the results' files."""
        shelf = PayloadShelf.temporary(0)
        store = MemoryStore(shelf)
        rec = record(0, TaskSpec(kept(), None, None, 0))
        store.add(rec)
        self.assertEqual(os.listdir(shelf.directory), ["0.0.body"])
        finish(store, rec, ("ok", kept()))
        rec.chain[0].body.close()
        self.assertEqual(os.listdir(shelf.directory), ["0.result"])
        store.remove_finished()
        self.assertEqual(os.listdir(shelf.directory), [])
        directory = shelf.directory
        store.close()
        self.assertFalse(directory.exists())


class MaxAgeTests(SynchronousTestCase):
    def test_old_finished_records_are_removed(self):
        """With max_age, finished records older than that are removed as time goes by,
        with their large results; unfinished and newer ones stay."""
        clock = Clock()
        service = ControllerService(clock=clock, task_max_age=10.0)
        controller = service.tasks
        controller._now = clock.seconds  # records' times on the same clock
        store = controller.store
        old, new, waiting = (record(i, submitted=0.0) for i in range(3))
        for r in (old, new, waiting):
            store.add(r)
        held = kept()
        finish(store, old, ("ok", held), completed=1.0)
        finish(store, new, ("ok", [b"new"]), completed=14.0)
        clock.advance(5.0)
        self.assertEqual(store.ids("succeeded"), [0, 1])
        clock.advance(10.0)  # now 15: the first is 14 s old, the second 1 s
        self.assertEqual(store.ids("succeeded"), [1])
        self.assertTrue(held.closed)
        self.assertEqual([r.taskid for r in store.unfinished()], [2])
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_max_age_must_be_positive(self):
        """A max_age that is not a positive number of seconds is refused."""
        self.assertRaises(ValueError, ControllerService, clock=Clock(), task_max_age=0)


class StoreOptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_sizes(self):
        """--task-memory takes a number of bytes or K/M/G (powers of 1024), with or
        without 'iB'; anything else is refused."""
        for text, value in (("1048576", 1 << 20), ("512K", 512 << 10), ("256MiB", 256 << 20),
                            ("1.5g", 3 << 29), ("0", 0)):  # fmt: skip
            self.assertEqual(self.parse("--task-memory", text)["task-memory"], value)
        for bad in ("lots", "-1M", "M"):
            self.assertRaises(usage.UsageError, self.parse, "--task-memory", bad)
        self.assertRaises(usage.UsageError, self.parse, "--task-max-age", "0")

    def test_the_store_follows_the_options(self):
        """--db gives a SQLite store with its payloads beside it; --task-memory (which
        only applies without --db) is refused with it; no --db gives a MemoryStore."""
        path = Path(self.mktemp()).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        store = tap.task_store(self.parse("--db", str(path)), Clock())
        self.addCleanup(store.close)
        self.assertIsInstance(store, SQLiteStore)
        self.assertEqual(store.path, path)
        self.assertIsInstance(tap.task_store(self.parse(), Clock()), MemoryStore)
        error = self.assertRaises(
            usage.UsageError, self.parse, "--db", str(path), "--task-memory", "1M"
        )
        self.assertIn("without --db", str(error))

    def test_ipcluster_passes_the_store_options_on(self):
        """ipcluster passes --db (made absolute), --task-memory and --task-max-age on to
        the controller, and refuses --task-memory with --db as the controller does."""
        options = StartOptions()
        options.parseOptions(["--task-memory", "64M", "--task-max-age", "3600"])
        argv = controller_argv(options, python="python")
        pairs = dict(zip(argv[3::2], argv[4::2], strict=False))
        self.assertEqual(pairs["--task-memory"], str(64 << 20))
        self.assertEqual(float(pairs["--task-max-age"]), 3600.0)
        options = StartOptions()
        options.parseOptions(["--db", "tasks.db"])
        self.assertIn(str(Path("tasks.db").absolute()), controller_argv(options, python="python"))
        self.assertRaises(
            usage.UsageError,
            StartOptions().parseOptions,
            ["--db", "tasks.db", "--task-memory", "1M"],
        )


class SQLiteSchemaTests(SynchronousTestCase):
    def test_rows_hold_no_pickle(self):
        """A row's BLOBs are struct-packed frames: the result bytes appear as they are."""
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        shelf = PayloadShelf.persistent(payload_directory(path), open_kept)
        store = SQLiteStore(path, clock=Clock(), shelf=shelf)
        rec = record(0)
        store.add(rec)
        finish(store, rec, ("ok", [b"RESULT-BYTES"]))
        store.close()
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        [(state, result)] = db.execute("SELECT state, result FROM tasks").fetchall()
        self.assertEqual(state, "succeeded")
        self.assertTrue(result.endswith(b"RESULT-BYTES"))
        self.assertNotIn(b"\x80\x05", result[:8])  # no pickle protocol header
