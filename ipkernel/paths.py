"""Where ipkernel keeps its state: the state directory, ``security/``, ``log/`` and key file names.

Everything lives under one directory, ``$IPKERNEL_DIR`` (default ``~/.ipkernel``):

- ``security/`` holds the controller's certificate and private key and the three key files;
  it is mode 0700 and every file in it 0600 (:func:`ensure_private_dir`);
- ``log/`` holds one log file per process.

Command-line options (``--security-dir``, ``--log-dir``) override each directory; the
functions here take that override as an argument so that every command resolves paths the
same way.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CERT_FILE",
    "ENGINE_FURL",
    "KEY_FILE",
    "MEC_FURL",
    "TC_FURL",
    "ensure_private_dir",
    "ipkernel_dir",
    "log_dir",
    "security_dir",
]

#: Key file that grants registering as an engine.
ENGINE_FURL = "ipcontroller-engine.furl"
#: Key file that grants the MultiEngine interface.
MEC_FURL = "ipcontroller-mec.furl"
#: Key file that grants the Task interface.
TC_FURL = "ipcontroller-tc.furl"
#: The controller's self-signed certificate (PEM).
CERT_FILE = "ipcontroller-cert.pem"
#: The controller's private key (PEM, unencrypted: protected by the file mode only).
KEY_FILE = "ipcontroller-key.pem"

_PRIVATE_DIR_MODE = 0o700


def _resolve(path: str | os.PathLike[str]) -> Path:
    # Absolute paths make error messages ("no key file at ...") unambiguous whatever the
    # working directory of the process that prints them.
    return Path(path).expanduser().absolute()


def ipkernel_dir() -> Path:
    """Return the state directory: ``$IPKERNEL_DIR`` if set and non-empty, else ``~/.ipkernel``.

    The directory is not created.
    """
    env = os.environ.get("IPKERNEL_DIR")
    if env:
        return _resolve(env)
    return _resolve(Path.home() / ".ipkernel")


def security_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Return the security directory: ``override`` if given, else ``<ipkernel_dir>/security``.

    The directory is not created; writers call :func:`ensure_private_dir` on it.
    """
    if override:
        return _resolve(override)
    return ipkernel_dir() / "security"


def log_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Return the log directory: ``override`` if given, else ``<ipkernel_dir>/log``.

    The directory is not created.
    """
    if override:
        return _resolve(override)
    return ipkernel_dir() / "log"


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and missing parents) if needed and make it mode 0700; return it.

    An existing directory is tightened to 0700 as well: ``os.makedirs(mode=...)`` leaves an
    existing directory's mode alone, and a security directory that others can list or
    enter would expose the key files' names and, with a loose file mode, their contents.
    Missing parents are created with the process's default mode.

    Raises ``OSError`` (for example ``PermissionError`` for a directory owned by another
    user, or ``FileExistsError`` if ``path`` is a file).
    """
    directory = _resolve(path)
    directory.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    # mkdir's mode is filtered through the umask and ignored for an existing directory;
    # chmod sets exactly 0700 in both cases.
    os.chmod(directory, _PRIVATE_DIR_MODE)
    return directory
