"""The public surface of ipkernel for users.

::

    from ipkernel import client
    mec = client.MultiEngineClient()     # reads <security-dir>/ipcontroller-mec.furl
    mec.execute('a = id * 2')
    mec.pull('a')
"""

from ipkernel.client.multiengine import AsyncMultiEngineClient, MultiEngineClient
from ipkernel.client.results import PendingResult, ResultList
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
)

__all__ = [
    "AsyncMultiEngineClient",
    "ClientUnusable",
    "CompositeError",
    "ControllerUnreachable",
    "EngineError",
    "IPKernelError",
    "InvalidEngineID",
    "KeyFileNotFound",
    "MultiEngineClient",
    "NoEnginesRegistered",
    "PendingResult",
    "QueueCleared",
    "RemoteError",
    "ResultList",
    "SerializationError",
    "StaleKeyFile",
    "TaskAborted",
]
