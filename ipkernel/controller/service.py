"""ControllerService: the one service that owns engines, queues and the client services.

It knows nothing of PB or TLS: adapters (``ipkernel.adapters``) register engines with it
and expose its :class:`~ipkernel.interfaces.IMultiEngine` (and task controller) to
clients. ``ipkernel.tap`` puts it together with its network listeners.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipkernel.controller.engine_status import engine_status
from ipkernel.controller.multiengine import MultiEngine
from ipkernel.controller.queue import EngineQueue
from ipkernel.controller.registry import EngineRegistry
from ipkernel.controller.store import ITaskStore, MemoryStore
from ipkernel.controller.tasks import TaskController
from ipkernel.interfaces.engine import IEngine

EngineListener = Callable[[int], Any]
PropertiesListener = Callable[[int, int], Any]


class ControllerService(MultiService):
    """Engine registry, one queue per engine, and the MultiEngine and Task services over them.

    ``clock`` (an ``IReactorTime``) is what the task controller (:attr:`tasks`) uses to
    wait for the next reactor turn. ``store`` is the task controller's
    :class:`~ipkernel.controller.store.ITaskStore` (in memory by default), closed when the
    service stops; ``task_max_age`` its ``max_age``. ``on_stop_requested`` is called when
    a client asks for the controller to stop (``mec.kill(controller=True)``); the program
    that runs the service decides what that means (``ipcontroller`` stops its reactor). No
    method here stops a reactor. ``now`` is the wall clock that dates task records and the
    commands engines are running (for :meth:`engine_status`).
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        on_stop_requested: Callable[[], Any] | None = None,
        now: Callable[[], float] = time.time,
        store: ITaskStore | None = None,
        task_max_age: float | None = None,
    ) -> None:
        super().__init__()
        store = store if store is not None else MemoryStore()
        self.registry = EngineRegistry(store.next_engine_id, store.keep_next_engine_id)
        self.queues: dict[int, EngineQueue] = {}
        self._on_stop_requested = on_stop_requested
        self._now = now
        self._added: list[EngineListener] = []
        self._removed: list[EngineListener] = []
        self._properties: list[PropertiesListener] = []
        self._versions: dict[int, int] = {}  # engine id -> latest properties version told
        self.multiengine = MultiEngine(self.registry, self.queues, self.request_stop)
        #: The Task service (:class:`~ipkernel.interfaces.ITaskController`).
        self.tasks = TaskController(self, clock=clock, now=now, store=store, max_age=task_max_age)

    def on_engine_added(self, listener: EngineListener) -> None:
        """Call ``listener(engine_id)`` after each registration, once the engine's queue
        exists."""
        self._added.append(listener)

    def on_engine_removed(self, listener: EngineListener) -> None:
        """Call ``listener(engine_id)`` after each departure, once the engine's queue is
        closed and the registry no longer holds it."""
        self._removed.append(listener)

    def on_properties_changed(self, listener: PropertiesListener) -> None:
        """Call ``listener(engine_id, version)`` each time an engine reports new properties."""
        self._properties.append(listener)

    def register_engine(self, engine: IEngine, requested_id: int | None = None) -> int:
        """Add a connected engine; return its id. It leaves when it disconnects."""
        queue = EngineQueue(engine, self._now)
        engine_id = self.registry.register(engine, requested_id)
        self.queues[engine_id] = queue
        engine.notify_on_disconnect(lambda e: self.unregister_engine(engine_id))
        self.log.info(
            "engine {engine_id} registered: {info}", engine_id=engine_id, info=engine.info
        )
        for listener in list(self._added):
            listener(engine_id)
        return engine_id

    def unregister_engine(self, engine_id: int) -> None:
        """Remove an engine; everything queued for it fails with ``EngineError``."""
        queue = self.queues.pop(engine_id, None)
        if queue is None:
            return
        queue.close(f"engine {engine_id} died or disconnected before running this command")
        self.registry.unregister(engine_id)
        self._versions.pop(engine_id, None)
        self.log.info("engine {engine_id} unregistered", engine_id=engine_id)
        for listener in list(self._removed):
            listener(engine_id)

    def properties_changed(self, engine_id: int, version: int) -> None:
        """An engine reports new properties (the task scheduler re-checks waiting tasks)."""
        if engine_id in self.registry and isinstance(version, int):
            self._versions[engine_id] = max(version, self._versions.get(engine_id, 0))
        for listener in list(self._properties):
            listener(engine_id, version)

    def engine_status(self) -> list[dict[str, Any]]:
        """What each registered engine is doing, one plain dict per engine, by id (see
        :func:`~ipkernel.controller.engine_status.engine_status`); times are ``now()``'s."""
        return engine_status(self.registry, self.queues, self.tasks.running(), self._versions)

    def request_stop(self) -> None:
        """Ask the program running this service to stop it."""
        if self._on_stop_requested is not None:
            self._on_stop_requested()

    def stopService(self):  # noqa: N802 - Twisted's name
        for engine_id in self.registry.ids():
            engine = self.registry.get(engine_id)
            engine.disconnect()
        self.tasks.close()
        return super().stopService()
