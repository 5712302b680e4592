"""A whole grid in one process: client ⇄ PB (in memory) ⇄ controller ⇄ in-process engines.

No sockets and no threads: the client's PB connection is pumped with
``twisted.test.iosim``, and engines are :class:`EngineCore` objects registered straight
with the controller service, running commands inline.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.adapters.gate import GateRoot
from ipkernel.adapters.pb_multiengine import MultiEngineAdapter
from ipkernel.adapters.pb_task import task_avatar_factory
from ipkernel.client.multiengine_async import AsyncMultiEngineClient
from ipkernel.controller.service import ControllerService
from ipkernel.engine.core import EngineCore
from ipkernel.engine.interpreter import Interpreter
from ipkernel.engine.properties import Properties
from ipkernel.engine.service import KEY_FILE_POLL, EngineService
from ipkernel.errors import CompositeError, InvalidEngineID
from ipkernel.security import roles
from ipkernel.wire.broker import ClientFactory, ServerFactory

SECRET = "s" * 43
TASK_SECRET = "t" * 43


class Grid:
    """A controller service with ``n`` in-process engines and one connected client."""

    def __init__(
        self,
        testcase: SynchronousTestCase,
        n: int = 2,
        secret: str = SECRET,
        role: str = roles.MULTIENGINE,
    ) -> None:
        self.testcase = testcase
        self.clock = Clock()
        self.service = ControllerService(clock=self.clock)
        self.engines = []
        for _ in range(n):
            core = EngineCore(Interpreter(), Properties())
            self.service.register_engine(core)
            self.engines.append(core)
        root = GateRoot(
            [
                (
                    roles.MULTIENGINE,
                    SECRET,
                    lambda broker: MultiEngineAdapter(self.service.multiengine),
                ),
                (roles.TASK, TASK_SECRET, task_avatar_factory(self.service.tasks)),
            ],
            self.clock,
        )
        server_factory, client_factory = ServerFactory(root), ClientFactory()
        _, _, self.pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
        )
        d = client_factory.getRootObject()
        d.addCallback(lambda root: root.callRemote("login", secret, role))
        self.pump.flush()
        self.login = d

    def client(self) -> AsyncMultiEngineClient:
        avatar = self.testcase.successResultOf(self.login)
        avatar.broker.raise_limits()
        return AsyncMultiEngineClient(avatar, self.clock)

    def result(self, d):
        self.pump.flush()
        return self.testcase.successResultOf(d)

    def failure(self, d, *types):
        self.pump.flush()
        return self.testcase.failureResultOf(d, *types)


class InMemoryGridTests(SynchronousTestCase):
    def test_wrong_secret_is_refused(self):
        """A wrong secret gets StaleKeyFile and no avatar."""
        grid = Grid(self, secret="wrong")
        failure = self.failureResultOf(grid.login)
        self.assertIn("StaleKeyFile", str(failure.value))

    def test_other_roles_secret_is_refused_naming_both_roles(self):
        """The secret of another role served on the port (the Task key given to a
        MultiEngine client, or the reverse) gets WrongKeyFile naming the role the key
        grants and the one asked for, and no avatar."""
        for secret, role, held, wanted in (
            (TASK_SECRET, roles.MULTIENGINE, "a Task client", "a MultiEngine client"),
            (SECRET, roles.TASK, "a MultiEngine client", "a Task client"),
            (SECRET, "nonsense", "a MultiEngine client", "an unknown role 'nonsense'"),
        ):
            grid = Grid(self, secret=secret, role=role)
            failure = self.failureResultOf(grid.login)
            message = str(failure.value)
            self.assertIn("WrongKeyFile", message)
            self.assertIn(f"is the key file for {held}", message)
            self.assertIn(f"but {wanted}", message)
        grid = Grid(self, secret=TASK_SECRET, role=roles.TASK)
        self.successResultOf(grid.login)

    def test_execute_push_pull_through_the_adapter(self):
        """The async client's calls cross PB and the core and come back decoded."""
        grid = Grid(self, n=2)
        mec = grid.client()
        results = grid.result(mec.execute("a = id + 40\na"))
        self.assertEqual([r["stdout"] for r in results], ["40\n", "41\n"])
        self.assertEqual(grid.result(mec.pull("a", targets=[1, 0])), [41, 40])
        grid.result(mec.push({"b": [1, 2]}, targets=1))
        self.assertEqual(grid.result(mec.zip_pull(["a", "b"], targets=1)), [(41,), ([1, 2],)])

    def test_run_file(self):
        """run(filename) executes a local file's contents on the targets."""
        grid = Grid(self, n=2)
        mec = grid.client()
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from_file = id * 2\n")
        grid.result(mec.run(path))
        self.assertEqual(grid.result(mec.pull("from_file")), [0, 2])

    def test_errors_cross_the_wire_with_their_types(self):
        """Whole-call errors and per-engine failures keep their types across PB."""
        grid = Grid(self, n=2)
        mec = grid.client()
        grid.failure(mec.execute("x = 1", targets=[0, 9]), InvalidEngineID)
        failure = grid.failure(mec.execute("raise KeyError('k')", targets=[1]), CompositeError)
        [(engine_id, method, exc)] = failure.value.elist
        self.assertEqual((engine_id, method), (1, "execute"))
        self.assertIsInstance(exc, KeyError)
        self.assertIn("raise KeyError", exc.remote_traceback)

    def test_scatter_gather_map_and_properties(self):
        """The composite client methods work over the in-memory wire."""
        grid = Grid(self, n=3)
        mec = grid.client()
        grid.result(mec.scatter("x", list(range(10))))
        self.assertEqual(grid.result(mec.pull("x")), [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]])
        self.assertEqual(grid.result(mec.gather("x")), list(range(10)))
        self.assertEqual(grid.result(mec.map(lambda v: -v, [1, 2])), [-1, -2])
        grid.result(mec.set_properties({"gpu": True}, targets=2))
        self.assertEqual(grid.engines[2].properties.get(), {"gpu": True})
        self.assertEqual(grid.result(mec.get_properties(targets=[2])), [{"gpu": True}])


class EngineServiceBackoffTests(SynchronousTestCase):
    def test_waits_for_the_key_file_with_backoff(self):
        """Without a key file the engine looks again every KEY_FILE_POLL seconds at first,
        then after a twentieth of the time waited so far, at most max_delay apart, never
        giving up."""
        clock = Clock()
        core = EngineCore(Interpreter(), Properties())
        service = EngineService(core, self.mktemp(), clock, initial_delay=0.1, max_delay=1.0)
        attempts = []
        original = service._attempt

        def counting_attempt():
            attempts.append(clock.seconds())
            original()

        service._attempt = counting_attempt
        service.startService()
        while clock.seconds() < 60:
            clock.advance(0.001)
        delays = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
        self.assertApproximates(delays[0], KEY_FILE_POLL, 0.002)
        # Never shorter than the one before (up to the 1 ms steps of the clock here).
        self.assertTrue(all(b > a - 0.002 for a, b in zip(delays, delays[1:], strict=False)))
        self.assertGreater(len(attempts), 60)
        self.assertApproximates(delays[-1], 1.0, 0.002)
        for start, delay in zip(attempts, delays, strict=False):
            self.assertLessEqual(delay, max(start / 20, KEY_FILE_POLL) + KEY_FILE_POLL)
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
