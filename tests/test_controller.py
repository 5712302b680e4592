"""The controller core without a network: registry, per-engine queues, MultiEngine fan-out."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ipkernel.controller.registry import EngineRegistry
from ipkernel.controller.service import ControllerService
from ipkernel.errors import InvalidEngineID, NoEnginesRegistered
from ipkernel.interfaces import IEngine, IMultiEngine
from tests.fakes import FakeEngine


class ServiceMixin:
    def make(self, n: int = 2):
        self.stops = []
        self.service = ControllerService(
            clock=Clock(), on_stop_requested=lambda: self.stops.append(1)
        )
        self.engines = [FakeEngine() for _ in range(n)]
        for engine in self.engines:
            self.service.register_engine(engine)
        return self.service.multiengine


class RegistryTests(ServiceMixin, SynchronousTestCase):
    def test_fakes_provide_the_interface(self):
        """The fake engine and the MultiEngine service pass the interface checks."""
        me = self.make(1)
        verifyObject(IEngine, self.engines[0])
        verifyObject(IMultiEngine, me)

    def test_ids_count_from_zero_and_are_not_reused(self):
        """Ids are 0, 1, …; a departed engine's id goes to nobody new."""
        me = self.make(2)
        self.assertEqual(me.get_ids(), [0, 1])
        self.engines[1].die()
        self.assertEqual(me.get_ids(), [0])
        self.assertEqual(self.service.register_engine(FakeEngine()), 2)

    def test_requested_id_granted_when_free(self):
        """An engine that asks for a free id (MPI rank, old id) gets it; a taken one is not."""
        self.make(0)
        self.assertEqual(self.service.register_engine(FakeEngine(), requested_id=5), 5)
        self.assertEqual(self.service.register_engine(FakeEngine(), requested_id=5), 6)
        self.assertEqual(self.service.register_engine(FakeEngine()), 7)

    def test_registry_keeps_its_high_mark(self):
        """The registry starts at first_id and reports each new first id never given out
        before it gives one; an id below the mark changes nothing; a report that fails
        refuses the registration."""
        kept: list[int] = []
        registry = EngineRegistry(first_id=4, on_new_id=kept.append)
        self.assertEqual(registry.register(FakeEngine()), 4)
        self.assertEqual(registry.register(FakeEngine(), requested_id=1), 1)
        self.assertEqual(registry.register(FakeEngine(), requested_id=9), 9)
        self.assertEqual(kept, [5, 10])

        def refuse(next_id: int) -> None:
            raise OSError("disk full")

        registry = EngineRegistry(on_new_id=refuse)
        self.assertRaises(OSError, registry.register, FakeEngine())
        self.assertEqual(registry.ids(), [])

    def test_listeners_hear_of_engines_with_their_queues(self):
        """Arrivals are told once the engine's queue exists; departures once its queue is
        gone and the registry no longer holds it; property changes as reported."""
        self.make(0)
        heard = []
        service = self.service
        service.on_engine_added(
            lambda e: heard.append(("added", e, e in service.queues, e in service.registry))
        )
        service.on_engine_removed(
            lambda e: heard.append(("removed", e, e in service.queues, e in service.registry))
        )
        service.on_properties_changed(lambda e, v: heard.append(("properties", e, v)))
        engine = FakeEngine()
        service.register_engine(engine)
        service.properties_changed(0, 3)
        engine.die()
        service.unregister_engine(0)
        self.assertEqual(
            heard,
            [("added", 0, True, True), ("properties", 0, 3), ("removed", 0, False, False)],
        )

    def test_no_engines(self):
        """Any call with no engines registered fails with NoEnginesRegistered."""
        me = self.make(0)
        self.failureResultOf(me.call("all", "keys", []), NoEnginesRegistered)

    def test_unknown_id(self):
        """An id that is not registered fails the whole call with InvalidEngineID."""
        me = self.make(2)
        f = self.failureResultOf(me.call([0, 7], "keys", []), InvalidEngineID)
        self.assertIn("7", str(f.value))
        self.assertEqual(self.engines[0].calls, [])

    def test_bad_targets_value(self):
        """A targets value that is not 'all', an int or a list of ints is a ValueError naming it."""
        me = self.make(2)
        for bad in ("some", 1.5, [0, "1"], None, True):
            f = self.failureResultOf(me.call(bad, "keys", []), ValueError)
            self.assertIn(repr(bad), str(f.value))


