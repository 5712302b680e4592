"""Ctrl-C during a blocking MultiEngine call also interrupts what the call started.

The blocking bridge (:mod:`ipkernel.client.blocking`) turns Ctrl-C into
``KeyboardInterrupt`` at once and drops the call's late answer; the code it started
would still run on the engines. :func:`interrupting` wraps the methods that run user
code (``execute``, ``run``, ``map``) so that a ``KeyboardInterrupt`` during a blocking
call first sends ``interrupt`` to the call's targets, then propagates.

The interrupt goes to whatever runs on those engines at that moment: normally the
interrupted call's code, or nothing when the call had not reached an engine yet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["INTERRUPT_WAIT", "interrupt_engines", "interrupting"]

#: How long (seconds) Ctrl-C waits for the engines to acknowledge the interrupt before
#: ``KeyboardInterrupt`` propagates: long enough that the message leaves before a script
#: that ends on Ctrl-C takes the reactor thread down, short enough not to be felt.
INTERRUPT_WAIT = 2.0


def interrupt_engines(client: Any, targets: Any, wait: float = INTERRUPT_WAIT) -> bool:
    """Send ``interrupt`` to ``targets`` through ``client``; wait at most ``wait`` seconds.

    Never raises (an unreachable controller or engine only means nothing was
    interrupted there); returns True if every target acknowledged in time.
    """
    try:
        pending = client.interrupt(targets=targets, block=False)
        pending.future.result(timeout=wait)
    except Exception:  # TimeoutError included
        return False
    return True


def interrupting(*names: str) -> Callable[[type], type]:
    """Class decorator: Ctrl-C during a blocking call of ``names`` interrupts its targets.

    Each method is one forwarded by :func:`ipkernel.client.blocking.forward`: it takes
    ``targets=`` and ``block=`` keywords defaulting to the instance's attributes, and the
    class has ``interrupt(targets=, block=)``.
    """

    def decorate(cls: type) -> type:
        for name in names:
            setattr(cls, name, _interrupting(getattr(cls, name)))
        return cls

    return decorate


def _interrupting(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        block = kwargs.get("block")
        if not (self.block if block is None else block):
            return method(self, *args, **kwargs)
        targets = kwargs.get("targets")
        if targets is None:
            targets = self.targets
        try:
            return method(self, *args, **kwargs)
        except KeyboardInterrupt:
            interrupt_engines(self, targets)
            raise

    return call
