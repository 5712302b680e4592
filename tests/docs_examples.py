"""The Python examples of the documentation pages: found, and run in page order.

A page's examples are its fenced code blocks whose language is ``python``, except those
marked as not run: a block whose nearest non-blank line before the opening fence is the
HTML comment ``<!-- not-run -->`` (invisible in the rendered page, and on a code host).

A block whose first line starts with ``>>>`` is an interactive session, checked as a
doctest (with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``): each output must match what the
statement prints. Blank lines inside an output need no ``<BLANKLINE>``: an output ends at
the next ``>>>`` prompt or at the end of the block. Any other block is run as a script.
All the blocks of one page share one namespace, in page order, as a reader typing them
would.

``python -m tests.docs_examples PAGE`` runs one page's examples (the caller provides the
cluster, through ``$IPKERNEL_DIR``) and exits 1 at the first failure, having printed the
page, the line and the error.
"""

from __future__ import annotations

import doctest
import io
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

NOT_RUN = "<!-- not-run -->"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass
class Example:
    """One ``python`` block of a page; ``line`` is the page line of its first code line."""

    page: str
    line: int
    source: str
    run: bool = True

    @property
    def is_session(self) -> bool:
        return self.source.lstrip().startswith(">>>")


def extract(text: str, page: str) -> list[Example]:
    """Every fenced ``python`` block of ``text``, in page order, marked run or not run."""
    lines = text.splitlines()
    examples = []
    previous = ""  # the last non-blank line outside a block
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        language = (opening.group("info").split() or [""])[0]
        body = []
        i += 1
        while i < len(lines):
            closing = lines[i].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                break
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        if language == "python":
            start = i - len(body) + 1  # 1-based page line of the block's first line
            examples.append(Example(page, start, "\n".join(body) + "\n", previous != NOT_RUN))
        previous = ""
        i += 1
    return examples


def session_source(source: str) -> str:
    """A session block as doctest reads it: blank lines inside outputs kept as outputs.

    Line numbers do not change: each such blank line becomes ``<BLANKLINE>``.
    """
    lines = source.splitlines()
    out = []
    in_output = False
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(">>>") or (stripped.startswith("...") and not in_output):
            in_output = False
            out.append(line)
            continue
        if not stripped:
            rest = next((later.strip() for later in lines[n + 1 :] if later.strip()), None)
            if in_output and rest is not None and not rest.startswith(">>>"):
                out.append(line[: len(line) - len(line.lstrip())] + "<BLANKLINE>")
                continue
            in_output = False
            out.append(line)
            continue
        in_output = True
        out.append(line)
    return "\n".join(out) + "\n"


class ExampleFailed(Exception):
    """An example failed; the message names the page and line, then the error."""


def run_example(example: Example, namespace: dict) -> None:
    """Run one example in ``namespace``; raise :class:`ExampleFailed` if it fails."""
    if example.is_session:
        _run_session(example, namespace)
    else:
        _run_script(example, namespace)


def _run_script(example: Example, namespace: dict) -> None:
    # Padded so that tracebacks give the page's own line numbers.
    code = "\n" * (example.line - 1) + example.source
    try:
        exec(compile(code, example.page, "exec"), namespace)
    except BaseException as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        lines = [f.lineno for f in frames if f.filename == example.page]
        if isinstance(exc, SyntaxError) and exc.filename == example.page:
            lines.append(exc.lineno)
        where = lines[-1] if lines else example.line
        detail = "".join(traceback.format_exception(exc))
        raise ExampleFailed(
            f"{example.page}, line {where} (block at line {example.line}): "
            f"{type(exc).__name__}: {exc}\n{detail}"
        ) from None


def _run_session(example: Example, namespace: dict) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        session_source(example.source), namespace, example.page, example.page, example.line - 1
    )
    test.globs = namespace  # DocTest copies its globals; the page shares one namespace
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test, out=report.write, clear_globs=False)
    if runner.failures:
        first = re.search(r"line (\d+)", report.getvalue())
        where = first.group(1) if first else example.line
        raise ExampleFailed(
            f"{example.page}, line {where} (block at line {example.line}): "
            f"the output differs or the statement raised\n{report.getvalue()}"
        )


def run_page(path: Path, shown_as: str | None = None) -> int:
    """Run the examples of the page at ``path`` in one namespace; return an exit status.

    Prints ``OK <n> run, <m> not run`` on success, the failure (page, line, error) on
    the first failure, which stops the page.
    """
    page = shown_as or str(path)
    examples = extract(path.read_text(encoding="utf-8"), page)
    namespace: dict = {"__name__": "__main__"}
    run = [e for e in examples if e.run]
    for example in run:
        try:
            run_example(example, namespace)
        except ExampleFailed as failure:
            print(f"EXAMPLE FAILED: {failure}", flush=True)
            return 1
    print(f"OK {len(run)} run, {len(examples) - len(run)} not run", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_page(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
