"""Sphinx directive ``autointerface``: document a ``zope.interface`` Interface.

autodoc skips Interfaces (they are not classes), so ``automodule`` shows the module
docstring and its plain members only. In reStructuredText (in a Markdown page, inside an
``{eval-rst}`` block)::

    .. autointerface:: ipkernel.interfaces.engine.IEngine

documents the Interface as a class: its docstring, then each attribute and method in the
order they are declared, with the signature the Interface records (no ``self``).
"""

from __future__ import annotations

import importlib
import inspect

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from zope.interface.interface import InterfaceClass, Method


class AutoInterface(SphinxDirective):
    """``.. autointerface:: package.module.IName``"""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        path = self.arguments[0]
        module_name, _, name = path.rpartition(".")
        try:
            iface = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as exc:
            raise self.error(f"autointerface: cannot import {path}: {exc}")
        if not isinstance(iface, InterfaceClass):
            raise self.error(f"autointerface: {path} is not a zope.interface Interface")
        return self.parse_text_to_nodes("\n".join(interface_rst(iface, module_name)))


def interface_rst(iface: InterfaceClass, module_name: str) -> list[str]:
    """reStructuredText lines documenting ``iface`` as a ``py:class`` of ``module_name``."""
    lines = [f".. py:class:: {iface.__name__}", f"   :module: {module_name}", ""]
    lines += _indented(iface.__doc__, "   ")
    for name, description in iface.namesAndDescriptions(all=False):
        if isinstance(description, Method):
            lines.append(f"   .. py:method:: {name}{description.getSignatureString()}")
        else:
            lines.append(f"   .. py:attribute:: {name}")
        lines.append("")
        lines += _indented(description.getDoc(), "      ")
    return lines


def _indented(doc: str | None, indent: str) -> list[str]:
    text = inspect.cleandoc(doc or "")
    return [f"{indent}{line}" if line else "" for line in text.splitlines()] + [""]


def setup(app: Sphinx) -> dict:
    app.add_directive("autointerface", AutoInterface)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
