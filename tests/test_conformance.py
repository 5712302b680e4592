"""Every implementation of an interface keeps its contract.

- The interface checks: ``zope.interface.verify`` (attributes, methods, argument counts)
  and the argument names and defaults, for each interface against each implementation,
  test fakes included, so that a renamed or dropped argument cannot drift.
- One behavioural suite for :class:`~ipkernel.interfaces.IEngine`
  (:class:`IEngineTestsMixin`), run against the in-process engine
  (:class:`~ipkernel.engine.core.EngineCore`) and against the real PB path: the
  controller's :class:`~ipkernel.adapters.pb_engine.RemoteEngine` talking over TLS on
  127.0.0.1 to an engine service in this process.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.interface import InterfaceClass, Method
from zope.interface.verify import verifyClass, verifyObject

from ipkernel import paths
from ipkernel.adapters.pb_engine import RemoteEngine
from ipkernel.client import StringTask
from ipkernel.client.task_types import task_to_wire
from ipkernel.controller.multiengine import MultiEngine
from ipkernel.controller.service import ControllerService
from ipkernel.controller.tasks import TaskController
from ipkernel.engine.core import EngineCore
from ipkernel.engine.interpreter import Interpreter
from ipkernel.engine.properties import Properties
from ipkernel.engine.service import EngineService
from ipkernel.interfaces import IEngine, IMultiEngine, ITaskController
from ipkernel.interfaces.records import STATUSES, TASK_REPLY, TASK_RUN
from ipkernel.serialization import deserialize, deserialize_failure, serialize
from ipkernel.tap import ControllerListeners, Options
from tests.cluster import poll
from tests.fakes import FakeEngine


class _Reference:
    """Just enough of a PB remote reference to build a RemoteEngine around."""

    def notifyOnDisconnect(self, callback: Callable) -> None:  # noqa: N802 - PB's name
        pass


class InterfaceTests(SynchronousTestCase):
    """Each implementation provides its interface, with the interface's argument names."""

    def assert_implements(self, iface: InterfaceClass, cls: type, obj: object) -> None:
        verifyClass(iface, cls)
        verifyObject(iface, obj)
        for name in iface.names(all=True):
            spec = iface[name]
            if not isinstance(spec, Method):
                continue
            parameters = list(inspect.signature(getattr(cls, name)).parameters.values())[1:]
            names = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
            self.assertEqual(
                names[: len(spec.positional)],
                list(spec.positional),
                f"{cls.__name__}.{name} names its arguments unlike {iface.__name__}.{name}",
            )
            for arg, default in spec.optional.items():
                self.assertEqual(
                    parameters[names.index(arg)].default,
                    default,
                    f"{cls.__name__}.{name}: the default of {arg} is not the interface's",
                )

    def test_engine_core(self):
        """The in-process engine provides IEngine."""
        self.assert_implements(IEngine, EngineCore, EngineCore(Interpreter(), Properties()))

    def test_remote_engine(self):
        """The controller's proxy for an engine over PB provides IEngine."""
        self.assert_implements(IEngine, RemoteEngine, RemoteEngine(_Reference(), {}))

    def test_fake_engine(self):
        """The test fake provides IEngine, as the real engines do."""
        self.assert_implements(IEngine, FakeEngine, FakeEngine())

    def test_multiengine(self):
        """The controller's MultiEngine service provides IMultiEngine."""
        service = ControllerService(clock=reactor)
        self.assert_implements(IMultiEngine, MultiEngine, service.multiengine)

    def test_task_controller(self):
        """The controller's task service provides ITaskController."""
        tasks = ControllerService(clock=reactor).tasks
        self.assert_implements(ITaskController, TaskController, tasks)


class HeldExecutor:
    """Runs an engine's queued commands at once, or, while held, when released (as an
    engine's main thread does when it is busy with user code)."""

    def __init__(self) -> None:
        self._held: list[tuple[Callable, tuple, Deferred]] | None = None

    def __call__(self, fn: Callable, *args: Any) -> Deferred:
        if self._held is None:
            return maybeDeferred(fn, *args)
        d: Deferred = Deferred()
        self._held.append((fn, args, d))
        return d

    def hold(self) -> None:
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for fn, args, d in held:
            maybeDeferred(fn, *args).chainDeferred(d)


