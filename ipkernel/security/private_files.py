"""Files only their owner can read: written atomically, mode 0600 from the first byte on.

Key files, the controller's certificate and its private key are all written here, into a
directory that :func:`~ipkernel.paths.ensure_private_dir` has made mode 0700.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["FILE_MODE", "write_private_file"]

#: The mode of every file ipkernel writes into its security directory.
FILE_MODE = 0o600


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from the first byte on.

    Readers see either the old content or the new, never a partial file; a file that
    already existed with a looser mode is replaced, not rewritten in place. Raises
    ``OSError``.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never follow a planted symlink or reuse someone else's file; 0600 at creation so
    # the secret is never readable by others, not even between open and chmod.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask can only remove bits; fchmod pins the mode whatever it is.
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
