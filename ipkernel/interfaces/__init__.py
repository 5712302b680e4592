"""The contracts of the network-free core: engines, the MultiEngine service, the task service."""

from ipkernel.interfaces.engine import IEngine
from ipkernel.interfaces.multiengine import IMultiEngine
from ipkernel.interfaces.task import ITaskController

__all__ = ["IEngine", "IMultiEngine", "ITaskController"]