class IEngineTestsMixin:
    """What every IEngine does. ``setUp`` provides ``self.engine`` and ``self.executor``,
    the :class:`HeldExecutor` that runs the engine's queued commands."""

    engine: Any
    executor: HeldExecutor

    @inlineCallbacks
    def value(self, command: str, *args: Any):
        """Run ``command(*args)``; fire with the decoded value of its ``ok`` outcome."""
        outcome = yield self.engine.call(command, list(args))
        self.assertEqual(outcome[0], "ok", f"{command}{args!r} gave {outcome!r}")
        return deserialize(outcome[1])

    @inlineCallbacks
    def raised(self, command: str, *args: Any):
        """Run ``command(*args)``; fire with the exception its ``raised`` outcome holds."""
        outcome = yield self.engine.call(command, list(args))
        self.assertEqual(outcome[0], "raised", f"{command}{args!r} gave {outcome!r}")
        return deserialize_failure(outcome[1])

    @inlineCallbacks
    def test_execute_then_pull(self):
        """execute runs code in the namespace and fires with its result dict (stdout
        captured); pull then gives the value of one name, or a list for several names;
        get_result gives an execution's result dict again."""
        result = yield self.value("execute", "a = 6 * 7\nprint('hi')")
        self.assertEqual(result["stdout"], "hi\n")
        self.assertEqual(result["input"]["raw"], "a = 6 * 7\nprint('hi')")
        self.assertEqual((yield self.value("pull", "a")), 42)
        self.assertEqual((yield self.value("pull", ["a", "a"])), [42, 42])
        again = yield self.value("get_result")
        self.assertEqual((again["number"], again["stdout"]), (result["number"], "hi\n"))

    @inlineCallbacks
    def test_push_pull_round_trip(self):
        """Values pushed as frames come back equal from pull; functions pushed with
        push_function come back callable and apply maps one over a sequence."""
        values = {"x": [1, 2.5, "three"], "y": {"nested": (None, b"bytes")}}
        self.assertIsNone((yield self.value("push", serialize(values))))
        self.assertEqual((yield self.value("pull", ["x", "y"])), [values["x"], values["y"]])
        yield self.value("push_function", serialize({"double": lambda v: 2 * v}))
        double = yield self.value("pull_function", "double")
        self.assertEqual(double(4), 8)
        self.assertEqual((yield self.value("apply", serialize((double, [1, 2])))), [2, 4])

    @inlineCallbacks
    def test_raising_execute(self):
        """Code that raises gives a ("raised", frames) outcome holding the exception with
        its remote traceback; the engine stays usable and what ran before the error stays."""
        exc = yield self.raised("execute", "b = 1\n1 / 0")
        self.assertIsInstance(exc, ZeroDivisionError)
        self.assertIn("1 / 0", exc.remote_traceback)
        self.assertEqual((yield self.value("pull", "b")), 1)
        self.assertIsInstance((yield self.raised("pull", "undefined")), NameError)

    @inlineCallbacks
    def test_wrong_arguments_are_raised(self):
        """A command given arguments it cannot take raises TypeError on the engine: a
        ("raised", frames) outcome, not an errback."""
        self.assertIsInstance((yield self.raised("execute", 42)), TypeError)
        self.assertIsInstance((yield self.raised("keys", "extra")), TypeError)

    @inlineCallbacks
    def test_unknown_command_is_an_error_outcome(self):
        """A command name the engine does not have fires with ("error", ("ValueError",
        message)) naming it."""
        status, (type_name, message) = yield self.engine.call("format_disk", [])
        self.assertEqual((status, type_name), ("error", "ValueError"))
        self.assertIn("format_disk", message)

    @inlineCallbacks
    def test_keys_and_reset(self):
        """keys lists the names in the namespace; reset empties it of the user's names."""
        yield self.value("execute", "k1 = 1\nk2 = 2")
        self.assertTrue({"k1", "k2"} <= set((yield self.value("keys"))))
        self.assertIsNone((yield self.value("reset")))
        self.assertFalse({"k1", "k2"} & set((yield self.value("keys"))))

    @inlineCallbacks
    def test_properties(self):
        """set, get, has, delete and clear properties, as direct commands."""
        yield self.value("set_properties", serialize({"gpu": True, "cores": 4}))
        self.assertEqual((yield self.value("get_properties")), {"gpu": True, "cores": 4})
        self.assertEqual((yield self.value("get_properties", "cores")), {"cores": 4})
        self.assertEqual((yield self.value("has_properties", ["gpu", "tpu"])), [True, False])
        yield self.value("del_properties", "gpu")
        self.assertFalse((yield self.value("has_properties", "gpu")))
        self.assertIsInstance((yield self.raised("del_properties", "gpu")), KeyError)
        yield self.value("clear_properties")
        self.assertEqual((yield self.value("get_properties", None)), {})

    @inlineCallbacks
    def test_direct_command_answered_while_a_queued_one_runs(self):
        """ping (a direct command) is answered while a queued command is still running;
        the queued one is answered once it finishes."""
        self.executor.hold()
        running = self.engine.call("execute", ["late = 1"])
        self.assertEqual((yield self.value("ping")), "pong")
        self.assertFalse(running.called)
        self.executor.release()
        self.assertEqual((yield running)[0], "ok")
        self.assertEqual((yield self.value("pull", "late")), 1)

    @inlineCallbacks
    def test_options_are_taken(self):
        """A command may be given options (transfer hints); without any hint the answer
        is the same as without options."""
        outcome = yield self.engine.call("ping", [], {})
        self.assertEqual(deserialize(outcome[1]), "pong")

    @inlineCallbacks
    def test_run_task(self):
        """run_task runs a batch in order and fires with ("tasks", packed entries): one
        entry per task, with its status; a failing task affects only itself."""
        records = []
        for taskid, code in [(7, "t = 5"), (8, "1 / 0"), (9, "u = t + 1")]:
            body = task_to_wire(StringTask(code, pull=["t"]))[0][1]
            records.append(((taskid, bytes(32)), (body, None)))
        outcome = yield self.engine.call("run_task", [TASK_RUN.pack(records)])
        self.assertEqual(outcome[0], "tasks")
        entries = TASK_REPLY.unpack(outcome[1])
        self.assertEqual(
            [(fields[0], STATUSES[fields[1]]) for fields, _ in entries],
            [(7, "ok"), (8, "raised"), (9, "ok")],
        )
        self.assertEqual(deserialize(entries[0][1][0]), ({"t": 5}, None))
        self.assertIsInstance(deserialize_failure(entries[1][1][0]), ZeroDivisionError)

    @inlineCallbacks
    def test_disconnect_notifies(self):
        """disconnect drops the engine: the notify_on_disconnect callbacks are called with
        the engine."""
        gone: Deferred = Deferred()
        self.engine.notify_on_disconnect(gone.callback)
        self.engine.disconnect()
        self.assertIs((yield gone), self.engine)


