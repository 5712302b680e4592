"""Sphinx configuration of the ipkernel documentation.

Build it from the repository root with ``python -m sphinx -W docs docs/_build`` (every
warning is an error; nothing is fetched from the network). The pages are Markdown, read by
myst-parser, so the same files read well on a code host. ``docs/README-docs.md`` (not part
of the site) tells how the pages are written: the ``command-help`` directive that renders a
command's ``--help``, and the ``<!-- not-run -->`` marker for Python examples that the
documentation tests (``tests/test_docs_examples.py``) must not run.
"""

import importlib.util
import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# autodoc imports the package from this checkout, not from whatever is installed.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import ipkernel  # noqa: E402

project = "ipkernel"
copyright = "the ipkernel developers"
version = release = ipkernel.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "command_help",
    "zope_interfaces",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README-docs.md"]
root_doc = "index"

myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
# ipkernel.joblib can be documented without joblib, an optional dependency (its base
# classes are then stand-ins).
autodoc_mock_imports = [] if importlib.util.find_spec("joblib") else ["joblib"]

html_theme = "alabaster"
html_title = f"ipkernel {release}"
html_static_path: list[str] = []


# The synchronous clients' methods are made from the asynchronous ones, whose docs and
# signatures they copy (client/blocking.py): show them returning what the Deferred fires
# with, and taking ``block`` and ``progress`` where the forwarding method accepts them.
SYNC_CLIENTS = ("ipkernel.client.MultiEngineClient.", "ipkernel.client.TaskClient.")


def blocking_signature(app, what, name, obj, options, signature, return_annotation):
    if what != "method" or not name.startswith(SYNC_CLIENTS) or signature is None:
        return None
    if getattr(obj, "__wrapped__", None) is None:
        return None
    forwarding = inspect.getclosurevars(obj).nonlocals
    takes_block = forwarding.get("blockable") or forwarding.get("targeted")
    if takes_block and not re.search(r"\bblock\b", signature):
        signature = signature[:-1] + ", block: bool | None = None)"
    if forwarding.get("wait") and not re.search(r"\bprogress\b", signature):
        signature = signature[:-1] + ", progress: bool = True)"
    return signature, None


def setup(app):
    app.connect("autodoc-process-signature", blocking_signature)
