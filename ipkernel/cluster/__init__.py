"""Starting a cluster from Python: :class:`Cluster` (also ``ipkernel.Cluster``).

::

    from ipkernel import Cluster
    with Cluster(n=4) as cluster:
        mec = cluster.multiengine_client()

Modules: :mod:`~ipkernel.cluster.cluster` (the :class:`Cluster`),
:mod:`~ipkernel.cluster.keywords` (its options: ``ipcluster start``'s),
:mod:`~ipkernel.cluster.process` (the ``ipcluster`` it runs as a child process).
:class:`~ipkernel.errors.ClusterError` is the error ``ipcluster`` reports and
:class:`Cluster` raises.
"""

from ipkernel.cluster.cluster import Cluster

__all__ = ["Cluster"]