class InProcessEngineTests(IEngineTestsMixin, TestCase):
    """The IEngine suite against EngineCore, called directly."""

    def setUp(self) -> None:
        self.executor = HeldExecutor()
        self.engine = EngineCore(Interpreter(), Properties(), self.executor)


class PBEngineTests(IEngineTestsMixin, TestCase):
    """The IEngine suite against the controller's RemoteEngine, over PB and TLS on
    127.0.0.1, to an EngineCore behind the engine service, both in this process."""

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        self.executor = HeldExecutor()
        security = Path(self.mktemp()).absolute()
        options = Options()
        options.parseOptions(["--security-dir", str(security)])
        self.controller = ControllerService(clock=reactor)
        listeners = ControllerListeners(self.controller, dict(options), reactor)
        listeners.startService()
        self.addCleanup(listeners.stopService)
        core = EngineCore(Interpreter(), Properties(), self.executor)
        self.service = EngineService(core, security / paths.ENGINE_FURL, reactor)
        self.service.startService()
        self.addCleanup(self.stop_engine)
        yield self.registered()
        self.engine = self.controller.registry.get(self.service.engine_id)
        self.assertIsInstance(self.engine, RemoteEngine)

    def registered(self) -> Deferred:
        """Fires once the engine service is registered with the controller."""
        return poll(
            lambda: (
                self.service.registrar is not None
                and self.service.engine_id in self.controller.registry.ids()
            ),
            "the engine to register",
        )

    @inlineCallbacks
    def stop_engine(self):
        # An engine that was disconnected comes back: stop it once it has, so that no
        # connection is left half made.
        yield self.registered()
        self.service.stopService()
        yield poll(
            lambda: self.service.registrar is None and not len(self.controller.registry),
            "the engine's connection to close",
        )

    @inlineCallbacks
    def test_gone_engine_answers_engine_error(self):
        """Once the connection is down, every command fires with ("error",
        ("EngineError", message)) naming the engine."""
        gone: Deferred = Deferred()
        self.engine.notify_on_disconnect(gone.callback)
        self.engine.disconnect()
        yield gone
        status, (type_name, message) = yield self.engine.call("ping", [])
        self.assertEqual((status, type_name), ("error", "EngineError"))
        self.assertIn(f"engine {self.engine.id}", message)
