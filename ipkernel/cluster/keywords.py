"""The keyword arguments of :class:`~ipkernel.Cluster`: ``ipcluster start``'s options.

They are derived from :class:`~ipkernel.cli.ipcluster.options.StartOptions`, so a new
``ipcluster`` option is a new keyword: each option's name with ``_`` for ``-`` (``ip``,
``location``, ``db``, ``reuse_keys``, ``hostfile``, ``timeout``, ``exec_engines``...),
except the repeatable ``--engine-arg``, which is ``engine_args``, a list of strings.
``--lifeline-fd`` is not one: the Cluster gives the ipcluster its lifeline itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.python import usage

from ipkernel.cli.ipcluster.options import StartOptions

__all__ = ["ipcluster_args", "keyword_options"]

# Options that are not keywords: the Cluster's own business, or not options of a cluster.
_NOT_KEYWORDS = ("lifeline-fd", "help", "version")
# Keywords not spelt as their option is.
_RENAMED = {"engine-arg": "engine_args"}


def keyword_options() -> dict[str, str]:
    """Every keyword, mapped to the ``ipcluster start`` option it stands for."""
    return {
        _RENAMED.get(name, name.replace("-", "_")): name
        for name in StartOptions().option_names()
        if name not in _NOT_KEYWORDS
    }


def _option_args(options: StartOptions, keyword: str, name: str, value: Any) -> list[str]:
    if name == "engine-arg":
        if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{keyword} must be a list of strings, not {value!r}")
        return [f"--{name}={arg}" for arg in value]
    if not options.takes_value(name):
        if not isinstance(value, bool):
            raise TypeError(f"{keyword} must be True or False, not {value!r}")
        return [f"--{name}"] if value else []
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return [f"-{name}", text] if len(name) == 1 else [f"--{name}={text}"]


def ipcluster_args(keywords: Mapping[str, Any]) -> list[str]:
    """The ``ipcluster start`` arguments for ``keywords`` (those that are None are left out).

    Raises ``TypeError`` naming the unknown keywords and every valid one, or a value of the
    wrong kind; ``ValueError`` with ipcluster's own message for a value it refuses.
    """
    known = keyword_options()
    unknown = sorted(set(keywords) - set(known))
    if unknown:
        raise TypeError(
            f"Cluster() got unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; the options are: {', '.join(sorted(known))}"
        )
    options = StartOptions()
    args: list[str] = []
    for keyword, value in keywords.items():
        if value is not None:
            args += _option_args(options, keyword, known[keyword], value)
    try:
        options.parseOptions(args)
    except usage.UsageError as exc:
        # Twisted prefixes the message of a value its parser refused.
        message = str(exc).removeprefix("Parameter type enforcement failed: ")
        raise ValueError(f"Cluster(): {message}") from None
    return args
