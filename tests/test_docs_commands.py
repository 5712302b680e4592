"""The command pages render each command's real ``--help``.

``docs/_ext/help_text.py`` runs a console script's ``--help`` and reads the usage text
into usage lines, sections of options and description; the ``command-help`` directive renders
that in the docs. These tests check the reading against Twisted's own output and the real
commands, and that every command has its page.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


def load_help_text():
    spec = importlib.util.spec_from_file_location(
        "help_text", ROOT / "docs" / "_ext" / "help_text.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


help_text = load_help_text()


class Sample(usage.Options):
    synopsis = "sample [options]"
    longdesc = "What the sample command does, in a sentence long enough to be wrapped by Twisted."
    optFlags = [["verbose", "v", "Say more."]]
    optParameters = [
        [
            "furl-file",
            None,
            None,
            "Engine key file (default: <security-dir>/ipcontroller-engine.furl, the one the "
            "controller wrote).",
        ],
        ["timeout", "t", 30.0, "Seconds to wait for the controller and every engine.", float],
    ]


class ParseHelpTests(SynchronousTestCase):
    """Reading usage texts."""

    def test_twisted_usage_text(self):
        """Options (short and long forms), wrapped texts (broken after hyphens too) and the
        description after them are read from what ``usage.Options`` prints itself."""
        parsed = help_text.parse_help(str(Sample()))
        self.assertEqual(parsed.usage, ["sample [options]"])
        options = {entry.name: entry.text for entry in parsed.sections["Options"]}
        self.assertEqual(
            sorted(options),
            ["--furl-file=", "--help", "--version", "-t, --timeout=", "-v, --verbose"],
        )
        self.assertEqual(
            options["--furl-file="],
            "Engine key file (default: <security-dir>/ipcontroller-engine.furl, the one the "
            "controller wrote).",
        )
        self.assertEqual(
            options["-t, --timeout="],
            "Seconds to wait for the controller and every engine. [default: 30.0]",
        )
        self.assertEqual(parsed.description, [Sample.longdesc])

    def test_sections_description_first_and_arguments(self):
        """A description before the sections, several sections, option names with their
        argument, and wrapped lines that start with ``--`` are read as printed."""
        parsed = help_text.parse_help(
            "Usage: ipcluster [start] [-n N] [options]\n"
            "       ipcluster stop [options]\n"
            "\n"
            "Start a controller and N engines,\n"
            "and wait.\n"
            "\n"
            "Options:\n"
            "  -n N              Number of engines (default: the number of CPUs, 2).\n"
            "  --engine-arg ARG  Pass ARG on to every ipengine, e.g.\n"
            "                    --engine-arg=--property=gpu=1 (repeatable).\n"
            "  --help            Display this help and exit.\n"
            "\n"
            "Controller options:\n"
            "  --ip ADDRESS  Address to listen on (default: 127.0.0.1).\n"
        )
        self.assertEqual(
            parsed.usage, ["ipcluster [start] [-n N] [options]", "ipcluster stop [options]"]
        )
        self.assertEqual(parsed.description, ["Start a controller and N engines, and wait."])
        self.assertEqual(list(parsed.sections), ["Options", "Controller options"])
        self.assertEqual(
            [(e.name, e.text) for e in parsed.sections["Options"]],
            [
                ("-n N", "Number of engines (default: the number of CPUs, 2)."),
                (
                    "--engine-arg ARG",
                    "Pass ARG on to every ipengine, e.g. --engine-arg=--property=gpu=1 "
                    "(repeatable).",
                ),
                ("--help", "Display this help and exit."),
            ],
        )
        self.assertEqual(
            [(e.name, e.text) for e in parsed.sections["Controller options"]],
            [("--ip ADDRESS", "Address to listen on (default: 127.0.0.1).")],
        )

    def test_text_without_options_is_refused(self):
        """A text that is not a usage text raises HelpError instead of rendering nothing."""
        self.assertRaises(help_text.HelpError, help_text.parse_help, "Traceback: boom\n")
        self.assertRaises(help_text.HelpError, help_text.parse_help, "Usage: x\n\nNo options.\n")


class CommandsTests(SynchronousTestCase):
    """The real commands, through the entry points of setup.cfg."""

    def test_every_command_has_a_page_with_its_help(self):
        """Each console script has ``docs/<name>.md``, which renders its ``--help``."""
        for name in help_text.console_scripts(ROOT / "setup.cfg"):
            page = (ROOT / "docs" / f"{name}.md").read_text(encoding="utf-8")
            self.assertIn(f"```{{command-help}} {name}\n", page, name)

    def test_each_command_help_is_read(self):
        """Every command (and ``ipcluster stop``) prints a help that reads as usage lines
        naming the command, options including ``--help``, and a description."""
        commands = [(name, ()) for name in help_text.console_scripts(ROOT / "setup.cfg")]
        for name, args in [*commands, ("ipcluster", ("stop",))]:
            parsed = help_text.parse_help(help_text.run_help(name, args))
            self.assertTrue(parsed.usage[0].startswith(name), parsed.usage)
            names = [entry.name for entry in parsed.sections["Options"]]
            self.assertIn("--help", names)
            self.assertTrue(parsed.description, name)

    def test_unknown_command_is_refused(self):
        """A name that is not a console script raises HelpError naming the known ones."""
        error = self.assertRaises(help_text.HelpError, help_text.run_help, "ipnothing")
        self.assertIn("ipcluster", str(error))
