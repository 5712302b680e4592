"""Where a task store keeps the large payloads of its records: memory, then files.

A large task body or result (a :class:`~ipkernel.controller.store.HeldPayload`) arrives
in the controller's memory, or as a shared-memory segment it holds. Left there, a
controller that keeps many would grow without bound, and a restart would lose them. A
:class:`PayloadShelf` decides, as each one enters a record, whether it stays where it is
or moves to a file of its own (:meth:`HeldPayload.move_to`), mode 0600 in a directory
of mode 0700:

- :meth:`PayloadShelf.temporary` (no ``--db``): payloads stay in memory while their total
  is within a budget (``--task-memory``); past it, new ones go to files in a temporary
  directory, made when first needed and removed by :meth:`PayloadShelf.close`. Closing a
  payload deletes its file.
- :meth:`PayloadShelf.persistent` (``--db PATH``): every payload goes to a file in the
  directory beside the database, where it outlives the controller. The store, not the
  payload, deletes a file, and only once no committed row names it, so that a crash
  never leaves a row naming a file that is gone.

The controller reads nothing in these files; :mod:`ipkernel.wire.kept` writes and sends
them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from twisted.logger import Logger

from ipkernel.controller.store import HeldPayload

__all__ = ["DEFAULT_BUDGET", "PayloadShelf"]

#: The default memory budget of a temporary shelf (``--task-memory``): 256 MiB.
DEFAULT_BUDGET = 256 * 1024 * 1024

#: Opens the payload file at a path again (after a restart); ``OSError`` if it cannot.
Opener = Callable[[str], HeldPayload]


class PayloadShelf:
    """Large payloads of one store: in memory within ``budget`` bytes, else in files.

    Build one with :meth:`temporary` or :meth:`persistent`.
    """

    log = Logger()

    def __init__(
        self,
        directory: Path | None,
        budget: int,
        *,
        persistent: bool,
        opener: Opener | None = None,
    ) -> None:
        self._directory = directory
        self._budget = budget
        self.persistent = persistent
        self._opener = opener
        # Payloads placed and left in memory (closed or moved ones are pruned lazily).
        self._in_memory: list[HeldPayload] = []
        self._made: Path | None = None  # a temporary directory this shelf made

    @classmethod
    def temporary(cls, budget: int = DEFAULT_BUDGET) -> PayloadShelf:
        """Payloads past ``budget`` bytes in memory go to a temporary directory."""
        if budget < 0:
            raise ValueError(f"a memory budget cannot be negative ({budget})")
        return cls(None, budget, persistent=False)

    @classmethod
    def persistent(cls, directory: Path, opener: Opener) -> PayloadShelf:
        """Every payload goes to ``directory`` (made if missing, mode 0700); ``opener``
        opens a file again after a restart."""
        return cls(Path(directory), 0, persistent=True, opener=opener)

    @property
    def directory(self) -> Path | None:
        """Where the files go (``None`` until a temporary shelf first needs one)."""
        return self._directory

    def in_memory(self) -> int:
        """The bytes of the payloads placed here and still in memory."""
        self._in_memory = [p for p in self._in_memory if not p.closed and p.path is None]
        return sum(p.nbytes for p in self._in_memory)

    def place(self, held: HeldPayload, name: str) -> None:
        """``held`` enters a record: leave it in memory if the budget allows, else move it
        to the file ``name`` here. A payload that cannot be written stays in memory (and
        the failure is logged): the task is not lost for a full disk."""
        if held.closed or held.path is not None:
            return
        if held.nbytes + self.in_memory() <= self._budget:
            self._in_memory.append(held)
            return
        try:
            held.move_to(str(self._ensure_directory() / name), owns_file=not self.persistent)
        except OSError as exc:
            self.log.error(
                "cannot write a task payload of {n} bytes to {dir}: {exc}; it stays in memory",
                n=held.nbytes,
                dir=str(self._directory),
                exc=exc,
            )
            self._in_memory.append(held)

    def name_of(self, held: HeldPayload) -> str | None:
        """The name of ``held``'s file here, or ``None`` if it is not in a file here."""
        if held.path is None or self._directory is None:
            return None
        path = Path(held.path)
        return path.name if path.parent == self._directory else None

    def reopen(self, name: str) -> HeldPayload:
        """The payload in file ``name`` of a persistent shelf, after a restart.

        :raises OSError: if it is missing or unreadable.
        """
        if self._opener is None or self._directory is None:
            raise OSError(f"this shelf cannot open payload files ({name})")
        return self._opener(str(self._directory / name))

    def discard(self, name: str) -> None:
        """Delete file ``name`` (a persistent shelf's store calls this; no error if gone)."""
        if self._directory is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._directory / name)

    def names(self) -> set[str]:
        """The names of the files here now."""
        if self._directory is None or not self._directory.is_dir():
            return set()
        return {entry.name for entry in os.scandir(self._directory) if entry.is_file()}

    def close(self) -> None:
        """A temporary shelf removes its directory and every file in it; a persistent
        one leaves its files for the next run."""
        made, self._made = self._made, None
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
            self._directory = None

    def _ensure_directory(self) -> Path:
        if self._directory is None:
            self._made = self._directory = Path(tempfile.mkdtemp(prefix="ipcontroller-tasks-"))
            self.log.info(
                "task payloads past {budget} bytes in memory go to {dir}",
                budget=self._budget,
                dir=str(self._directory),
            )
        elif not self._directory.is_dir():
            self._directory.mkdir(mode=0o700, parents=True)
        return self._directory
