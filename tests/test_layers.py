"""The layer rules ("Rules that hold" in the architecture notes), checked by reading imports.

Every module under ``ipkernel/`` is parsed with :mod:`ast`; nothing is imported or run.
An import counts wherever it is written (a function body too), except for import
circles, which only the imports that run when a module is loaded can close. Relative
imports are resolved, and ``from package import name`` where ``name`` is a submodule
counts as importing that submodule. A broken rule fails its own test, naming the file,
the line and the import.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.import_graph import Tree

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500
PICKLE = ("pickle", "cloudpickle", "dill")
#: Stands for every module of the standard library in a rule's ``only`` list.
STANDARD_LIBRARY = "<the standard library>"

#: The modules that put a program together, and so may take the global reactor.
COMPOSITION_ROOTS = (
    "ipkernel.tap",  # the controller's service, for twistd and ipcontroller
    "ipkernel.cli",  # the console scripts
    # The synchronous client starts the client program's reactor in a daemon thread of
    # its own: it is the composition root of every program that uses it.
    "ipkernel.client.blocking",
)


def under(name: str, *prefixes: str) -> bool:
    """Whether dotted ``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def in_package(*packages: str, but: tuple[str, ...] = ()) -> Callable[[str], bool]:
    return lambda module: under(module, *packages) and not under(module, *but)


def everything_but(*packages: str) -> Callable[[str], bool]:
    return lambda module: not under(module, *packages)


def scheduler_modules(module: str) -> bool:
    """``ipkernel/controller/scheduler*.py``, or a scheduler package."""
    return module.startswith("ipkernel.controller.scheduler")


@dataclass(frozen=True)
class Rule:
    """The modules ``modules`` selects never import a name under ``forbidden`` unless it is
    under ``allowed``; with ``only``, they import nothing but names under ``only``."""

    says: str
    modules: Callable[[str], bool]
    forbidden: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None

    def breaks(self, name: str) -> bool:
        if self.only is not None:
            stdlib = STANDARD_LIBRARY in self.only and name.split(".")[0] in sys.stdlib_module_names
            return not stdlib and not under(name, *self.only)
        return under(name, *self.forbidden) and not under(name, *self.allowed)


RULES = {
    "interfaces": Rule(
        "interfaces/ imports only zope.interface, the standard library, ipkernel.errors and "
        "other interface modules",
        in_package("ipkernel.interfaces"),
        only=("zope.interface", STANDARD_LIBRARY, "ipkernel.errors", "ipkernel.interfaces"),
    ),
    "controller": Rule(
        "controller/ reaches engines through IEngine only: never the wire, the adapters, the "
        "client, serialization, PB or pickle",
        in_package("ipkernel.controller"),
        forbidden=(
            "ipkernel.wire",
            "ipkernel.adapters",
            "ipkernel.client",
            "ipkernel.serialization",
            "twisted.spread",
            *PICKLE,
        ),
    ),
    "scheduler": Rule(
        "the scheduler is a pure state machine: it imports nothing of Twisted or ipkernel",
        scheduler_modules,
        forbidden=("twisted", "ipkernel"),
        allowed=("ipkernel.controller.scheduler",),
    ),
    "engine core": Rule(
        "the engine core (engine/ but its service) never imports the wire, the adapters, the "
        "controller or PB",
        in_package("ipkernel.engine", but=("ipkernel.engine.service",)),
        forbidden=("ipkernel.wire", "ipkernel.adapters", "ipkernel.controller", "twisted.spread"),
    ),
    "pickle": Rule(
        "only client/, engine/ and ipkernel.serialization import pickle or cloudpickle",
        everything_but("ipkernel.client", "ipkernel.engine", "ipkernel.serialization"),
        forbidden=PICKLE,
    ),
    "pb": Rule(
        "nothing in controller/ or interfaces/ imports twisted.spread",
        in_package("ipkernel.controller", "ipkernel.interfaces"),
        forbidden=("twisted.spread",),
    ),
    "wire": Rule(
        "wire/ never imports the layers above it: controller/, adapters/, client/, engine/ or "
        "serialization",
        in_package("ipkernel.wire"),
        forbidden=(
            "ipkernel.controller",
            "ipkernel.adapters",
            "ipkernel.client",
            "ipkernel.engine",
            "ipkernel.serialization",
        ),
    ),
    "adapters": Rule(
        "adapters/ move opaque bytes: never serialization, client/ or pickle",
        in_package("ipkernel.adapters"),
        forbidden=("ipkernel.serialization", "ipkernel.client", *PICKLE),
    ),
    "client": Rule(
        "client/ (and the joblib backend over it) never imports controller/ or adapters/",
        in_package("ipkernel.client", "ipkernel.joblib"),
        forbidden=("ipkernel.controller", "ipkernel.adapters"),
    ),
    "reactor": Rule(
        "only the composition roots take the global reactor",
        everything_but(*COMPOSITION_ROOTS),
        forbidden=("twisted.internet.reactor",),
    ),
}


