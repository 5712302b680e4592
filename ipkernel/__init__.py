"""ipkernel: interactive parallel computing for Python.

One controller, many engines, and two client interfaces (MultiEngine and Task) served
at once over Perspective Broker and TLS. The public surface for users is
:mod:`ipkernel.client`, and :class:`ipkernel.Cluster` (:mod:`ipkernel.cluster`) to start
a cluster from Python; it raises ``ipkernel.ClusterError`` (that is
:class:`ipkernel.errors.ClusterError`) when it cannot. In IPython or Jupyter,
``%load_ext ipkernel`` loads the parallel magics (``%px``, ``%autopx``, ``%result``).
"""

import importlib
from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(shell: object) -> None:
    """``%load_ext ipkernel``: register the parallel magics (IPython is imported only now)."""
    from ipkernel.client.magics import load_ipython_extension as load

    load(shell)


def __getattr__(name: str) -> Any:
    # Loaded on first use: importing ipkernel stays light for engines and clients.
    if name == "Cluster":
        return importlib.import_module("ipkernel.cluster").Cluster
    if name == "ClusterError":
        return importlib.import_module("ipkernel.errors").ClusterError
    raise AttributeError(f"module 'ipkernel' has no attribute {name!r}")
