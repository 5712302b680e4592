"""Options of ipkernel's commands: parsed by Twisted, with ``--help`` as users expect it.

Twisted's own help lists options alphabetically, spells an option named ``n`` as ``--n=``
even where ``-n N`` is what people type, and repeats defaults that the text already
explains. :class:`CommandOptions` keeps Twisted's parsing and prints instead::

    Usage: ipcluster [start] [options]

    <what the command does>

    Options:
      -n N                 Number of engines (default: the number of CPUs, 4).
      --launcher NAME      How to start engines: ... (default: local).

in the order the options are declared (the command's own first, ``--help`` and
``--version`` last), each with its value's name (:attr:`CommandOptions.metavars`) and its
default, unless the text already says what the default is.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any, ClassVar

from twisted.python import usage

__all__ = ["CommandOptions"]

# The options every usage.Options has; listed after a command's own.
_LAST = ("help", "version")
# The option column is at most this wide; a longer spelling puts its text on the next line.
_MAX_SPELLING = 24


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _default_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class CommandOptions(usage.Options):
    """A command's options; subclasses set :attr:`synopsis`, ``longdesc`` and their options.

    Parsing is Twisted's: an option whose name is one letter (``["n", "n", ...]``) is
    accepted as ``-n 4``, ``-n4``, ``--n 4`` and ``--n=4``, and shown as ``-n N``.
    """

    #: The usage line(s), starting with ``Usage:``.
    synopsis: ClassVar[str] = ""
    #: The name of each option's value, by option name (``VALUE`` when not given). Merged
    #: along the class hierarchy, so a subclass adds to its bases' names.
    metavars: ClassVar[dict[str, str]] = {}
    #: Options listed after the others, just before ``--help``: those that programs pass
    #: rather than people (``--lifeline-fd``).
    listed_last: ClassVar[tuple[str, ...]] = ()

    def option_sections(self) -> list[tuple[str, list[str]]]:
        """The help's sections: ``(heading, option names)``; one ``Options`` section here."""
        return [("Options", self.option_names())]

    def option_names(self) -> list[str]:
        """Every option's name, the most derived class's first, :attr:`listed_last` and
        ``help``/``version`` last."""
        names: list[str] = []
        for cls in type(self).__mro__:
            own = vars(cls)
            names += [entry[0] for entry in own.get("optParameters", [])]
            names += [entry[0] for entry in own.get("optFlags", [])]
            names += [key[4:].replace("_", "-") for key in own if key.startswith("opt_")]
        last = (*self.listed_last, *_LAST)
        ordered = [name for name in dict.fromkeys(names) if name not in last]
        return [*ordered, *(name for name in last if name in names)]

    def _metavar(self, name: str) -> str:
        merged: dict[str, str] = {}
        for cls in reversed(type(self).__mro__):
            merged.update(vars(cls).get("metavars", {}))
        return merged.get(name, "VALUE")

    def spelling(self, name: str) -> str:
        """How option ``name`` is written: ``-n N``, ``--launcher NAME``, ``--reuse-keys``."""
        value = f" {self._metavar(name)}" if self.takes_value(name) else ""
        if len(name) == 1:
            return f"-{name}{value}"
        shorts = [key for key, long in self.synonyms.items() if long == name and len(key) == 1]
        prefix = f"-{shorts[0]}, " if shorts else ""
        return f"{prefix}--{name}{value}"

    def takes_value(self, name: str) -> bool:
        """Whether option ``name`` is followed by a value (a parameter, not a flag)."""
        return f"{name}=" in self.longOpt or f"{name}:" in self.shortOpt

    def description(self, name: str) -> str:
        """What option ``name`` does, ending with its default unless the text gives it."""
        text = _one_line(self.docs.get(name))
        default = self.defaults.get(name) if self.takes_value(name) else None
        if default is not None and "default" not in text.lower():
            text = f"{text.rstrip('.')} (default: {_default_text(default)})."
        return text

    def getUsage(self, width: int | None = None) -> str:  # noqa: N802 - Twisted's name
        """The help after the synopsis: what the command does, then its options."""
        width = width or int(os.environ.get("COLUMNS", "80"))
        sections = [
            (heading, [(self.spelling(name), self.description(name)) for name in names])
            for heading, names in self.option_sections()
        ]
        spellings = [spelling for _, rows in sections for spelling, _ in rows]
        column = min(max(map(len, spellings), default=0), _MAX_SPELLING) + 4
        wrap = textwrap.TextWrapper(
            width=max(width - column, 20), break_long_words=False, break_on_hyphens=False
        )
        parts = []
        longdesc = _one_line(getattr(self, "longdesc", ""))
        if longdesc:
            parts.append("\n".join(textwrap.wrap(longdesc, width, break_on_hyphens=False)))
        for heading, rows in sections:
            lines = [f"{heading}:"]
            for spelling, text in rows:
                wrapped = wrap.wrap(text) or [""]
                if len(spelling) + 4 > column:
                    lines.append(f"  {spelling}")
                else:
                    lines.append(f"  {spelling:<{column - 2}}{wrapped.pop(0)}")
                lines += [" " * column + line for line in wrapped]
            parts.append("\n".join(lines))
        return "".join(f"\n{part}\n" for part in parts)
