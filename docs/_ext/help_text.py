"""Run an installed command's ``--help`` and read Twisted's usage text into parts.

The command pages render what the commands really print, so they cannot drift from the
code. A command is found the way the installed script finds it: its entry point in
``setup.cfg`` (``[options.entry_points] console_scripts``), called with ``sys.argv[0]``
set to the command's name, so the usage line reads ``Usage: ipcluster ...`` as it does in
a terminal. Nothing here imports Sphinx (``command_help`` is the Sphinx side).
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0

# Calls the entry point as the console script does; argv: module, function, name, args...
_SHIM = (
    "import importlib, sys\n"
    "module, function, name = sys.argv[1:4]\n"
    "sys.argv = [name, *sys.argv[4:]]\n"
    "sys.exit(getattr(importlib.import_module(module), function)())\n"
)

# "  -n, --n=   text", "      --ip=   text" or "  --ip ADDRESS   text": the option, then
# two or more spaces, then its text.
_OPTION = re.compile(r"^\s+(\S.*?)(?:\s{2,}(\S.*))?$")
_SECTION = re.compile(r"^([A-Z][\w ]*):$")


class HelpError(Exception):
    """A command's help could not be produced or read; the message says which and why."""


@dataclass
class HelpEntry:
    """One line of a help section: an option's name (with its argument) and its text."""

    name: str
    text: str = ""


@dataclass
class HelpText:
    """A usage text in parts: usage lines, sections of entries, the description."""

    usage: list[str] = field(default_factory=list)
    sections: dict[str, list[HelpEntry]] = field(default_factory=dict)
    description: list[str] = field(default_factory=list)


def console_scripts(setup_cfg: Path = ROOT / "setup.cfg") -> dict[str, str]:
    """The ``console_scripts`` of ``setup_cfg``: command name to ``module:function``."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    try:
        lines = parser["options.entry_points"]["console_scripts"]
    except KeyError:
        raise HelpError(f"{setup_cfg} declares no console_scripts")
    scripts = {}
    for line in lines.splitlines():
        if "=" in line:
            name, target = (part.strip() for part in line.split("=", 1))
            scripts[name] = target
    return scripts


def run_help(command: str, args: tuple[str, ...] = (), root: Path = ROOT) -> str:
    """What ``command *args --help`` prints, run from this checkout's code.

    Raises :class:`HelpError` if ``command`` is not a console script of ``setup.cfg``, or
    the help does not exit 0 in time.
    """
    scripts = console_scripts(root / "setup.cfg")
    if command not in scripts:
        raise HelpError(f"{command!r} is not a console script of setup.cfg ({sorted(scripts)})")
    module, _, function = scripts[command].partition(":")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-c", _SHIM, module, function or "main", command, *args, "--help"]
    try:
        done = subprocess.run(
            argv, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise HelpError(f"`{command} {' '.join(args)} --help` did not finish in {TIMEOUT:.0f} s")
    if done.returncode != 0:
        raise HelpError(
            f"`{command} {' '.join(args)} --help` exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


def parse_help(text: str) -> HelpText:
    """Read a usage text as Twisted's ``usage.Options`` prints it into a :class:`HelpText`.

    The usage lines come first (Twisted's ``Usage:`` dropped), up to a blank line or a
    section heading. A section is a heading such as ``Options:`` followed by indented
    entries, an option's name (and argument) then its text, whose wrapped lines are
    indented further; a blank line ends it. Any other paragraph, before or after the
    sections, is description. Raises :class:`HelpError` if there is no usage line or no
    entry in any section.
    """
    lines = text.expandtabs().splitlines()
    parsed = HelpText()
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    while i < len(lines) and lines[i].strip() and not _SECTION.match(lines[i]):
        line = lines[i].strip()
        parsed.usage.append(line[len("Usage:") :].strip() if line.startswith("Usage:") else line)
        i += 1
    if not parsed.usage:
        raise HelpError(f"no usage line in the help text: {text[:200]!r}")
    entries: list[HelpEntry] | None = None
    text_column = 0  # where the current entry's text starts; wrapped lines reach it
    paragraph: list[str] = []
    for line in [*lines[i:], ""]:
        section = _SECTION.match(line)
        indent = len(line) - len(line.lstrip())
        if paragraph and (section or not line.strip()):
            parsed.description.append(" ".join(paragraph))
            paragraph = []
        if section:
            entries = parsed.sections.setdefault(section.group(1), [])
        elif not line.strip():
            entries = None
        elif entries is None:
            paragraph.append(line.strip())
        elif entries and indent >= text_column:
            entries[-1].text = _join(entries[-1].text, line.strip())
        else:
            option = _OPTION.match(line)
            if option and option.group(2):
                entries.append(HelpEntry(option.group(1).strip(), option.group(2).strip()))
                text_column = option.start(2)
            else:
                entries.append(HelpEntry(line.strip()))
                text_column = indent + 1
    if not any(parsed.sections.values()):
        raise HelpError(f"no options found in the help text: {text[:200]!r}")
    return parsed


def _join(text: str, more: str) -> str:
    # Twisted wraps with textwrap, which also breaks after the hyphens inside words
    # ("ipcontroller-" / "engine.furl"): those pieces join without a space.
    if re.search(r"\w-$", text):
        return text + more
    return f"{text} {more}".strip()
