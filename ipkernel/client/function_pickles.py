"""Task bodies pickled cheaply: functions pickled once for many tasks, plain bodies.

A ``MapTask``'s function defined in ``__main__`` is pickled by value (its code), which
costs far more than running a small function. A client that sends the same function in
many tasks pickles it once: :meth:`FunctionPickles.wrap` gives an object that pickles as
a call of :func:`ipkernel.serialization.load_function` on those bytes, and an engine
given the same bytes again reuses the function it made from them.

Only a *stateless* function is reused this way: a plain function without a closure,
``__dict__`` entries or annotations, whose defaults are constants, whose code assigns no
global name (nor calls ``globals()``), and whose global names (as far as it has any) are
modules. Its pickle then depends on nothing that can change without changing what the
cache compares: its code, names, defaults, the modules it names and the set of imported
modules (``sys.modules``, for the submodules that cloudpickle makes the engine import).
Any other function is pickled with its task, as before.

A body made only of built-in constants (in lists, tuples and dicts with string keys, at
most two deep inside the body) and such pickled functions needs none of cloudpickle's
by-value pickling: :func:`dump_plain` pickles it with the standard pickler, which gives
the same objects back, several times faster.
"""

from __future__ import annotations

import dis
import pickle
import sys
import types
import weakref
from typing import Any

import cloudpickle

from ipkernel.frames import KIND_OBJECT, Serialized
from ipkernel.serialization import load_function

__all__ = ["FunctionPickles", "dump_plain"]

_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes)
_GLOBAL_STORES = frozenset(dis.opmap[name] for name in ("STORE_GLOBAL", "DELETE_GLOBAL"))
#: How many code objects and functions the caches below hold (then they start afresh).
MEMORY = 256
#: id(code object) -> (the code, the names it or code nested in it may read as globals,
#: or None when it assigns a global name). By id: hashing a code object hashes its parts.
_CODE_NAMES: dict[int, tuple[types.CodeType, tuple[str, ...] | None]] = {}


def _global_names(code: types.CodeType) -> tuple[str, ...] | None:
    entry = _CODE_NAMES.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    names: tuple[str, ...] | None = tuple(code.co_names)
    if "globals" in names or any(op in _GLOBAL_STORES for op in code.co_code[::2]):
        names = None  # it may assign globals, through globals() if not by name
    for const in code.co_consts:
        if names is not None and isinstance(const, types.CodeType):
            nested = _global_names(const)
            names = None if nested is None else names + nested
    if len(_CODE_NAMES) >= MEMORY:
        _CODE_NAMES.clear()
    _CODE_NAMES[id(code)] = (code, names)
    return names


def _constants(values: tuple | None) -> bool:
    return values is None or all(type(v) in _CONSTANT_TYPES for v in values)


class _Pickled:
    """A function already pickled: pickles as ``load_function(data)``."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple:
        return (load_function, (self.data,))


class FunctionPickles:
    """The client's cache: each stateless function's pickle, and what it depended on."""

    def __init__(self) -> None:
        # id(function) -> (weak reference to it, what its pickle depended on, the pickle)
        self._pickles: dict[int, tuple[weakref.ref, tuple, _Pickled]] = {}

    def wrap(self, function: Any) -> Any:
        """``function`` itself, or for a stateless function (see the module docstring)
        an object that pickles as it, pickled once for as long as nothing it depends on
        changes."""
        key = self._key(function)
        if key is None:
            return function
        cached = self._pickles.get(id(function))
        if cached is None or cached[0]() is not function or cached[1] != key:
            try:
                data = cloudpickle.dumps(function, protocol=5)
            except Exception:
                return function  # the task's own pickling reports it, naming the function
            if len(self._pickles) >= MEMORY:
                self._pickles.clear()
            cached = (weakref.ref(function), key, _Pickled(data))
            self._pickles[id(function)] = cached
        return cached[2]

    @staticmethod
    def _key(function: Any) -> tuple | None:
        """What the function's pickle depends on, or None if it is not stateless."""
        if type(function) is not types.FunctionType or function.__closure__ is not None:
            return None
        if function.__dict__ or function.__annotations__:
            return None
        defaults, kwdefaults = function.__defaults__, function.__kwdefaults__
        kwitems = None if kwdefaults is None else tuple(kwdefaults.items())
        if not _constants(defaults) or not (
            kwitems is None or _constants(tuple(v for _, v in kwitems))
        ):
            return None
        code = function.__code__
        names = _global_names(code)
        if names is None:
            return None
        namespace = function.__globals__
        modules = []
        for name in names:
            value = namespace.get(name, namespace)
            if value is namespace:
                continue
            if type(value) is not types.ModuleType:
                return None
            modules.append((name, value))
        return (
            code,
            defaults,
            kwitems,
            tuple(modules),
            len(sys.modules),
            function.__name__,
            function.__qualname__,
            function.__module__,
            function.__doc__,
        )


_PLAIN_TYPES = frozenset((*_CONSTANT_TYPES, _Pickled))


def _plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return True
    if not depth:
        return False
    if kind is dict:
        for key in value:
            if type(key) is not str:
                return False
        value = value.values()
    elif kind is not tuple and kind is not list:
        return False
    for item in value:
        if type(item) not in _PLAIN_TYPES and not _plain(item, depth - 1):
            return False
    return True


def dump_plain(body: dict) -> Serialized | None:
    """``body`` pickled by the standard pickler if it is plain (see the module
    docstring), else None (cloudpickle it)."""
    if not _plain(body, 3):
        return None
    return Serialized(KIND_OBJECT, pickle.dumps(body, protocol=5), [])
