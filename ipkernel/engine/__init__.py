"""The engine: a Python process with a persistent namespace, driven by the controller.

User code running on an engine reads and sets the engine's properties (which the task
scheduler matches against tasks' dependencies) through the process-wide instance::

    from ipkernel.engine import properties
    properties['ncores'] = 4
"""

from ipkernel.engine.properties import Properties

__all__ = ["Properties", "properties"]

#: This process's engine properties; the engine service announces every change.
properties = Properties()
