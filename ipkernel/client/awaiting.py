"""Awaiting client results in asyncio: ``await pr``, ``await tc.result(tid)``.

The client's results are :class:`concurrent.futures.Future` objects completed by its
reactor thread. :func:`awaitable` mirrors one into an asyncio future of the running loop,
completed through ``loop.call_soon_threadsafe``: the loop (a notebook's, say) keeps
running other coroutines while it waits, and no second event loop is started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

__all__ = ["awaitable"]


def awaitable(future: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
    """An asyncio future of the running loop that completes as ``future`` does.

    It gets ``future``'s result or exception (``CancelledError`` if ``future`` was
    cancelled). Cancelling it (the awaiting coroutine was cancelled, or timed out in
    ``asyncio.wait_for``) leaves ``future`` alone, as Ctrl-C leaves a pending result
    usable. Call it from a coroutine; ``RuntimeError`` if no loop is running.
    """
    loop = asyncio.get_running_loop()
    mirror = loop.create_future()

    def copy(done: concurrent.futures.Future[Any]) -> None:
        if mirror.cancelled():
            return
        if done.cancelled():
            mirror.cancel()
            return
        exc = done.exception()
        if exc is not None:
            mirror.set_exception(exc)
        else:
            mirror.set_result(done.result())

    def arrived(done: concurrent.futures.Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(copy, done)
        except RuntimeError:
            pass  # the loop was closed before the result came: nobody is waiting

    future.add_done_callback(arrived)
    return mirror
