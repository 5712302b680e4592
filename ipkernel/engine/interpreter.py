"""The engine's interpreter: its namespace and the commands that act on it.

Plain Python, no Twisted and no network: the engine service decodes each command's
frames, calls one method here in the engine's main thread, and encodes what it returns
or raises. An :class:`Interpreter` is not thread-safe; the engine runs one command at a
time.
"""

from __future__ import annotations

import ast
import builtins
import io
import linecache
import sys
import traceback
import types
from collections.abc import Callable, Iterable
from typing import Any

from ipkernel.engine.properties import Properties

__all__ = ["Interpreter"]

# A compiled piece of a cell: (code object, whether it is a bare expression to echo).
_Block = tuple[types.CodeType, bool]


class _Capture(io.StringIO):
    """Collects what user code writes to ``sys.stdout`` or ``sys.stderr``.

    A plain StringIO reports ``encoding`` as None, which some libraries trip over.
    """

    encoding = "utf-8"  # type: ignore[assignment]


def _compile(code: str, filename: str) -> list[_Block]:
    """Compile a cell into blocks; raise (SyntaxError …) before anything runs.

    Bare expression statements become ``eval`` blocks so their value can be echoed;
    consecutive other statements share one ``exec`` block, which keeps the common case
    (no expression) to a single code object.
    """
    tree = compile(code, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    blocks: list[_Block] = []
    run: list[ast.stmt] = []

    def flush() -> None:
        if run:
            module = ast.Module(body=list(run), type_ignores=[])
            blocks.append((compile(module, filename, "exec", dont_inherit=True), False))
            run.clear()

    for stmt in tree.body:
        if isinstance(stmt, ast.Expr):
            flush()
            expr = ast.Expression(body=stmt.value)
            blocks.append((compile(expr, filename, "eval", dont_inherit=True), True))
        else:
            run.append(stmt)
    flush()
    return blocks


class _CompiledCells:
    """Cells compiled before, by source: a cell run again (a loop sending the same
    code) skips the parse and compile that are most of a small cell's time.

    The blocks are kept as compiled under their first file name and renamed for each
    run (``code.replace``, into nested code objects too), so tracebacks and ``linecache``
    name each run's own ``In [n]``. Only cells that compiled are kept; at most
    :attr:`SIZE` of them, the oldest dropped first.
    """

    SIZE = 256
    #: Longer cells are compiled every time: they are rarely sent twice.
    MAX_SOURCE = 4096

    def __init__(self) -> None:
        self._cells: dict[str, tuple[str, list[_Block]]] = {}

    def blocks(self, code: str, filename: str) -> list[_Block]:
        """The cell's blocks under ``filename``; raises what compiling raises."""
        kept = self._cells.get(code)
        if kept is None:
            blocks = _compile(code, filename)
            if len(code) <= self.MAX_SOURCE:
                if len(self._cells) >= self.SIZE:
                    del self._cells[next(iter(self._cells))]
                self._cells[code] = (filename, blocks)
            return blocks
        first, blocks = kept
        return [(_renamed(block, first, filename), echo) for block, echo in blocks]


def _renamed(code: types.CodeType, old: str, new: str) -> types.CodeType:
    """``code`` and the code objects inside it, with file name ``old`` now ``new``."""
    consts = code.co_consts
    if any(isinstance(c, types.CodeType) for c in consts):
        consts = tuple(
            _renamed(c, old, new) if isinstance(c, types.CodeType) and c.co_filename == old else c
            for c in consts
        )
    return code.replace(co_filename=new, co_consts=consts)


def _user_traceback(exc: BaseException) -> str:
    """The traceback text of ``exc`` without this module's frames (they mean nothing to
    the user, whose code shows as ``<engine N, In [n]>``)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


class Interpreter:
    """A ``__main__``-like namespace and the engine commands that act on it.

    :param engine_id: the engine's id, bound to ``id`` in the namespace; set
        :attr:`engine_id` again once the controller has assigned one.
    :param mpi: the ``mpi4py.MPI`` module when the engine runs under MPI, else None; bound
        to ``mpi`` in the namespace.
    :param properties: the engine's properties; by default the process-wide
        ``ipkernel.engine.properties`` that user code imports.

    The namespace is the ``__dict__`` of a module named ``__main__``: functions and classes
    that user code defines have ``__module__ == '__main__'``, so cloudpickle sends them to
    clients by value. While user code runs (:meth:`execute`, :meth:`apply`) that module is
    ``sys.modules['__main__']``, so ``import __main__`` and pickling by reference from user
    code find the user's names; the previous module is put back afterwards.
    """

    #: How many of the most recent execution results :meth:`get_result` can return.
    MAX_RESULTS = 1000

    def __init__(
        self, engine_id: int = 0, mpi: Any = None, properties: Properties | None = None
    ) -> None:
        if properties is None:
            from ipkernel.engine import properties as process_properties

            properties = process_properties
        self.properties: Properties = properties
        self.mpi = mpi
        self._engine_id = engine_id
        self.module = types.ModuleType("__main__")
        #: The user's namespace (the ``__dict__`` of :attr:`module`).
        self.namespace: dict[str, Any] = self.module.__dict__
        self._seed()
        self._number = 0
        self._compiled = _CompiledCells()
        self._results: dict[int, dict[str, Any]] = {}
        self._filenames: dict[int, str] = {}  # execution number -> its linecache name

    # Identity

    @property
    def engine_id(self) -> int:
        """The engine's id; setting it re-binds ``id`` in the namespace."""
        return self._engine_id

    @engine_id.setter
    def engine_id(self, value: int) -> None:
        self._engine_id = value
        self.namespace["id"] = value

    def _seed(self) -> None:
        self.namespace.update(
            __name__="__main__",
            __doc__=None,
            __package__=None,
            __loader__=None,
            __spec__=None,
            __builtins__=builtins,
            id=self._engine_id,
            mpi=self.mpi,
        )

    # Running code

    def execute(self, code: str) -> dict[str, Any]:
        """Run ``code`` (any number of statements) in the namespace; return its result dict.

        The result is ``{'id': engine_id, 'number': n, 'input': {'raw': code,
        'translated': code}, 'stdout': str, 'stderr': str}``. ``number`` counts calls to
        ``execute`` (1, 2, 3, …), failed ones included.

        - The whole cell is compiled first: a ``SyntaxError`` anywhere runs nothing.
        - Statements run in order; the first one that raises stops the cell, and the ones
          before it keep their effect.
        - Each *top-level* bare expression statement is echoed like at the interactive
          prompt: ``repr(value)`` and a newline go to stdout, nothing for None. Expressions
          inside loops or functions are not echoed, and ``_`` is not set, so the namespace
          holds only what the code assigns.
        - Whatever user code writes to ``sys.stdout`` and ``sys.stderr`` during the call is
          captured into the result (writes straight to file descriptors, by C code or
          subprocesses, are not). Another thread's writes during the call are captured too.

        On failure the result dict, with the output captured so far and an extra key
        ``'error'`` holding the traceback text, is stored for :meth:`get_result`; then the
        exception that user code raised (or the ``SyntaxError``) is re-raised, the same
        object, with that text as its ``remote_traceback`` attribute. The text shows the
        user's lines under the file name ``<engine ID, In [n]>`` and none of the engine's
        own frames, so the engine service can pass the exception to
        :func:`ipkernel.serialization.serialize_failure` as it is. ``KeyboardInterrupt``
        and ``SystemExit`` are handled the same way; the caller decides what they mean.

        :raises TypeError: if ``code`` is not a string (this does not count as a run).
        """
        if not isinstance(code, str):
            raise TypeError(f"code to execute must be a string, not {type(code).__name__}")
        self._number = number = self._number + 1
        filename = f"<engine {self._engine_id}, In [{number}]>"
        # Registered so that tracebacks (now or from functions defined here, later) show
        # the user's source lines; mtime None keeps linecache.checkcache from dropping it.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        result: dict[str, Any] = {
            "id": self._engine_id,
            "number": number,
            "input": {"raw": code, "translated": code},
            "stdout": "",
            "stderr": "",
        }
        self._store(number, result, filename)
        try:
            blocks = self._compiled.blocks(code, filename)
        except BaseException as exc:
            # No frame of the user's is involved: only the error lines are useful.
            self._fail(result, exc, "".join(traceback.format_exception_only(type(exc), exc)))
            raise
        out, err = _Capture(), _Capture()
        namespace = self.namespace
        modules = sys.modules
        saved = sys.stdout, sys.stderr, modules.get("__main__")
        sys.stdout, sys.stderr = out, err
        modules["__main__"] = self.module
        try:
            for block, echo in blocks:
                if echo:
                    value = eval(block, namespace)
                    if value is not None:
                        # sys.stdout, not `out`: the cell may have redirected it.
                        sys.stdout.write(repr(value) + "\n")
                else:
                    exec(block, namespace)
        except BaseException as exc:
            self._restore(saved)
            result["stdout"], result["stderr"] = out.getvalue(), err.getvalue()
            self._fail(result, exc, _user_traceback(exc))
            raise
        self._restore(saved)
        result["stdout"], result["stderr"] = out.getvalue(), err.getvalue()
        return _copy_result(result)

    @staticmethod
    def _restore(saved: tuple[Any, Any, Any]) -> None:
        sys.stdout, sys.stderr, main = saved
        if main is None:
            sys.modules.pop("__main__", None)
        else:
            sys.modules["__main__"] = main

    @staticmethod
    def _fail(result: dict[str, Any], exc: BaseException, text: str) -> None:
        result["error"] = text
        # Every exception instance has a __dict__, so this cannot fail.
        exc.remote_traceback = text  # type: ignore[attr-defined]

    def _store(self, number: int, result: dict[str, Any], filename: str) -> None:
        self._results[number] = result
        self._filenames[number] = filename
        old = number - self.MAX_RESULTS
        if old in self._results:
            del self._results[old]
            # The cell's source goes with its result, so memory stays bounded.
            linecache.cache.pop(self._filenames.pop(old), None)

    def get_result(self, i: int | None = None) -> dict[str, Any]:
        """The result dict of execution number ``i`` (the last one when None).

        Failed executions have a result too (with its ``'error'`` key). Only the
        :attr:`MAX_RESULTS` most recent results are kept.

        :raises IndexError: if nothing has been executed yet, or ``i`` is not the number
            of a kept execution.
        """
        if i is None:
            if not self._number:
                raise IndexError(f"engine {self._engine_id} has not executed anything yet")
            i = self._number
        try:
            return _copy_result(self._results[i])
        except (KeyError, TypeError):
            if not self._results:
                known = "none has run yet"
            else:
                known = f"results {min(self._results)} to {max(self._results)} are kept"
            raise IndexError(
                f"engine {self._engine_id} has no result for execution {i!r}: {known}"
            ) from None

    def apply(self, func: Callable[[Any], Any], seq: Iterable[Any]) -> list[Any]:
        """``[func(x) for x in seq]``, with the user's ``__main__`` in place.

        Used by ``map``; it binds no names in the namespace. Whatever ``func`` raises
        propagates unchanged.
        """
        saved = sys.stdout, sys.stderr, sys.modules.get("__main__")
        sys.modules["__main__"] = self.module
        try:
            return [func(x) for x in seq]
        finally:
            self._restore(saved)

    # Moving objects

    def push(self, ns: dict[str, Any]) -> list[Any]:
        """Bind every name in ``ns`` in the namespace.

        Returns the values those names had (unbound names give nothing), so that the
        caller chooses when they are freed: freeing a large value takes time.

        :raises TypeError: if ``ns`` is not a dict with string keys (nothing is bound).
        """
        ns = _checked_namespace(ns)
        namespace = self.namespace
        replaced = [namespace[key] for key in ns if key in namespace]
        namespace.update(ns)
        return replaced

    def pull(self, keys: str | list[str] | tuple[str, ...]) -> Any:
        """The value of one name, or a list of the values of several names, in order.

        :raises NameError: naming the first name that is not defined (as a Python
            ``NameError`` would), with the name in its ``name`` attribute.
        :raises TypeError: if ``keys`` is not a string or a list or tuple of strings.
        """
        if isinstance(keys, str):
            return self._lookup(keys)
        if isinstance(keys, (list, tuple)):
            for key in keys:  # all names checked before any lookup
                if not isinstance(key, str):
                    raise TypeError(f"names to pull must be strings, not {key!r}")
            return [self._lookup(key) for key in keys]
        raise TypeError(f"keys must be a string or a list of strings, not {type(keys).__name__}")

    def _lookup(self, key: str) -> Any:
        try:
            return self.namespace[key]
        except KeyError:
            raise NameError(
                f"name {key!r} is not defined on engine {self._engine_id}", name=key
            ) from None

    def push_function(self, ns: dict[str, Any]) -> None:
        """Like :meth:`push`, for callables (functions arrive with their own globals).

        :raises TypeError: naming the first value that is not callable (nothing is bound).
        """
        ns = _checked_namespace(ns)
        for key, value in ns.items():
            if not callable(value):
                raise TypeError(
                    f"push_function: {key!r} is a {type(value).__name__}, not a function; "
                    "use push() for other objects"
                )
        self.namespace.update(ns)

    def pull_function(self, keys: str | list[str] | tuple[str, ...]) -> Any:
        """Like :meth:`pull`, for callables.

        :raises NameError: as :meth:`pull`.
        :raises TypeError: naming the first value that is not callable.
        """
        values = self.pull(keys)
        if isinstance(keys, str):
            pairs = [(keys, values)]
        else:
            pairs = list(zip(keys, values, strict=True))
        for key, value in pairs:
            if not callable(value):
                raise TypeError(
                    f"pull_function: {key!r} is a {type(value).__name__}, not a function; "
                    "use pull() for other objects"
                )
        return values

    def reset(self) -> None:
        """Empty the namespace, then bind ``id`` and ``mpi`` again.

        The namespace dict and module stay the same objects; execution numbers and
        stored results are kept.
        """
        self.namespace.clear()
        self._seed()

    def keys(self) -> list[str]:
        """The names in the namespace, in binding order, except dunder names.

        ``id`` and ``mpi`` are included, so a fresh engine gives ``['id', 'mpi']``.
        """
        return [k for k in self.namespace if not (k.startswith("__") and k.endswith("__"))]


def _copy_result(result: dict[str, Any]) -> dict[str, Any]:
    # Callers may change what they get; the stored result must not change with it.
    copy = dict(result)
    copy["input"] = dict(result["input"])
    return copy


def _checked_namespace(ns: object) -> dict[str, Any]:
    if not isinstance(ns, dict):
        raise TypeError(f"expected a dict of names to values, not {type(ns).__name__}")
    for key in ns:
        if not isinstance(key, str):
            raise TypeError(f"names must be strings, not {key!r}")
    return ns
