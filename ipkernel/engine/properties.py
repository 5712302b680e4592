"""An engine's own properties: a thread-safe mapping the task scheduler reads.

Properties describe an engine (``{'RAM': 2**34, 'gpu': True}``). They are set by
``ipengine --property``, by clients (``set_properties`` …, answered in the engine's reactor
thread) and by user code running in the engine's main thread::

    from ipkernel.engine import properties
    properties['ncores'] = 4

Because two threads write them, every operation takes a lock. Every change increases
:attr:`Properties.version` and then calls the listeners, so the engine service can tell
the controller, whose scheduler re-checks waiting tasks' dependencies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, overload

from twisted.logger import Logger

__all__ = ["Properties"]

_log = Logger()

Listener = Callable[[int], object]


def _key_list(keys: str | Iterable[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys)


def _missing_error(missing: list[str]) -> KeyError:
    names = ", ".join(repr(k) for k in missing)
    return KeyError(f"no such engine propert{'y' if len(missing) == 1 else 'ies'}: {names}")


class Properties(MutableMapping[str, Any]):
    """A thread-safe dict of an engine's properties, with a version and change listeners.

    It is an ordinary mutable mapping (``p['gpu'] = True``, ``p['RAM']``, ``in``, ``len``,
    iteration, ``del``, ``pop``, ``setdefault``) plus the methods the engine's property
    commands use: :meth:`get`, :meth:`update`, :meth:`has`, :meth:`delete`, :meth:`clear`.

    Keys are strings. Each call that changes something increases :attr:`version` by one
    (``update`` of several keys is one change; ``update({})``, ``clear()`` of an empty
    mapping and a failed ``delete`` change nothing) and then calls every listener with the
    new version, in the thread that made the change, outside the lock. When two threads
    change properties at once their listener calls may arrive out of order; the version
    tells which is newer.

    Note that :meth:`get` is not ``dict.get``: it returns a dict of several properties
    and raises :class:`KeyError` for missing ones.
    """

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        """Start with a copy of ``initial`` (if given) at version 0."""
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}
        if initial is not None:
            self._data.update(self._checked(initial))
        self._version = 0
        self._listeners: list[Listener] = []

    @staticmethod
    def _checked(d: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(d)
        for key in d:
            if not isinstance(key, str):
                raise TypeError(f"property names must be strings, not {key!r}")
        return d

    @property
    def version(self) -> int:
        """A counter that increases on every change (0 before the first)."""
        return self._version

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(version)`` after every change, in the thread that made it.

        An exception raised by a listener is logged and does not reach the code that
        changed the properties (user code must not fail because the engine's connection
        did).
        """
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        """Stop calling ``callback``; :class:`ValueError` if it was not added."""
        with self._lock:
            self._listeners.remove(callback)

    def _changed(self) -> int:
        # Called with the lock held; returns the version to announce once it is released.
        self._version += 1
        return self._version

    def _notify(self, version: int) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(version)
            except Exception:
                _log.failure("engine properties listener {listener!r} failed", listener=listener)

    # The engine's property commands.

    @overload
    def get(self, keys: None = None) -> dict[str, Any]: ...
    @overload
    def get(self, keys: str | Iterable[str]) -> dict[str, Any]: ...

    def get(self, keys: str | Iterable[str] | None = None) -> dict[str, Any]:  # type: ignore[override]
        """A new dict of all properties (``keys`` None) or of the named ones.

        ``keys`` is one name or an iterable of names; either way the result is a dict.

        :raises KeyError: naming every requested key that is not set.
        """
        with self._lock:
            if keys is None:
                return dict(self._data)
            names = _key_list(keys)
            missing = [k for k in names if k not in self._data]
            if missing:
                raise _missing_error(missing)
            return {k: self._data[k] for k in names}

    def update(self, d: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:  # type: ignore[override]
        """Set every property in ``d`` and ``kwargs`` at once, as one change.

        :raises TypeError: if a key is not a string (nothing is set).
        """
        new = self._checked(d) if d is not None else {}
        new.update(kwargs)
        if not new:
            return
        with self._lock:
            self._data.update(new)
            version = self._changed()
        self._notify(version)

    @overload
    def has(self, keys: str) -> bool: ...
    @overload
    def has(self, keys: Iterable[str]) -> list[bool]: ...

    def has(self, keys: str | Iterable[str]) -> bool | list[bool]:
        """Whether the property ``keys`` is set, or a list of answers for several keys."""
        with self._lock:
            if isinstance(keys, str):
                return keys in self._data
            return [k in self._data for k in keys]

    def delete(self, keys: str | Iterable[str]) -> None:
        """Delete one property or several, as one change.

        :raises KeyError: naming every key that is not set; then nothing is deleted.
        """
        names = _key_list(keys)
        with self._lock:
            missing = [k for k in names if k not in self._data]
            if missing:
                raise _missing_error(missing)
            if not names:
                return
            for k in names:
                self._data.pop(k, None)  # pop: a name may be listed twice
            version = self._changed()
        self._notify(version)

    def clear(self) -> None:
        """Delete every property, as one change (none if there were no properties)."""
        with self._lock:
            if not self._data:
                return
            self._data.clear()
            version = self._changed()
        self._notify(version)

    # The mapping protocol, for user code on the engine.

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"property names must be strings, not {key!r}")
        with self._lock:
            self._data[key] = value
            version = self._changed()
        self._notify(version)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._data[key]
            version = self._changed()
        self._notify(version)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __iter__(self) -> Iterator[str]:
        # A snapshot, so another thread's change cannot break the iteration.
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``self[key]`` if set; else set it to ``default`` (one change) and return that."""
        if not isinstance(key, str):
            raise TypeError(f"property names must be strings, not {key!r}")
        with self._lock:
            if key in self._data:
                return self._data[key]
            self._data[key] = default
            version = self._changed()
        self._notify(version)
        return default

    def __repr__(self) -> str:
        with self._lock:
            return f"Properties({self._data!r})"
