"""What a host needs before engines start there over ssh, and what to say when it lacks it.

The ssh launcher runs one command per host before any engine (:func:`prepare_command`): it
creates the remote security directory, then asks the engines' Python there for its version
and whether it can import the engine. :func:`diagnose` reads what came back (the exit
status of ``ssh`` and the output) and returns ``None`` when the host is ready, or one line
that names the host, says what is wrong and what to do: the host cannot be reached, it
refused the key, it does not know the host key, it has no such Python, that Python cannot
import ipkernel, or its Python or ipkernel version differs from this host's.
"""

from __future__ import annotations

import shlex
import sys

import ipkernel

__all__ = ["MARKER", "diagnose", "prepare_command"]

#: The first word of the lines the check prints on the remote host.
MARKER = "ipkernel-probe"

# Printed by the engines' Python on the remote host: its version first, then (only if the
# engine's modules import) ipkernel's version.
_PROBE = (
    f'import sys; print("{MARKER} python", *sys.version_info[:3]); '
    "import ipkernel, ipkernel.cli.ipengine; "
    f'print("{MARKER} ipkernel", ipkernel.__version__)'
)

# What ssh itself prints (it exits with 255) for the failures users meet most.
_REFUSED = ("Permission denied", "Too many authentication failures")
_UNKNOWN_KEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")
_UNREACHABLE = (
    "Connection refused",
    "Connection timed out",
    "timed out",
    "No route to host",
    "Network is unreachable",
    "Could not resolve hostname",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Connection closed",
    "Connection reset",
)
# ssh's exit status when ssh itself (not the remote command) failed.
_SSH_FAILED = 255
# A POSIX shell's exit status for a command it cannot find, or cannot run.
_NOT_FOUND, _NOT_EXECUTABLE = 127, 126


def prepare_command(security_dir: str, python: str) -> str:
    """The remote shell command: create ``security_dir`` (mode 0700), then run the check
    with ``python`` (``exec``, so that its exit status is the command's)."""
    quoted = shlex.quote(security_dir)
    return (
        f"umask 077 && mkdir -p {quoted} && chmod 700 {quoted} && "
        f"exec {shlex.join([python, '-c', _PROBE])}"
    )


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _probe_lines(output: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == MARKER:
            found[fields[1]] = fields[2:]
    return found


def _ssh_failure(host: str, output: str) -> str:
    reason = _last_line(output)
    if any(text in output for text in _REFUSED):
        return (
            f"{host}: the ssh login was refused ({reason}): the host does not accept this "
            f"user's key. Set up a login without a password (ssh-copy-id {host}, or load the "
            f"key into ssh-agent), then check that 'ssh -o BatchMode=yes {host} true' works"
        )
    if any(text in output for text in _UNKNOWN_KEY):
        return (
            f"{host}: ssh does not trust the host's key ({reason}). Connect once with "
            f"'ssh {host}' to check the key and add it to known_hosts"
        )
    if any(text in output for text in _UNREACHABLE):
        return (
            f"{host}: cannot reach the host over ssh ({reason}). Check the host name in the "
            "host file, that the host is up and runs sshd, and that no firewall is in the way"
        )
    return f"{host}: ssh failed ({reason}); check that 'ssh -o BatchMode=yes {host} true' works"


def diagnose(host: str, python: str, code: int, output: str) -> str | None:
    """``None`` if the check's result (``ssh``'s exit ``code`` and ``output``) shows that
    ``host`` can run engines with ``python``; otherwise what is wrong and what to do."""
    if code == _SSH_FAILED:
        return _ssh_failure(host, output)
    found = _probe_lines(output)
    where = f"{host}: {python}"
    if "python" not in found:
        if code in (_NOT_FOUND, _NOT_EXECUTABLE):
            return (
                f"{where} cannot be run ({_last_line(output)}). Install Python and ipkernel "
                "there at that path, or name the Python that has them with --engine-python "
                "(a relative path is taken from the remote home directory)"
            )
        return f"{host}: the check before starting engines failed (exit code {code}): " + (
            _last_line(output)
        )
    remote = ".".join(found["python"][:3])
    here = ".".join(str(part) for part in sys.version_info[:3])
    if found["python"][:2] != [str(part) for part in sys.version_info[:2]]:
        minor = ".".join(here.split(".")[:2])
        return (
            f"{where} is Python {remote}, but this host runs Python {here}; engines need "
            f"the same Python version ({minor}) as the clients, because code and objects "
            f"travel pickled. Install Python {minor} with ipkernel there and name it with "
            "--engine-python"
        )
    if "ipkernel" not in found:
        return (
            f"{where} cannot import ipkernel ({_last_line(output)}). Install ipkernel there "
            f"(pip install ipkernel=={ipkernel.__version__}), or name a Python that has it "
            "with --engine-python"
        )
    if found["ipkernel"][:1] != [ipkernel.__version__]:
        return (
            f"{where} has ipkernel {found['ipkernel'][0]}, but this host has "
            f"{ipkernel.__version__}; install the same version there "
            f"(pip install ipkernel=={ipkernel.__version__})"
        )
    if code != 0:
        return f"{host}: the check before starting engines failed (exit code {code}): " + (
            _last_line(output)
        )
    return None
