"""The public surface of ipkernel for users.

::

    from ipkernel import client
    mec = client.MultiEngineClient()     # reads <security-dir>/ipcontroller-mec.furl
    mec.execute('a = id * 2')
    mec.pull('a')

    tc = client.TaskClient()             # reads <security-dir>/ipcontroller-tc.furl
    tid = tc.run(client.StringTask('a = 2 ** 10', pull='a'))
    tc.get_task_result(tid, block=True).ns.a
"""

from ipkernel.client.multiengine_async import AsyncMultiEngineClient
from ipkernel.client.multiengine_blocking import MultiEngineClient
from ipkernel.client.results import PendingResult, ResultList
from ipkernel.client.task_async import AsyncTaskClient
from ipkernel.client.task_blocking import TaskClient
from ipkernel.client.task_types import MapTask, StringTask, Task, TaskResult
from ipkernel.errors import (
    ClientUnusable,
    CompositeError,
    ControllerUnreachable,
    EngineError,
    InvalidEngineID,
    IPKernelError,
    KeyFileNotFound,
    NoEnginesRegistered,
    QueueCleared,
    RemoteError,
    SerializationError,
    StaleKeyFile,
    TaskAborted,
    WrongKeyFile,
)

__all__ = [
    "AsyncMultiEngineClient",
    "AsyncTaskClient",
    "ClientUnusable",
    "CompositeError",
    "ControllerUnreachable",
    "EngineError",
    "IPKernelError",
    "InvalidEngineID",
    "KeyFileNotFound",
    "MapTask",
    "MultiEngineClient",
    "NoEnginesRegistered",
    "PendingResult",
    "QueueCleared",
    "RemoteError",
    "ResultList",
    "SerializationError",
    "StaleKeyFile",
    "StringTask",
    "Task",
    "TaskAborted",
    "TaskClient",
    "TaskResult",
    "WrongKeyFile",
]
