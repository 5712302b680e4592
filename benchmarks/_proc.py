"""A process's CPU time and memory, read from Linux's ``/proc`` (for the benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

MB = 1_000_000


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) that process ``pid`` has used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # After the command name (which may hold spaces and parentheses): fields 3 onwards;
    # utime and stime are fields 14 and 15, in clock ticks.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Process ``pid``'s resident set size in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def pss_mb(pid: int) -> float:
    """A process's proportional set size in MB: a page shared by N counts 1/N in each."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"no Pss for {pid}")
