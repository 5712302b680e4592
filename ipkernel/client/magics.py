"""The IPython magics: ``%px``, ``%%px``, ``%autopx``, ``%result`` (alias ``%pxresult``).

Loaded by ``%load_ext ipkernel`` or ``mec.activate()``, in terminal IPython and Jupyter
alike. They use the client made active by ``mec.activate()``. What they do lives in
:mod:`ipkernel.client.px`; this module only ties it to IPython, which ipkernel does not
otherwise need. It imports no client class (the magics reach the client through
``activate()``), so that ``ipkernel.load_ipython_extension`` can import it without an
import circle.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from ipkernel.client.px import (
    PxOptions,
    active_client,
    autopx_lines,
    fetch_result,
    parse_px,
    run_px,
)

__all__ = ["ParallelMagics", "load_ipython_extension"]


def load_ipython_extension(shell: Any) -> None:
    """Register the magics with ``shell`` (what ``%load_ext ipkernel`` calls)."""
    shell.register_magics(ParallelMagics)


def _autopx_transform(lines: list[str]) -> list[str]:
    return autopx_lines(lines)


# IPython skips transformers with side effects when it only asks whether typed input is
# complete; without this, the first line of a loop would run before its body is typed.
_autopx_transform.has_side_effects = True  # type: ignore[attr-defined]


def _options(line: str, cell: str | None, magic: str) -> PxOptions:
    try:
        return parse_px(line, cell, magic)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@magics_class
class ParallelMagics(Magics):
    """The parallel magics over the active MultiEngine client."""

    @line_cell_magic
    def px(self, line: str, cell: str | None = None) -> Any:
        """Execute code on the engines.

        ``%px CODE`` runs one line, a ``%%px`` cell runs the cell. Options, before the
        code: ``--targets 0,2`` (or ``--targets all``), ``--block`` / ``--noblock``;
        otherwise the client's ``targets`` and ``block`` apply. Blocking, the result is
        the ``<Results List>`` of each engine's input, output and errors, labelled by
        engine id; non-blocking, a ``PendingResult``. Ctrl-C interrupts the code on the
        engines.
        """
        return run_px(self._client(), _options(line, cell, "px"))

    @line_magic
    def autopx(self, line: str) -> None:
        """Toggle running every cell on the engines (as ``%%px``) until ``%autopx`` again.

        Cells that start with a magic (``%...``) still run here.
        """
        transformers = self.shell.input_transformers_cleanup
        if _autopx_transform in transformers:
            transformers.remove(_autopx_transform)
            print("Auto Parallel Disabled")
        else:
            self._client()  # fail now, not on the next cell
            transformers.append(_autopx_transform)
            print("Auto Parallel Enabled\nType %autopx to disable")

    @line_magic
    def result(self, line: str) -> Any:
        """The result of the last execution on each engine (``%result N``: execution N).

        Takes ``--targets`` and ``--block`` / ``--noblock`` like ``%px``.
        """
        return self._result(line)

    @line_magic
    def pxresult(self, line: str) -> Any:
        """The same as ``%result``."""
        return self._result(line)

    def _result(self, line: str) -> Any:
        options = _options(line, None, "result")
        try:
            return fetch_result(self._client(), options)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _client(self) -> Any:
        client = active_client()
        if client is None:
            raise UsageError(
                "no MultiEngine client is active: run `from ipkernel import client; "
                "mec = client.MultiEngineClient(); mec.activate()` first"
            )
        return client
