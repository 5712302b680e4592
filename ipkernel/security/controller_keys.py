"""Everything the controller writes to its security directory, kept across restarts.

At start the controller makes (or, with ``--reuse-keys``, loads) its certificate and the
three role secrets (:class:`ControllerKeys`), listens (on :func:`previous_ports` when
reusing keys), and writes one key file per role once its ports are bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ipkernel.paths import CERT_FILE, ENGINE_FURL, KEY_FILE, MEC_FURL, TC_FURL, ensure_private_dir
from ipkernel.security.certificates import ControllerIdentity
from ipkernel.security.keyfiles import KeyFile, read_key_file, write_key_file
from ipkernel.security.role_secrets import new_secret

__all__ = ["ControllerKeys", "previous_ports"]


def _read_key_file_or_none(path: Path) -> KeyFile | None:
    try:
        return read_key_file(path)
    except (OSError, ValueError):
        return None


def previous_ports(security_dir: str | os.PathLike[str]) -> tuple[int | None, int | None]:
    """Return ``(engine_port, client_port)`` from the key files in ``security_dir``.

    The engine port comes from the engine key file, the client port from the MultiEngine
    key file (or the Task key file if that one is missing). A port is ``None`` when no
    readable key file names it. A controller restarted with ``--reuse-keys`` listens on
    these ports so that copied key files stay valid.
    """
    directory = Path(security_dir).expanduser().absolute()
    engine = _read_key_file_or_none(directory / ENGINE_FURL)
    client = _read_key_file_or_none(directory / MEC_FURL) or _read_key_file_or_none(
        directory / TC_FURL
    )
    return (engine.port if engine else None, client.port if client else None)


@dataclass(frozen=True)
class ControllerKeys:
    """The controller's identity and its three role secrets, tied to a security directory.

    The controller calls :meth:`create` at start, listens (on :func:`previous_ports` when
    reusing keys), makes its ports' TLS context from ``identity`` and gives the secrets to
    its gates, and then calls :meth:`write_key_files` with the address and the bound ports.
    """

    security_dir: Path
    identity: ControllerIdentity
    engine_secret: str
    mec_secret: str
    tc_secret: str

    @classmethod
    def create(cls, security_dir: str | os.PathLike[str], reuse: bool = False) -> ControllerKeys:
        """Load or make the keys for ``security_dir`` and save the certificate and key there.

        With ``reuse`` and a saved certificate and key, those are kept, and so is each
        role's secret whose old key file names this certificate; a role without one gets a
        new secret. Key files rewritten with the same host and ports are then byte-identical
        to the old ones. Without ``reuse``, or if the certificate or key file is missing,
        everything is new and the old key files are removed at once, so that nobody picks up
        a key file that no longer works before :meth:`write_key_files` replaces it.

        The directory is created if needed and set to mode 0700. Raises ``ValueError`` if
        ``reuse`` is asked for and the saved certificate or key cannot be used (the message
        names the file), and ``OSError`` on other file errors.
        """
        directory = ensure_private_dir(security_dir)
        identity: ControllerIdentity | None = None
        if reuse and (directory / CERT_FILE).exists() and (directory / KEY_FILE).exists():
            identity = ControllerIdentity.load(directory)
        if identity is None:
            identity = ControllerIdentity.generate()
            identity.save(directory)
            for name in (ENGINE_FURL, MEC_FURL, TC_FURL):
                try:
                    os.unlink(directory / name)
                except FileNotFoundError:
                    pass

        fingerprint = identity.fingerprint
        secrets_by_name = {}
        for name in (ENGINE_FURL, MEC_FURL, TC_FURL):
            old = _read_key_file_or_none(directory / name)
            # An old key file for another certificate is useless anyway; keep only its role.
            reusable = old is not None and old.fingerprint == fingerprint
            secrets_by_name[name] = old.secret if reusable else new_secret()
        return cls(
            directory,
            identity,
            secrets_by_name[ENGINE_FURL],
            secrets_by_name[MEC_FURL],
            secrets_by_name[TC_FURL],
        )

    def key_files(self, host: str, engine_port: int, client_port: int) -> dict[str, KeyFile]:
        """Return the three key files for ``host`` and the ports, by file name.

        ``ENGINE_FURL`` names ``engine_port``; ``MEC_FURL`` and ``TC_FURL`` name
        ``client_port``. Raises ``ValueError`` for an invalid host or port.
        """
        fingerprint = self.identity.fingerprint
        return {
            ENGINE_FURL: KeyFile(fingerprint, host, engine_port, self.engine_secret),
            MEC_FURL: KeyFile(fingerprint, host, client_port, self.mec_secret),
            TC_FURL: KeyFile(fingerprint, host, client_port, self.tc_secret),
        }

    def write_key_files(self, location_host: str, engine_port: int, client_port: int) -> None:
        """Write the three key files into the security directory (mode 0600, atomically).

        ``location_host`` is the address engines and clients dial (``--location``), not
        necessarily the one listened on. Raises ``ValueError`` for an invalid host or port
        (before anything is written) and ``OSError`` on write errors.
        """
        for name, keyfile in self.key_files(location_host, engine_port, client_port).items():
            write_key_file(self.security_dir / name, keyfile)
