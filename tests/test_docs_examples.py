"""The documentation's Python examples pass against a real cluster.

Each page in :data:`PAGES` gets a controller and four engines of its own (``Cluster``:
real ``ipcontroller`` and ``ipengine`` processes in a temporary ``IPKERNEL_DIR``), and its
``python`` blocks run in a child Python, in page order and in one namespace, with the
synchronous client reading its key file from that ``$IPKERNEL_DIR``. ``>>>`` sessions
must print what the page shows. How blocks are found, checked and skipped is in
``tests/docs_examples.py``; the checker itself is tested here on small fake pages.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.cluster import Cluster
from tests.docs_examples import extract, session_source

ROOT = Path(__file__).resolve().parent.parent

#: Every page whose Python examples run, as paths from the repository root.
PAGES = (
    "README.md",
    "docs/index.md",
    "docs/guide.md",
    "docs/multiengine.md",
    "docs/task.md",
    "docs/notebook.md",
    "docs/security.md",
)

PAGE_TIMEOUT = 240.0


def run_examples(path: Path, shown_as: str, env: dict | None = None, cwd: Path | None = None):
    """Run the examples of the page at ``path`` in a child Python; return the result."""
    return subprocess.run(
        [sys.executable, "-m", "tests.docs_examples", str(path), shown_as],
        env=env,
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
    )


class ExtractTests(SynchronousTestCase):
    """Finding a page's examples."""

    PAGE = textwrap.dedent(
        """\
        # A page

        ```python
        a = 1
        ```

        <!-- not-run -->
        ```python
        mec = client.MultiEngineClient('/path/to/key')
        ```

        ```sh
        ipcluster -n 4
        ```

        ````markdown
        ```python
        never = 'found: inside another block'
        ```
        ````

        - a list item:

          ```python
          >>> a + 1
          2
          ```
        """
    )

    def test_python_blocks_in_page_order_with_their_lines(self):
        """Only ``python`` blocks are examples, in order, each with its first line's number;
        blocks nested in another fence and other languages are not examples, and an
        indented block (in a list) loses its indentation."""
        examples = extract(self.PAGE, "page.md")
        self.assertEqual([e.line for e in examples], [4, 9, 25])
        self.assertEqual(examples[0].source, "a = 1\n")
        self.assertEqual(examples[2].source, ">>> a + 1\n2\n")
        self.assertEqual([e.page for e in examples], ["page.md"] * 3)

    def test_not_run_marker_skips_only_the_next_block(self):
        """``<!-- not-run -->`` right before a fence marks that block, and no other."""
        examples = extract(self.PAGE, "page.md")
        self.assertEqual([e.run for e in examples], [True, False, True])

    def test_sessions_and_scripts(self):
        """A block starting with ``>>>`` is a session (checked output), others scripts."""
        examples = extract(self.PAGE, "page.md")
        self.assertEqual([e.is_session for e in examples], [False, False, True])

    def test_blank_lines_inside_an_output_stay_in_it(self):
        """A blank line followed by more output becomes ``<BLANKLINE>``; one before the
        next prompt or at the end ends the output; the line count never changes."""
        source = ">>> show()\nfirst\n\nsecond\n\n>>> x = 1\n>>> print(x)\n1\n\n"
        converted = session_source(source)
        self.assertEqual(
            converted, ">>> show()\nfirst\n<BLANKLINE>\nsecond\n\n>>> x = 1\n>>> print(x)\n1\n\n"
        )
        self.assertEqual(len(converted.splitlines()), len(source.splitlines()))


class CheckerTests(SynchronousTestCase):
    """The checker fails on a broken example, naming the page, the line and the error."""

    def run_fake_page(self, text: str):
        path = Path(self.mktemp()).absolute()
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return run_examples(path, "fake.md")

    def test_a_good_page_passes_sharing_one_namespace(self):
        """Blocks run in page order in one namespace; not-run blocks are counted apart."""
        result = self.run_fake_page(
            """\
            ```python
            a = 20
            ```

            <!-- not-run -->
            ```python
            raise SystemExit('never run')
            ```

            ```python
            >>> a + 22
            42
            >>> print('one\\n\\ntwo')
            one

            two
            ```
            """
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("OK 2 run, 1 not run", result.stdout)

    def test_a_script_that_raises_fails_at_its_line(self):
        """An exception in a script block fails the page, naming the line that raised."""
        result = self.run_fake_page(
            """\
            Some text.

            ```python
            x = 1
            assert x == 2, 'x is not 2'
            ```

            ```python
            after = 'never reached'
            ```
            """
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("EXAMPLE FAILED: fake.md, line 5 (block at line 4)", result.stdout)
        self.assertIn("AssertionError: x is not 2", result.stdout)

    def test_a_syntax_error_fails_at_its_line(self):
        """A block that is not valid Python fails, naming the line of the error."""
        result = self.run_fake_page(
            """\
            ```python
            print 'python 2'
            ```
            """
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("fake.md, line 2 (block at line 2)", result.stdout)
        self.assertIn("SyntaxError", result.stdout)

    def test_a_session_whose_output_differs_fails(self):
        """A ``>>>`` statement that prints something else than shown fails the page."""
        result = self.run_fake_page(
            """\
            ```python
            >>> 1 + 1
            2
            >>> 2 + 2
            5
            ```
            """
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("fake.md, line 4 (block at line 2)", result.stdout)
        self.assertIn("Expected:\n    5\nGot:\n    4", result.stdout)


class PagesTests(TestCase):
    """Each documented page's examples, against a controller and four engines."""

    timeout = PAGE_TIMEOUT + 60

    @inlineCallbacks
    def check_page(self, page: str):
        cluster = Cluster(self, n=4)
        yield cluster.start()
        result = run_examples(ROOT / page, page, env=cluster.env, cwd=cluster.dir)
        if result.returncode != 0:
            self.fail(f"{page}: an example failed\n{result.stdout}\n{result.stderr}")
        self.assertIn("OK ", result.stdout)

    def test_readme(self):
        """The README's "Use it" example runs."""
        return self.check_page("README.md")

    def test_index(self):
        """The front page's short tour runs."""
        return self.check_page("docs/index.md")

    def test_guide(self):
        """The user guide's examples pass."""
        return self.check_page("docs/guide.md")

    def test_multiengine(self):
        """The MultiEngine chapter's examples pass, outputs included."""
        return self.check_page("docs/multiengine.md")

    def test_task(self):
        """The Task chapter's examples pass, outputs included."""
        return self.check_page("docs/task.md")

    def test_notebook(self):
        """The notebook chapter's script examples (executors, joblib, asyncio, progress,
        interrupting) pass."""
        return self.check_page("docs/notebook.md")

    def test_security(self):
        """The security page's examples (key files, modes, refused keys) pass."""
        return self.check_page("docs/security.md")


class CoverageTests(SynchronousTestCase):
    """No page's examples are forgotten."""

    def test_every_page_with_runnable_examples_is_run(self):
        """Every Markdown page with a Python block that is not marked not-run is in PAGES."""
        pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        with_examples = {
            str(path.relative_to(ROOT))
            for path in pages
            if any(e.run for e in extract(path.read_text(encoding="utf-8"), str(path)))
        }
        self.assertEqual(with_examples - set(PAGES), set())
        self.assertEqual(set(PAGES) - with_examples, set())