class FanOutTests(ServiceMixin, SynchronousTestCase):
    def test_results_in_target_order(self):
        """Outcomes come back paired with ids, in the order the targets were given."""
        me = self.make(3)
        d = me.call([2, 0], "execute", ["a=1"])
        self.assertNoResult(d)
        self.engines[0].answer(("ok", [b"zero"]))
        self.assertNoResult(d)
        self.engines[2].answer(("ok", [b"two"]))
        self.assertEqual(self.successResultOf(d), [(2, ("ok", [b"two"])), (0, ("ok", [b"zero"]))])

    def test_call_each_gives_each_target_its_arguments(self):
        """call_each sends the i-th argument list to the i-th target."""
        me = self.make(2)
        d = me.call_each("all", "push", [[b"a"], [b"b"]])
        self.assertEqual(self.engines[0].calls, [("push", [b"a"])])
        self.assertEqual(self.engines[1].calls, [("push", [b"b"])])
        for e in self.engines:
            e.answer()
        self.assertEqual(len(self.successResultOf(d)), 2)

    def test_call_each_length_mismatch(self):
        """call_each with the wrong number of argument lists is a ValueError; nothing runs."""
        me = self.make(2)
        self.failureResultOf(me.call_each("all", "push", [[b"a"]]), ValueError)
        self.assertEqual(self.engines[0].calls, [])

    def test_failure_on_one_engine_does_not_disturb_others(self):
        """One engine's raised outcome is just its entry; the others' results stand."""
        me = self.make(2)
        d = me.call("all", "execute", ["1/0"])
        self.engines[0].answer(("raised", [b"ZeroDivisionError"]))
        self.engines[1].answer(("ok", [b"fine"]))
        self.assertEqual(
            self.successResultOf(d),
            [(0, ("raised", [b"ZeroDivisionError"])), (1, ("ok", [b"fine"]))],
        )

    def test_unknown_command(self):
        """A command name the engines do not have is refused before anything is queued."""
        me = self.make(1)
        self.failureResultOf(me.call("all", "format_disk", []), ValueError)


class QueueTests(ServiceMixin, SynchronousTestCase):
    def test_one_command_at_a_time_in_order(self):
        """A second command waits in the engine's queue until the first is answered."""
        me = self.make(1)
        engine = self.engines[0]
        d1 = me.call(0, "execute", ["a=1"])
        d2 = me.call(0, "execute", ["b=2"])
        self.assertEqual(engine.calls, [("execute", ["a=1"])])
        self.assertEqual(
            self.successResultOf(me.queue_status(0)),
            [(0, {"queue": ["execute"], "pending": "execute"})],
        )
        engine.answer(("raised", [b"boom"]))
        self.successResultOf(d1)
        self.assertEqual(engine.calls[-1], ("execute", ["b=2"]))
        engine.answer()
        self.successResultOf(d2)
        self.assertEqual(
            self.successResultOf(me.queue_status(0)),
            [(0, {"queue": [], "pending": None})],
        )

    def test_direct_commands_skip_the_queue(self):
        """Property calls reach a busy engine at once."""
        me = self.make(1)
        me.call(0, "execute", ["while True: pass"])
        d = me.call(0, "get_properties", [None])
        self.assertEqual([c for c, _ in self.engines[0].calls], ["execute", "get_properties"])
        self.engines[0].waiting.pop(1).callback(("ok", [b"{}"]))
        self.assertEqual(self.successResultOf(d), [(0, ("ok", [b"{}"]))])

    def test_clear_queue_drops_only_waiting_commands(self):
        """clear_queue fails queued commands with QueueCleared; the running one finishes."""
        me = self.make(1)
        running = me.call(0, "execute", ["slow()"])
        queued = me.call(0, "execute", ["later()"])
        self.assertEqual(self.successResultOf(me.clear_queue(0)), [None])
        [(_, outcome)] = self.successResultOf(queued)
        self.assertEqual(outcome[0], "error")
        self.assertEqual(outcome[1][0], "QueueCleared")
        self.engines[0].answer()
        self.assertEqual(self.successResultOf(running), [(0, ("ok", [b"x"]))])
        self.assertEqual(len(self.engines[0].calls), 1)

    def test_dead_engine_fails_its_share_with_engine_error(self):
        """When an engine dies, its running and queued commands fail with EngineError."""
        me = self.make(2)
        d = me.call("all", "execute", ["x"])
        later = me.call(0, "execute", ["y"])
        self.engines[1].answer()
        self.engines[0].die()
        pairs = self.successResultOf(d)
        self.assertEqual(pairs[0][1][1][0], "EngineError")
        self.assertEqual(pairs[1][1], ("ok", [b"x"]))
        [(_, outcome)] = self.successResultOf(later)
        self.assertEqual(outcome[1][0], "EngineError")
        self.assertEqual(me.get_ids(), [1])

    def test_synchronous_answers_do_not_recurse(self):
        """An engine that answers at once drains a long queue without deep recursion."""
        me = self.make(1)
        engine = self.engines[0]
        ds = [me.call(0, "keys", []) for _ in range(3000)]
        # Answer synchronously from now on: each answer starts the next command.
        engine.call = lambda command, args: __import__(
            "twisted.internet.defer", fromlist=["succeed"]
        ).succeed(("ok", [b"k"]))
        engine.answer(("ok", [b"k"]))
        self.assertEqual(self.successResultOf(ds[-1]), [(0, ("ok", [b"k"]))])

    def test_kill_controller_asks_the_service_to_stop(self):
        """kill(controller=True) kills the engines, then asks for the controller to stop."""
        me = self.make(1)
        d = me.kill("all", controller=True)
        self.assertEqual(self.engines[0].calls, [("kill", [])])
        self.assertEqual(self.stops, [])
        self.engines[0].answer(("ok", [b"None"]))
        self.successResultOf(d)
        self.assertEqual(self.stops, [1])
