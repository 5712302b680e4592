"""What the parallel magics do, without IPython: options, the active client, errors.

The IPython layer (:mod:`ipkernel.client.magics`) is thin; this module holds the rest so
that it can be used and tested where IPython is not installed:

- :func:`parse_px` reads ``%px`` / ``%%px`` / ``%result`` options (``--targets 0,2`` or
  ``--targets all``, ``--block`` / ``--noblock``) and the code;
- :func:`autopx_lines` is the ``%autopx`` input transformation;
- :func:`run_px` and :func:`fetch_result` make the client calls, honouring the client's
  ``targets`` and ``block`` unless an option overrides them;
- :func:`traceback_lines` is what a failure shows instead of a local traceback: the
  ``CompositeError`` summary and each engine's remote traceback;
- :func:`activate` and :func:`active_client`: the client the magics use.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from ipkernel.errors import CompositeError, IPKernelError, format_error_line

__all__ = [
    "PxOptions",
    "activate",
    "active_client",
    "autopx_lines",
    "fetch_result",
    "parse_px",
    "parse_targets",
    "run_px",
    "set_active",
    "traceback_lines",
]

_active: Any = None


def active_client() -> Any:
    """The client the magics use, or None when none has been activated yet."""
    return _active


def set_active(client: Any) -> None:
    """Make ``client`` the one the magics use."""
    global _active
    _active = client


def activate(client: Any) -> None:
    """Load the magics into the running IPython (or Jupyter) and make them use ``client``.

    :raises RuntimeError: if IPython is not installed or this is not an IPython session.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        raise RuntimeError(
            "activate() needs IPython, which is not installed: pip install 'ipkernel[ipython]'"
        ) from None
    shell = get_ipython()
    if shell is None:
        raise RuntimeError(
            "activate() works inside IPython or a Jupyter notebook, where it enables the "
            "%px, %autopx and %result magics; in a plain Python session call "
            "mec.execute(...) instead"
        )
    shell.extension_manager.load_extension("ipkernel")
    set_active(client)


@dataclass(frozen=True)
class PxOptions:
    """Parsed magic options: ``None`` means "the client's attribute"."""

    code: str
    targets: str | list[int] | None = None
    block: bool | None = None


_TOKEN = re.compile(r"(\S+)\s*(.*)", re.DOTALL)


def parse_targets(text: str) -> str | list[int]:
    """``'all'``, or engine ids separated by commas (``'0,2'`` gives ``[0, 2]``).

    :raises ValueError: naming the text, for anything else.
    """
    if text.strip() == "all":
        return "all"
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        ids = []
    if not ids or any(i < 0 for i in ids):
        raise ValueError(
            f"--targets takes 'all' or engine ids separated by commas (like 0,2), not {text!r}"
        )
    return ids


def parse_px(line: str, cell: str | None = None, magic: str = "px") -> PxOptions:
    """Split a magic's line into options and code.

    Options come first: ``--targets X`` (or ``--targets=X``), ``--block``,
    ``--noblock``; ``--`` ends them. For a line magic the rest of the line is the
    code; for a cell magic (``cell`` given) the code is the cell and nothing but options
    may follow the magic's name.

    :raises ValueError: for an unknown option, a bad ``--targets`` value, text after
        the options of a cell magic, or no code at all.
    """
    targets: str | list[int] | None = None
    block: bool | None = None
    rest = line.strip()
    while rest.startswith("--"):
        token, rest = _TOKEN.match(rest).groups()  # type: ignore[union-attr]
        if token == "--":
            break
        name, eq, value = token.partition("=")
        if name == "--targets":
            if not eq:
                if not rest:
                    raise ValueError("--targets needs a value: 'all' or ids like 0,2")
                value, rest = _TOKEN.match(rest).groups()  # type: ignore[union-attr]
            targets = parse_targets(value)
        elif token in ("--block", "--noblock"):
            block = token == "--block"
        else:
            raise ValueError(
                f"%{magic}: unknown option {token!r} (options: --targets, --block, --noblock)"
            )
    if cell is None:
        code = rest
    elif rest:
        raise ValueError(f"%%{magic} takes only options on its first line, not {rest!r}")
    else:
        code = cell
    if magic == "px" and not code.strip():
        raise ValueError(f"%{magic} needs code to run on the engines")
    return PxOptions(code, targets, block)


def autopx_lines(lines: list[str]) -> list[str]:
    """The ``%autopx`` transformation of a cell's lines (an IPython input transformer).

    A cell becomes one call of the ``%%px`` magic with its text unchanged; a cell that
    starts with ``%`` (``%autopx`` to switch back, any other magic) and an empty cell
    stay as they are, to run here.
    """
    source = "".join(lines)
    stripped = source.lstrip()
    if not stripped or stripped.startswith("%"):
        return lines
    return [f"get_ipython().run_cell_magic('px', '', {source!r})\n"]


def run_px(client: Any, options: PxOptions) -> Any:
    """Execute the code on the targets: a ``ResultList`` (blocking) or a ``PendingResult``.

    Failures propagate with :func:`traceback_lines` attached as IPython's
    ``_render_traceback_``, so IPython shows them instead of local frames.
    """
    try:
        return client.execute(options.code, targets=options.targets, block=options.block)
    except (IPKernelError, KeyboardInterrupt) as exc:
        _show_as(exc, traceback_lines(exc))
        raise


def fetch_result(client: Any, options: PxOptions) -> Any:
    """The result of execution ``options.code`` (a number; the last when empty) on the
    targets: a ``ResultList`` (blocking) or a ``PendingResult``.

    :raises ValueError: if the code is neither empty nor an execution number.
    """
    text = options.code.strip()
    try:
        number = int(text) if text else None
    except ValueError:
        raise ValueError(f"%result takes an execution number or nothing, not {text!r}") from None
    try:
        return client.get_result(number, targets=options.targets, block=options.block)
    except IPKernelError as exc:
        _show_as(exc, traceback_lines(exc))
        raise


def _show_as(exc: BaseException, lines: list[str]) -> None:
    # IPython shows what an exception's _render_traceback_ returns instead of its frames
    # (which here would be the client's plumbing, not the user's code).
    exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]


def traceback_lines(exc: BaseException) -> list[str]:
    """What IPython shows for a failure of a magic's call, one string per line.

    A ``CompositeError`` shows the successful engines' results (when there are any),
    its summary, then each engine's remote traceback; another ipkernel error shows its
    ``ExcType: message`` line; Ctrl-C during ``%px`` says the engines were interrupted.
    """
    if isinstance(exc, KeyboardInterrupt):
        return ["KeyboardInterrupt: the code running on the engines was interrupted"]
    if not isinstance(exc, CompositeError):
        return format_error_line(exc).splitlines()
    lines: list[str] = []
    if any(not isinstance(r, BaseException) for r in exc.results):
        lines.extend(repr(exc.results).splitlines())
        lines.append("")
    lines.extend(f"CompositeError: {exc}".splitlines())
    text = io.StringIO()
    exc.print_tracebacks(file=text)
    lines.append("")
    lines.extend(text.getvalue().rstrip("\n").splitlines())
    return lines
