"""A submitted task's wire form, checked into the specs of its recovery chain.

A client submits a task as a list of ``[retries, body, depend]``: the task first, then
each of its recovery tasks in order. Everything but ``retries`` is opaque to the
controller: ``body`` and ``depend`` are frames the client serialized and only an engine
decodes. In the clear travel only what scheduling needs: ``retries``, whether there is a
``depend`` function (and the SHA-256 of its frames, so that tasks sharing a function share
the engines' verdicts), and the shape of the chain.
"""

from __future__ import annotations

import hashlib

from ipkernel.controller.store import HeldPayload, TaskSpec

__all__ = ["MAX_CHAIN", "parse_task"]

#: The longest chain of recovery tasks accepted (a task and this many recoveries).
MAX_CHAIN = 100


def parse_task(task: object) -> list[TaskSpec]:
    """Check a task in its wire form and return its chain: the task, then its recoveries.

    The wire form is a list of ``[retries, body, depend]``, the task first and then each
    recovery task in order: ``retries`` an int of at least 0, ``body`` frames (a non-empty
    list of ``bytes``) or a :class:`~ipkernel.controller.store.HeldPayload`, ``depend``
    frames or ``None``.

    :raises ValueError: naming what is wrong, for a malformed task or a recovery chain
        longer than :data:`MAX_CHAIN`.
    """
    if not isinstance(task, (list, tuple)) or not task:
        raise ValueError("a task must be a non-empty list of [retries, body, depend]")
    if len(task) > MAX_CHAIN + 1:
        raise ValueError(f"a task may have at most {MAX_CHAIN} recovery tasks in a chain")
    chain: list[TaskSpec] = []
    for link in task:
        if not isinstance(link, (list, tuple)) or len(link) != 3:
            raise ValueError("each task of a chain must be [retries, body, depend]")
        retries, body, depend = link
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"retries must be an int of at least 0, not {retries!r}")
        if _is_frames(body):
            body = list(body)
        elif not isinstance(body, HeldPayload):
            raise ValueError("a task's body must be a non-empty list of bytes")
        digest = None
        if depend is not None:
            if not _is_frames(depend):
                raise ValueError("a task's depend must be a non-empty list of bytes or None")
            h = hashlib.sha256()
            for frame in depend:
                h.update(frame)
            digest = h.digest()
            depend = list(depend)
        chain.append(TaskSpec(body, depend, digest, retries))
    return chain


def _is_frames(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(frame, bytes) for frame in value)
    )
