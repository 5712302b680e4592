"""Sphinx directive ``command-help``: a command's options, read from its real ``--help``.

In a Markdown page::

    ```{command-help} ipcluster stop
    ```

runs ``ipcluster stop --help`` from this checkout (see :mod:`help_text`) at build time
and renders its usage lines, its description, and a table per section of options (each
option and its text, as printed). Pages that use the directive are read again on every
build, so a changed option shows up without a clean build. A command that fails to print
its help is a build error.
"""

from __future__ import annotations

from docutils import nodes
from help_text import HelpEntry, HelpError, parse_help, run_help
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective


class CommandHelp(SphinxDirective):
    """``{command-help} COMMAND [SUBCOMMAND ...]``: usage, options table, description."""

    required_arguments = 1
    optional_arguments = 10
    has_content = False

    def run(self) -> list[nodes.Node]:
        command, *args = self.arguments
        try:
            parsed = parse_help(run_help(command, tuple(args)))
        except HelpError as exc:
            raise self.error(str(exc))
        self.env.command_help_docs = getattr(self.env, "command_help_docs", set())
        self.env.command_help_docs.add(self.env.docname)

        usage = "\n".join(
            f"{'Usage:' if i == 0 else '      '} {line}" for i, line in enumerate(parsed.usage)
        )
        result: list[nodes.Node] = [nodes.literal_block(usage, usage, language="text")]
        for paragraph in parsed.description:
            # As printed: no smart quotes turning "--log-dir" into an en dash.
            result.append(nodes.paragraph(paragraph, paragraph, support_smartquotes=False))
        for title, entries in parsed.sections.items():
            result.append(_table(title, entries))
        return result


def _table(title: str, entries: list[HelpEntry]) -> nodes.table:
    table = nodes.table(classes=["command-help"], support_smartquotes=False)
    table += nodes.title(title, title)
    group = nodes.tgroup(cols=2)
    table += group
    for width in (30, 70):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    head += _row([nodes.Text("Option"), nodes.Text("Meaning")])
    body = nodes.tbody()
    group += body
    for entry in entries:
        body += _row([nodes.literal(entry.name, entry.name), nodes.Text(entry.text)])
    return table


def _row(cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += nodes.paragraph("", "", cell)
        row += entry
    return row


def _outdated(app: Sphinx, env, added, changed, removed) -> list[str]:
    # The help comes from code, not from the page: read these pages again every time.
    return sorted(getattr(env, "command_help_docs", set()) - set(removed))


def _purge(app: Sphinx, env, docname: str) -> None:
    getattr(env, "command_help_docs", set()).discard(docname)


def _merge(app: Sphinx, env, docnames, other) -> None:
    env.command_help_docs = getattr(env, "command_help_docs", set()) | getattr(
        other, "command_help_docs", set()
    )


def setup(app: Sphinx) -> dict:
    app.add_directive("command-help", CommandHelp)
    app.connect("env-get-outdated", _outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