class LayerRulesTests(SynchronousTestCase):
    """Each rule of the architecture holds for the tree this file sits in."""

    tree = Tree(ROOT)

    def assert_holds(self, rule: str, problems: list[str]) -> None:
        if problems:
            self.fail(f"rule broken: {rule}\n" + "\n".join(problems))

    def assert_rule(self, name: str) -> None:
        self.assert_holds(RULES[name].says, self.tree.broken(RULES[name]))

    def test_the_tree_is_read(self):
        """The checker sees the package: a known module and a known import of it."""
        self.assertIn("ipkernel.interfaces.engine", self.tree.paths)
        imports = self.tree.imports["ipkernel.interfaces"]
        names = {n for imp in imports for n in self.tree.imported(imp)}
        self.assertIn("ipkernel.interfaces.engine", names)

    def test_interfaces_import_only_contracts(self):
        """interfaces/ imports only zope.interface, the standard library, ipkernel.errors and
        other interface modules."""
        self.assert_rule("interfaces")

    def test_controller_reaches_engines_through_iengine_only(self):
        """controller/ never imports ipkernel.wire, ipkernel.adapters, ipkernel.client,
        ipkernel.serialization, twisted.spread, pickle or cloudpickle."""
        self.assert_rule("controller")

    def test_scheduler_is_pure(self):
        """The scheduler (controller/scheduler*) imports nothing of Twisted or ipkernel."""
        self.assert_rule("scheduler")

    def test_engine_core_never_names_the_wire(self):
        """engine/, except engine/service.py, never imports ipkernel.wire,
        ipkernel.adapters, ipkernel.controller or twisted.spread."""
        self.assert_rule("engine core")

    def test_only_clients_and_engines_pickle(self):
        """Only client/, engine/ and ipkernel/serialization.py import pickle or cloudpickle."""
        self.assert_rule("pickle")

    def test_core_never_names_pb(self):
        """Nothing in controller/ or interfaces/ imports twisted.spread."""
        self.assert_rule("pb")

    def test_wire_never_imports_the_layers_above(self):
        """wire/ never imports controller/, adapters/, client/, engine/ or serialization."""
        self.assert_rule("wire")

    def test_adapters_never_unpickle(self):
        """adapters/ never imports ipkernel.serialization, client/ or pickle."""
        self.assert_rule("adapters")

    def test_client_never_imports_the_controller_side(self):
        """client/ never imports controller/ or adapters/."""
        self.assert_rule("client")

    def test_only_composition_roots_take_the_global_reactor(self):
        """Only tap.py, cli/ and the synchronous client's reactor thread (client/blocking.py)
        import twisted.internet.reactor, in a function body or not."""
        self.assert_rule("reactor")

    def test_no_import_circles(self):
        """No ipkernel module imports, at load, a module that imports it back."""
        self.assert_holds("no import circles", self.tree.circles())

    def test_no_module_over_500_lines(self):
        """Every module under ipkernel/ has at most 500 lines."""
        self.assert_holds(f"no module over {MAX_LINES} lines", self.tree.too_long(MAX_LINES))


