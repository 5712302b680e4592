"""Hosts reached over real OpenSSH, for tests: one ``sshd`` per network namespace.

:class:`SSHSite` makes a "head" namespace (where ``ipcluster`` and the clients run) and
any number of hosts, each a namespace linked to the head with its own address, default
route through the head, running Debian's ``sshd`` with a throw-away host key and its own
``sshd_config``. Each host, and the head, has a home directory of its own in the test's
temporary directory: commands run in a namespace get a private copy of ``/etc/passwd``
(bind-mounted in the mount namespace ``ip netns exec`` gives them) whose ``root`` lives
there, so that ``~/.ssh`` and ``~/.ipkernel`` are the host's own, as on separate machines,
and nothing of this machine's ``/root`` is read or written. The head's ``~/.ssh`` holds a
key made for the test, a ``known_hosts`` with every host's key, and a ``config``.

Everything is removed in the test's cleanup: the processes in the namespaces (by PID), the
namespaces and their links. Without ``sshd`` (package openssh-server), ``ssh``
(openssh-client) or ``ip`` (iproute2), or without the right to make namespaces, the test
is skipped naming what is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest

from tests.cluster import stop_process
from tests.netns import Namespace, free_subnet, link, run

__all__ = ["SSHD", "SSHHost", "SSHSite"]

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"

_SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
Subsystem sftp {sftp_server}
"""


def _keygen(path: Path) -> str:
    """Make an ed25519 key pair at ``path`` (no passphrase); return the public key."""
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ipkernel-test", "-f", str(path),
        check=True)  # fmt: skip
    return path.with_suffix(".pub").read_text().strip()


def _passwd_with_home(home: Path) -> str:
    """This machine's /etc/passwd with root's home directory set to ``home``."""
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root" and len(fields) == 7:
            fields[5] = str(home)
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


class _Place:
    """A namespace with a home directory of its own (a private /etc/passwd names it)."""

    def __init__(self, testcase, base: Path, label: str) -> None:
        self.label = label
        self.namespace = Namespace(testcase, label)
        self.dir = base / label
        self.home = self.dir / "home"
        self.home.mkdir(parents=True, mode=0o700)
        self.passwd = self.dir / "passwd"
        self.passwd.write_text(_passwd_with_home(self.home))

    def command(self, *argv: str) -> list[str]:
        """``argv`` run in the namespace, as root with this place's home directory."""
        script = 'mount --bind "$0" /etc/passwd && exec "$@"'
        return [*self.namespace.inside(), "sh", "-c", script, str(self.passwd), *argv]


class SSHHost(_Place):
    """A host: a namespace with an address and an ``sshd`` accepting ``authorized`` keys."""

    def __init__(self, testcase, base: Path, label: str, address: str) -> None:
        super().__init__(testcase, base, label)
        self.address = address
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.public_key = _keygen(self.host_key)
        self.authorized_keys = self.dir / "authorized_keys"
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            _SSHD_CONFIG.format(
                address=address,
                host_key=self.host_key,
                authorized_keys=self.authorized_keys,
                sftp_server=SFTP_SERVER,
            )
        )
        self.log = self.dir / "sshd.log"
        self.sshd: subprocess.Popen | None = None
        testcase.addCleanup(self.stop)

    def start(self, authorized: str) -> None:
        """Run sshd (in the foreground, logging to :attr:`log`) accepting the public key
        ``authorized``; return once it listens."""
        self.authorized_keys.write_text(authorized + "\n")
        # sshd needs /run/sshd (its privilege separation directory): a tmpfs on /run, in
        # this namespace's mount namespace only, gives it one without touching the machine.
        script = (
            'mount --bind "$0" /etc/passwd && mount -t tmpfs tmpfs /run && '
            'mkdir -m 755 /run/sshd && exec "$@"'
        )
        argv = [*self.namespace.inside(), "sh", "-c", script, str(self.passwd)]
        with self.log.open("wb") as log:
            self.sshd = subprocess.Popen(
                [*argv, SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        end = time.monotonic() + 30
        while "Server listening on" not in self.log.read_text(errors="replace"):
            if self.sshd.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"sshd did not start: {self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.sshd is not None:
            stop_process(self.sshd)

    def known_hosts_line(self) -> str:
        return f"{self.address} {' '.join(self.public_key.split()[:2])}"


class SSHSite:
    """A head namespace and ``hosts`` (labels) linked to it, each host with its sshd.

    :attr:`hosts` maps each label to its :class:`SSHHost`; :attr:`head` is where ssh
    clients run (:meth:`head_command`), with a key of its own that every host accepts
    unless :meth:`start` is told otherwise; :attr:`head_address` is the head's address on
    its link to the first host, which every host reaches.
    """

    def __init__(self, testcase, base: Path, hosts: list[str]) -> None:
        for program, package in (
            (SSHD, "openssh-server"),
            (SFTP_SERVER, "openssh-sftp-server"),
            ("ssh", "openssh-client"),
            ("scp", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
        ):
            if shutil.which(program) is None:
                raise SkipTest(f"needs {program} (Debian package {package})")
        self.base = base
        self.head = _Place(testcase, base, "head")
        subnets = free_subnet().subnets(new_prefix=30)
        self.hosts: dict[str, SSHHost] = {}
        self.head_address = ""
        for label in hosts:
            subnet = next(subnets)
            head_side, host_side = subnet.hosts()
            host = SSHHost(testcase, base, label, str(host_side))
            link(self.head.namespace, host.namespace, subnet)
            run(*host.namespace.inside(), "ip", "route", "add", "default", "via",
                str(head_side), check=True)  # fmt: skip
            self.head_address = self.head_address or str(head_side)
            self.hosts[label] = host
        ssh_dir = self.head.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        self.client_key = _keygen(ssh_dir / "id_ed25519")
        (ssh_dir / "known_hosts").write_text(
            "".join(host.known_hosts_line() + "\n" for host in self.hosts.values())
        )
        self.ssh_config = ssh_dir / "config"
        self.ssh_config.write_text("Host *\n  User root\n  IdentitiesOnly yes\n")
        self.ssh_config.chmod(0o600)

    def start(self, refuse: tuple[str, ...] = ()) -> None:
        """Start every host's sshd; those in ``refuse`` accept another key than the head's."""
        stranger = _keygen(self.base / "stranger_key") if refuse else ""
        for label, host in self.hosts.items():
            host.start(stranger if label in refuse else self.client_key)

    def alias(self, name: str, host: str, port: int) -> None:
        """Let the head's ssh reach ``host``'s address as ``name`` on ``port``."""
        address = self.hosts[host].address
        with self.ssh_config.open("a") as config:
            config.write(f"Host {name}\n  HostName {address}\n  Port {port}\n")

    def head_command(self, *argv: str) -> list[str]:
        """``argv`` run in the head namespace, with the head's home (and so its ssh keys)."""
        return self.head.command(*argv)

    def engine_pids(self, label: str) -> list[int]:
        """The PIDs of the ipkernel processes in host ``label``'s namespace."""
        found = []
        for pid in self.hosts[label].namespace.pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if re.search(rb"ipkernel\.cli\.ipengine", cmdline):
                found.append(pid)
        return found
