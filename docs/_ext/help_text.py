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

# "  -n, --n=   text" or "      --ip=   text": the option names, then two or more spaces.
_OPTION = re.compile(r"^\s+(-\S.*?)(?:\s{2,}(.*))?$")
_DEFAULT = re.compile(r"\s*\[default:\s*(.*?)\]\s*$", re.S)
_SECTION = re.compile(r"^([A-Z][\w ]*):$")


class HelpError(Exception):
    """A command's help could not be produced or read; the message says which and why."""


@dataclass
class HelpEntry:
    """One line of a help section: an option (or command) name, its text, its default."""

    name: str
    text: str = ""
    default: str | None = None


@dataclass
class HelpText:
    """A usage text in parts: usage lines, sections of entries, the closing description."""

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
    """Read Twisted's usage text (``usage.Options.getUsage``) into a :class:`HelpText`.

    The usage lines are the lines before the first section (``Options:``), without
    Twisted's ``Usage:``. Raises :class:`HelpError` if there is no usage line or no entry
    in any section.
    """
    lines = text.expandtabs().splitlines()
    parsed = HelpText()
    i = 0
    while i < len(lines) and not _SECTION.match(lines[i]):
        if lines[i].strip():
            # Twisted writes "Usage: prog [options]" itself, or a command's own synopsis.
            line = lines[i].strip()
            parsed.usage.append(
                line[len("Usage:") :].strip() if line.startswith("Usage:") else line
            )
        i += 1
    if not parsed.usage:
        raise HelpError(f"no usage line in the help text: {text[:200]!r}")
    entries: list[HelpEntry] | None = None
    while i < len(lines):
        line = lines[i]
        section = _SECTION.match(line)
        option = _OPTION.match(line)
        if section:
            entries = parsed.sections.setdefault(section.group(1), [])
        elif not line.strip():
            entries = None
            if any(parsed.sections.values()):
                break
        elif entries is not None and option and line.lstrip().startswith("-"):
            entries.append(HelpEntry(option.group(1).strip(), (option.group(2) or "").strip()))
        elif entries is not None and entries:
            entries[-1].text = _join(entries[-1].text, line.strip())
        i += 1
    if not any(parsed.sections.values()):
        raise HelpError(f"no options found in the help text: {text[:200]!r}")
    for section_entries in parsed.sections.values():
        for entry in section_entries:
            _split_default(entry)
    parsed.description = _paragraphs(lines[i:])
    return parsed


def _join(text: str, more: str) -> str:
    # Twisted wraps with textwrap, which also breaks after the hyphens inside words
    # ("ipcontroller-" / "engine.furl"): those pieces join without a space.
    if re.search(r"\w-$", text):
        return text + more
    return f"{text} {more}".strip()


def _split_default(entry: HelpEntry) -> None:
    match = _DEFAULT.search(entry.text)
    if match:
        entry.default = match.group(1).strip()
        entry.text = entry.text[: match.start()].rstrip()


def _paragraphs(lines: list[str]) -> list[str]:
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return paragraphs
