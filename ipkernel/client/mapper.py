"""``map`` with settings fixed ahead: the MultiEngine :class:`Mapper` and the decorator
that ``parallel()`` returns, for both blocking clients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipkernel.client.multiengine_async import Targets

__all__ = ["Mapper", "parallel_decorator"]


def parallel_decorator(mapper: Any) -> Callable[[Callable], Callable]:
    """A decorator turning ``f`` into ``seq -> mapper.map(f, seq)`` (``parallel()``)."""

    def decorate(func: Callable) -> Callable:
        def parallel_func(seq: Sequence) -> Any:
            return mapper.map(func, seq)

        parallel_func.__name__ = getattr(func, "__name__", "parallel_func")
        parallel_func.__doc__ = func.__doc__
        return parallel_func

    return decorate


class Mapper:
    """``map`` with fixed ``targets`` and ``block`` (see ``MultiEngineClient.mapper()``)."""

    def __init__(self, client: Any, targets: Targets | None, block: bool | None) -> None:
        self.client = client
        self.targets = targets
        self.block = block

    def map(self, func: Callable, seq: Sequence) -> Any:
        """``[func(x) for x in seq]`` on the chosen targets."""
        return self.client.map(func, seq, targets=self.targets, block=self.block)
