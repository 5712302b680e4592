"""Where a blocking client finds its key file: a path, a key's URL, or the default place."""

from __future__ import annotations

from pathlib import Path

from ipkernel import paths
from ipkernel.security import KeyFile, read_key_file

__all__ = ["find_key_file"]


def find_key_file(furl_or_file: str | Path | None, name: str) -> tuple[KeyFile, str]:
    """Read a key file: a path, a ``pb+tls://`` URL, or ``None`` for the file ``name`` in
    the security directory. Returns the key and how to name it in error messages.

    Raises :class:`~ipkernel.errors.KeyFileNotFound` (or ``ValueError`` for a malformed
    key) as :func:`~ipkernel.security.read_key_file` does.
    """
    if isinstance(furl_or_file, str) and furl_or_file.startswith("pb+tls://"):
        return KeyFile.parse(furl_or_file), "the key given"
    path = Path(furl_or_file) if furl_or_file is not None else paths.security_dir() / name
    return read_key_file(path), str(path)
