"""Network namespaces for tests that need hosts of their own: made, linked, and removed.

A :class:`Namespace` is one "host": its own network stack (loopback up), removed in the
test's cleanup after every process still in it has been killed by PID. :func:`link` joins
two namespaces with a veth pair on a /30 of their own, taken from a /24 of 10.213.0.0/16
that no interface or route of this machine uses (:func:`free_subnet`). Everything raises
:class:`SkipTest` naming what is missing when the machine cannot make them (no ``ip``
from iproute2, not root, namespaces not allowed).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import shutil
import signal
import subprocess

from twisted.trial.unittest import SkipTest

__all__ = ["Namespace", "free_subnet", "link", "run"]


def run(*argv: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run a short command; with ``check``, fail with its output if it fails."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
    return done


_serial = itertools.count()


def _tag() -> str:
    # Unique among the processes of a run (fixed widths, so two tags never run together
    # into the same string) and short enough for an interface name (15 characters).
    return f"{os.getpid() % 100000:05d}{next(_serial) % 1000:03d}"


class Namespace:
    """A network namespace named ``ipk<tag><label>``, loopback up, removed in the cleanup.

    The cleanup kills (SIGKILL, by PID) every process still in the namespace, then
    deletes it, which also deletes its end of every veth link.
    """

    def __init__(self, testcase, label: str) -> None:
        if shutil.which("ip") is None:
            raise SkipTest("needs the `ip` command (package iproute2) to make network namespaces")
        if os.geteuid() != 0:
            raise SkipTest("needs root to make network namespaces")
        self.name = f"ipk{_tag()}{label}"
        made = run("ip", "netns", "add", self.name)
        if made.returncode != 0:
            raise SkipTest(f"cannot make a network namespace: {made.stderr.strip()}")
        testcase.addCleanup(self.remove)
        run(*self.inside(), "ip", "link", "set", "lo", "up", check=True)

    def inside(self) -> tuple[str, ...]:
        """The prefix that runs a command in the namespace."""
        return ("ip", "netns", "exec", self.name)

    def pids(self) -> list[int]:
        """The processes in the namespace now."""
        listed = run("ip", "netns", "pids", self.name).stdout.split()
        return [int(pid) for pid in listed if pid.isdigit()]

    def remove(self) -> None:
        """Kill what runs in the namespace (by PID), then delete it."""
        for _ in range(10):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        run("ip", "netns", "del", self.name)


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that no interface or route of this machine is in."""
    used = run("ip", "-o", "-4", "addr", "show").stdout + run("ip", "-4", "route").stdout
    for _ in range(100):
        subnet = ipaddress.IPv4Network(f"10.213.{random.randrange(256)}.0/24")
        if str(subnet.network_address).rsplit(".", 1)[0] + "." not in used:
            return subnet
    raise SkipTest("no free 10.213.x.0/24 subnet for the test hosts")


def link(a: Namespace, b: Namespace, subnet: ipaddress.IPv4Network) -> tuple[str, str]:
    """Join ``a`` and ``b`` with a veth pair on ``subnet`` (a /30), both ends up; return
    ``(address_a, address_b)``, the subnet's two host addresses."""
    address_a, address_b = subnet.hosts()
    end_a, end_b = f"v{_tag()}a", f"v{_tag()}b"
    steps = [
        ("ip", "link", "add", end_a, "netns", a.name, "type", "veth", "peer", "name", end_b,
         "netns", b.name),
        (*a.inside(), "ip", "addr", "add", f"{address_a}/{subnet.prefixlen}", "dev", end_a),
        (*b.inside(), "ip", "addr", "add", f"{address_b}/{subnet.prefixlen}", "dev", end_b),
        (*a.inside(), "ip", "link", "set", end_a, "up"),
        (*b.inside(), "ip", "link", "set", end_b, "up"),
    ]  # fmt: skip
    for step in steps:
        done = run(*step)
        if done.returncode != 0:
            raise SkipTest(f"cannot link two namespaces ({' '.join(step)}): {done.stderr}")
    return str(address_a), str(address_b)