class CheckerTests(SynchronousTestCase):
    """The checker catches each kind of break, in a small tree made for the purpose."""

    def make_tree(self, files: dict[str, str]) -> Tree:
        root = Path(self.mktemp())
        for name, text in {"ipkernel/__init__.py": "", **files}.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return Tree(root)

    def test_controller_importing_the_wire(self):
        """A controller module importing ipkernel.wire.x is reported with file, line and
        import, whether it names the module, a name in it or the submodule of a package."""
        tree = self.make_tree(
            {
                "ipkernel/controller/__init__.py": "",
                "ipkernel/controller/bad.py": """\
                    import os
                    import ipkernel.wire.x
                    from ipkernel.wire.x import thing
                    from ipkernel.wire import x
                    from ipkernel.interfaces import engine
                """,
                "ipkernel/wire/__init__.py": "",
                "ipkernel/wire/x.py": "thing = 1\n",
            }
        )
        self.assertEqual(
            tree.broken(RULES["controller"]),
            [
                "ipkernel/controller/bad.py:2: import ipkernel.wire.x (ipkernel.wire.x)",
                "ipkernel/controller/bad.py:3: from ipkernel.wire.x import thing (ipkernel.wire.x)",
                "ipkernel/controller/bad.py:4: from ipkernel.wire import x (ipkernel.wire.x)",
            ],
        )

    def test_relative_imports_and_submodules(self):
        """Relative imports are resolved, and ``from package import submodule`` names the
        submodule: ``from .. import serialization`` in adapters/ is serialization."""
        tree = self.make_tree(
            {
                "ipkernel/serialization.py": "",
                "ipkernel/adapters/__init__.py": "from . import pb\n",
                "ipkernel/adapters/pb.py": "from .. import serialization\n",
            }
        )
        self.assertEqual(
            tree.broken(RULES["adapters"]),
            ["ipkernel/adapters/pb.py:1: from .. import serialization (ipkernel.serialization)"],
        )

    def test_reactor_taken_in_a_function_body(self):
        """Taking the global reactor inside a function is reported; a composition root may."""
        body = "def f():\n    from twisted.internet import reactor\n    return reactor\n"
        tree = self.make_tree({"ipkernel/core.py": body, "ipkernel/tap.py": body})
        self.assertEqual(
            tree.broken(RULES["reactor"]),
            ["ipkernel/core.py:2: from twisted.internet import reactor (twisted.internet.reactor)"],
        )

    def test_interfaces_allow_list(self):
        """interfaces/ may import the standard library and zope.interface, not Twisted."""
        tree = self.make_tree(
            {
                "ipkernel/interfaces/__init__.py": (
                    "import struct\nfrom zope.interface import Interface\n"
                    "from twisted.internet.defer import Deferred\n"
                ),
            }
        )
        self.assertEqual(
            tree.broken(RULES["interfaces"]),
            [
                "ipkernel/interfaces/__init__.py:3: from twisted.internet.defer import "
                "Deferred (twisted.internet.defer)"
            ],
        )

    def test_scheduler_may_import_only_itself(self):
        """A scheduler package may import its own modules, nothing else of ipkernel."""
        tree = self.make_tree(
            {
                "ipkernel/controller/__init__.py": "",
                "ipkernel/controller/scheduler/__init__.py": "from .state import State\n",
                "ipkernel/controller/scheduler/state.py": "from ipkernel.errors import E\n",
            }
        )
        self.assertEqual(
            tree.broken(RULES["scheduler"]),
            [
                "ipkernel/controller/scheduler/state.py:1: from ipkernel.errors import E "
                "(ipkernel.errors)"
            ],
        )

    def test_circle(self):
        """A circle of load-time imports is reported with the import that closes each link;
        an import inside a function does not make one."""
        tree = self.make_tree(
            {
                "ipkernel/a.py": "import ipkernel.b\n",
                "ipkernel/b.py": "x = 1\nfrom ipkernel import a\n",
                "ipkernel/c.py": "import ipkernel.a\nimport ipkernel.e\n",
                "ipkernel/d.py": "def f():\n    import ipkernel.c\n",
                "ipkernel/e.py": "import ipkernel.d\n",
            }
        )
        self.assertEqual(
            tree.circles(),
            [
                "import circle: ipkernel/a.py:1 imports ipkernel.b, "
                "ipkernel/b.py:2 imports ipkernel.a"
            ],
        )

    def test_long_module(self):
        """A 501-line module is reported with its length; a 500-line one is not."""
        tree = self.make_tree({"ipkernel/long.py": "x\n" * 501, "ipkernel/ok.py": "x\n" * 500})
        self.assertEqual(tree.too_long(MAX_LINES), ["ipkernel/long.py: 501 lines"])
