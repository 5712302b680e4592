"""A package's imports, read with :mod:`ast` without importing or running anything.

:class:`Tree` holds every import statement of every module under ``root/ipkernel``, with
relative imports resolved, and answers what the layer rules ask (``tests/test_layers.py``):
which imports break a rule, which modules are too long, which imports close a circle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Rule(Protocol):
    """What :meth:`Tree.broken` needs of a rule."""

    modules: Callable[[str], bool]

    def breaks(self, name: str) -> bool:
        """Whether importing the dotted ``name`` breaks the rule."""


@dataclass(frozen=True)
class Import:
    """One import statement of one module."""

    path: Path
    line: int
    statement: str
    #: ``from a import b, c``: ``a``; ``import a.b, c``: None.
    module: str | None
    #: ``import a.b, c``: ``a.b`` and ``c``; ``from a import b, c``: ``a.b`` and ``a.c``.
    names: tuple[str, ...]
    #: Runs when the module is loaded (not inside a function).
    at_load: bool


class Tree:
    """The modules of the ``ipkernel`` package under ``root``, read without importing them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = {self.module_name(p): p for p in sorted((root / "ipkernel").rglob("*.py"))}
        self.imports = {m: list(self._imports(m, p)) for m, p in self.paths.items()}

    def module_name(self, path: Path) -> str:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def where(self, path: Path, line: int | None = None) -> str:
        rel = path.relative_to(self.root).as_posix()
        return rel if line is None else f"{rel}:{line}"

    def _imports(self, module: str, path: Path) -> Iterator[Import]:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, in_function in _import_nodes(tree, False):
            if isinstance(node, ast.Import):
                base = None
                names = tuple(alias.name for alias in node.names)
            else:
                base = node.module or ""
                if node.level:
                    package = module.split(".")
                    if path.name != "__init__.py":
                        package = package[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                names = tuple(f"{base}.{alias.name}" for alias in node.names)
            yield Import(path, node.lineno, ast.unparse(node), base, names, not in_function)

    def imported(self, imp: Import) -> list[str]:
        """The dotted names ``imp`` imports, the most telling first: submodules it names,
        then the module it imports from, then the other names."""
        submodules = [n for n in imp.names if n in self.paths]
        others = [n for n in imp.names if n not in self.paths]
        return submodules + ([imp.module] if imp.module is not None else []) + others

    def broken(self, rule: Rule) -> list[str]:
        """Every import that breaks ``rule``: file, line, statement and the name at fault."""
        problems = []
        for module, imports in self.imports.items():
            if not rule.modules(module):
                continue
            for imp in imports:
                bad = next((n for n in self.imported(imp) if rule.breaks(n)), None)
                if bad is not None:
                    problems.append(f"{self.where(imp.path, imp.line)}: {imp.statement} ({bad})")
        return problems

    def too_long(self, limit: int) -> list[str]:
        """Every module of more than ``limit`` lines, with its length."""
        problems = []
        for path in self.paths.values():
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit:
                problems.append(f"{self.where(path)}: {n} lines")
        return problems

    def graph(self) -> dict[str, dict[str, int]]:
        """``{module: {module it imports at load: line}}`` among ipkernel's modules."""
        edges: dict[str, dict[str, int]] = defaultdict(dict)
        for module, imports in self.imports.items():
            for imp in imports:
                if not imp.at_load:
                    continue
                for target in self._targets(imp):
                    if target != module:
                        edges[module].setdefault(target, imp.line)
        return edges

    def _targets(self, imp: Import) -> Iterator[str]:
        """The ipkernel modules ``imp`` loads (besides the packages around them)."""
        for name in imp.names:
            if imp.module is not None and name not in self.paths:
                name = imp.module  # a name defined in the module imported from
            parts = name.split(".")
            while parts and ".".join(parts) not in self.paths:
                parts.pop()
            if parts:
                yield ".".join(parts)

    def circles(self) -> list[str]:
        """One line per import circle, naming each import that closes it."""
        edges = self.graph()
        problems = []
        for component in _strongly_connected(edges):
            if len(component) < 2:
                continue
            cycle = _cycle_through(min(component), edges, component)
            links = [
                f"{self.where(self.paths[a], edges[a][b])} imports {b}"
                for a, b in zip(cycle, cycle[1:], strict=False)
            ]
            problems.append("import circle: " + ", ".join(links))
        return problems


def _import_nodes(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
        yield from _import_nodes(child, inside)


def _strongly_connected(edges: dict[str, dict[str, int]]) -> list[set[str]]:
    """Tarjan's strongly connected components, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, successors = work[-1]
            w = next(successors, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                components.append(component)
    return components


def _cycle_through(start: str, edges: dict[str, dict[str, int]], within: set[str]) -> list[str]:
    """A shortest path ``start → … → start`` inside one strongly connected component."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges.get(v, ())):
                if w not in within:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")
