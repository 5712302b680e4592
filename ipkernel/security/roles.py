"""The roles a key file grants, by the names clients and engines ask for at login.

Each key file carries the secret of one role. At login the connecting side names the
role it needs as well as the secret it holds, so that a key file of another role (the
Task key file given to ``MultiEngineClient``) is refused with a message naming both
roles (:func:`wrong_role_message`), not with a missing-method error on the first call.
"""

from __future__ import annotations

from ipkernel.paths import ENGINE_FURL, MEC_FURL, TC_FURL

__all__ = ["ENGINE", "MULTIENGINE", "ROLES", "TASK", "wrong_role_message"]

#: Role names, as sent at login.
ENGINE = "engine"
MULTIENGINE = "mec"
TASK = "tc"

#: Each role: who uses it, and the name of its key file in the security directory.
ROLES: dict[str, tuple[str, str]] = {
    ENGINE: ("an engine", ENGINE_FURL),
    MULTIENGINE: ("a MultiEngine client", MEC_FURL),
    TASK: ("a Task client", TC_FURL),
}


def _describe(role: object) -> str:
    if isinstance(role, str) and role in ROLES:
        who, key_file = ROLES[role]
        return f"{who} ({key_file})"
    return f"an unknown role {role!r}"


def wrong_role_message(held: str, wanted: object) -> str:
    """Why a key file of role ``held`` cannot log in as ``wanted``: the text that follows
    the key file's name, as in ``"<path> is the key file for a Task client (...)"``."""
    return (
        f"is the key file for {_describe(held)}, but {_describe(wanted)} needs its own: "
        "use that key file from the controller's security directory"
    )
