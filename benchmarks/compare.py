"""ipkernel next to ipyparallel and Dask distributed: the same workloads, one run, one table.

    python3 benchmarks/compare.py [--rounds N] [--quick] [--systems a,b] [--setup]

Six columns, two engines/workers each, all on 127.0.0.1: ipkernel as installed (TLS;
large payloads between processes of one host through shared memory), ipkernel with
``IPKERNEL_TRANSPORT=stream`` (the network path, as between hosts: large payloads over
direct TLS links between client and engine where they can be made, else through the
controller), ipyparallel (ZeroMQ, messages signed, not encrypted), Dask over ``tcp://``,
Dask over ``tls://`` (data through the scheduler, the column to hold ipkernel's figures
against when comparing encrypted with encrypted), Dask over ``tls://`` with its data
sent straight between client and worker (``direct=True``), the column for the stream
path's push and pull, and Ray (two actors, its shared-memory object store).

The peers live in their own virtual environment, ``benchmarks/.peers-venv``, made on the
first run (or again with ``--setup``) by ``pip install ipyparallel dask distributed numpy
cryptography ray``; they are never dependencies of ipkernel. Each round of each system
runs in a child process (``_round.py``): ipkernel's with this Python, the peers' with the
venv's.

Interleaving: for each round, every system in turn starts a fresh cluster, measures every
figure, and stops it; the order of the systems rotates from round to round. Only one
cluster runs at a time, so that no system's idle processes take CPU from another's
measurement (the machine may have as few cores as there are engines), and noise that lasts
minutes falls on every system's rounds alike. Each figure is the median over rounds of
each round's median.

Output: a Markdown table of medians and, for each peer, the ratio ipkernel / peer (every
figure is a time or a size: below 1 means ipkernel is faster or smaller), then one JSON
line with every figure (the stream column's ratios too). Progress goes to stderr. Every
process started is stopped by PID at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _round import MARKER, running, session_members, sizes, start_time, stop_pids  # noqa: E402

VENV = HERE / ".peers-venv"
# cryptography: Dask needs it for TLS (Security.temporary) but does not depend on it.
PEER_PACKAGES = ("ipyparallel", "dask", "distributed", "numpy", "cryptography", "ray")
SYSTEMS = (
    "ipkernel",
    "ipkernel-stream",
    "ipyparallel",
    "dask",
    "dask-tls",
    "dask-tls-direct",
    "ray",
)
OURS = ("ipkernel", "ipkernel-stream")
TITLES = {
    "ipkernel": "ipkernel",
    "ipkernel-stream": "ipkernel, stream",
    "ipyparallel": "ipyparallel",
    "dask": "Dask",
    "dask-tls": "Dask TLS",
    "dask-tls-direct": "Dask TLS direct to worker",
    "ray": "Ray",
}
#: Seconds one round of one system may take before it is stopped (Dask's scatter of a
#: million-item list alone takes minutes on a small machine).
ROUND_TIMEOUT = 1200


def figure_labels(quick: bool) -> dict[str, str]:
    """Row labels of the table, in order, naming the sizes of this run."""
    size = sizes(quick)
    mb = size["array_bytes"] // 1_000_000
    return {
        "startup_s": "startup, until a client sees 2 engines (s)",
        "execute_ms": "execute latency, one engine (ms)",
        "task_ms": "task round trip (ms)",
        "throughput_s": f"{size['throughput_tasks']:,} no-op tasks, submit + wait (s)",
        "push_s": f"push {mb} MB array to one engine (s)",
        "pull_s": f"pull {mb} MB array from one engine (s)",
        "share_s": f"share {mb} MB read-only array with both engines (s)",
        "share_read_s": "an engine sums the shared array (s)",
        "scatter_s": f"scatter list of {size['scatter_length']:,} over 2 (s)",
        "gather_s": f"gather list of {size['scatter_length']:,} from 2 (s)",
        "map_s": f"map x*x over {size['map_length']:,} items (s)",
        "rss_idle_mb": "controller RSS, idle (MB)",
        "rss_after_mb": "controller RSS, after the workloads (MB)",
        "pss_idle_mb": "controller and its helpers, PSS, idle (MB)",
        "pss_after_mb": "controller and its helpers, PSS, after (MB)",
    }


# --- the peers' virtual environment -------------------------------------------------------


def venv_python() -> Path:
    return VENV / "bin" / "python"


def peers_installed() -> bool:
    """True if the venv exists and imports every peer package."""
    if not venv_python().exists():
        return False
    check = "import ipyparallel, dask, distributed, numpy, cryptography, ray"
    return subprocess.run([venv_python(), "-c", check], capture_output=True).returncode == 0


def setup_peers(upgrade: bool) -> None:
    """Create the venv if needed and install (or, with ``upgrade``, upgrade) the peers."""
    if not venv_python().exists():
        print(f"creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"installing {' '.join(PEER_PACKAGES)} into {VENV}", file=sys.stderr)
    command = [str(venv_python()), "-m", "pip", "install", "--quiet"]
    if upgrade:
        command.append("--upgrade")
    result = subprocess.run([*command, *PEER_PACKAGES], capture_output=True, text=True)
    if result.returncode:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"pip could not install the peers into {VENV}")


def versions(peers: bool) -> dict[str, str]:
    """Versions of Python, ipkernel (and its commit), Twisted and, if used, the peers."""
    from importlib.metadata import version

    found = {
        "python": platform.python_version(),
        "ipkernel": version("ipkernel"),
        "twisted": version("twisted"),
    }
    # The figures are those of the working tree, which may differ from any commit.
    git = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    if git.returncode == 0:
        found["ipkernel_commit"] = git.stdout.strip()
    if peers:
        script = (
            "import json, platform; from importlib.metadata import version; "
            f"print(json.dumps({{p: version(p) for p in {PEER_PACKAGES!r}}}))"
        )
        out = subprocess.run(
            [venv_python(), "-c", script], capture_output=True, text=True, check=True
        )
        found.update(json.loads(out.stdout))
    return found


# --- one round ----------------------------------------------------------------------------


class RoundFailed(Exception):
    """A round did not complete; the message quotes the end of its log."""


def run_round(system: str, quick: bool, log_dir: Path) -> dict[str, dict]:
    """Run one round of ``system`` in a child process; return ``{figure: fact}``.

    Whatever happens (failure, timeout, Ctrl-C), every process the round started is
    stopped before this returns or raises: the child is asked to stop its cluster
    (SIGTERM), and then anything it reported or that is still in its session is stopped.
    """
    python = sys.executable if system in OURS else str(venv_python())
    argv = [python, str(HERE / "_round.py"), system, *(["--quick"] if quick else [])]
    log = log_dir / f"{system}.log"
    figures: dict[str, dict] = {}
    started: list[tuple[int, int]] = []
    done = False
    with open(log, "a") as stderr:
        # A session of its own: Ctrl-C on the terminal reaches this process only, which
        # then stops the round in order (cluster first) instead of every process at once.
        child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    timed_out = threading.Event()

    def stop_late() -> None:
        timed_out.set()
        child.terminate()

    timer = threading.Timer(ROUND_TIMEOUT, stop_late)
    timer.daemon = True
    timer.start()
    try:
        for line in child.stdout:
            if not line.startswith(MARKER):
                continue
            fact = json.loads(line[len(MARKER) :])
            if "pids" in fact:
                started.extend((pid, tick) for pid, tick in fact["pids"] if tick is not None)
            elif "figure" in fact:
                figures[fact["figure"]] = fact
            elif fact.get("done"):
                done = True
        child.wait()
    finally:
        timer.cancel()
        _reap(child, started)
    if not done or child.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        why = (
            f"timed out after {ROUND_TIMEOUT} s"
            if timed_out.is_set()
            else f"exit {child.returncode}"
        )
        raise RoundFailed(f"{system} round failed ({why}); end of {log}:\n{tail}")
    return figures


def _reap(child: subprocess.Popen, started: list[tuple[int, int]]) -> None:
    """Stop ``child`` and every process it started that is still there."""
    if child.poll() is None:
        child.terminate()  # the round stops its cluster on SIGTERM
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    # A pid is only trusted while its start time is the one reported, so that a process
    # that ended and whose pid was reused is never touched.
    left = {pid for pid, tick in started if start_time(pid) == tick}
    left |= set(session_members(child.pid))
    left = sorted(pid for pid in left if running(pid))
    if left:
        names = ", ".join(f"{pid} ({_command(pid)})" for pid in left)
        print(f"stopping left-over processes: {names}", file=sys.stderr)
        stop_pids(left)


def _command(pid: int) -> str:
    """The start of ``pid``'s command line, for messages."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    return " ".join(arg.decode(errors="replace") for arg in argv[:4]).strip()


# --- the run ------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    """About three significant digits, never in exponent form."""
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}" if value >= 0.001 else f"{value:.5f}"


def _ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def table(
    labels: dict[str, str], systems: list[str], medians: dict[str, dict], ratios: dict
) -> str:
    """The Markdown table: a row per figure, a column per system, a column per peer for
    the ratio ipkernel / peer (ipkernel as installed), and, when both ran, one for the
    ratio of the stream column to Dask TLS direct to worker, the like-for-like pair for
    data over the network (the stream column's other ratios are in the JSON line)."""
    stream_pair = "ipkernel-stream" in systems and "dask-tls-direct" in systems
    head = ["figure"]
    for system in systems:
        head.append(TITLES[system])
        if system not in OURS and "ipkernel" in systems:
            head.append(f"ipk / {TITLES[system]}")
    if stream_pair:
        head.append("stream / Dask TLS direct")
    rows = [head, ["---"] + ["---:"] * (len(head) - 1)]
    for key, label in labels.items():
        row = [label]
        for system in systems:
            row.append(fmt(medians[system].get(key)))
            if system not in OURS and "ipkernel" in systems:
                ratio = ratios["ipkernel"][system].get(key)
                row.append(_ratio(ratio))
        if stream_pair:
            row.append(_ratio(ratios["ipkernel-stream"]["dask-tls-direct"].get(key)))
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare ipkernel with ipyparallel and Dask distributed on this host."
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="one round, smaller sizes and fewer repetitions"
    )
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--setup",
        action="store_true",
        help=f"(re)install the peers into {VENV.relative_to(HERE.parent)} and exit",
    )
    args = parser.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or not args.systems:
        parser.error(f"--systems takes names among {', '.join(SYSTEMS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.quick:
        args.rounds = 1
    return args


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM and SIGHUP take the same way out as Ctrl-C, through every finally block.
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """Run the comparison; exit status 0 if every round completed."""
    args = parse_args(argv)
    if sys.platform != "linux":
        raise SystemExit("compare.py finds and measures processes through /proc: Linux only")
    if args.setup:
        setup_peers(upgrade=True)
        return 0
    peers = [name for name in args.systems if name not in OURS]
    if peers and not peers_installed():
        setup_peers(upgrade=False)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)

    systems = [name for name in SYSTEMS if name in args.systems]
    labels = figure_labels(args.quick)
    samples: dict[str, dict[str, list[float]]] = {s: {k: [] for k in labels} for s in systems}
    notes: dict[str, set[str]] = {s: set() for s in systems}
    failures: list[str] = []
    log_dir = Path(tempfile.mkdtemp(prefix="ipkernel-compare-"))
    began = time.monotonic()
    try:
        for number in range(args.rounds):
            shift = number % len(systems)
            for system in systems[shift:] + systems[:shift]:
                t0 = time.monotonic()
                print(f"round {number + 1}/{args.rounds}: {system} ...", end="", file=sys.stderr)
                sys.stderr.flush()
                try:
                    figures = run_round(system, args.quick, log_dir)
                except RoundFailed as exc:
                    print(" failed", file=sys.stderr)
                    print(exc, file=sys.stderr)
                    failures.append(str(exc).splitlines()[0])
                    continue
                print(f" {time.monotonic() - t0:.0f} s", file=sys.stderr)
                for key, fact in figures.items():
                    if fact.get("value") is not None:
                        samples[system][key].append(fact["value"])
                    elif fact.get("note"):
                        notes[system].add(f"{key}: {fact['note']}")
    except KeyboardInterrupt:
        print("\ninterrupted; every process started has been stopped", file=sys.stderr)
        return 130

    medians = {s: {k: median(v) for k, v in samples[s].items()} for s in systems}
    # ratios[ours][peer][figure] = ours / peer
    ratios: dict[str, dict[str, dict[str, float | None]]] = {}
    for mine in (name for name in OURS if name in systems):
        ratios[mine] = {}
        for peer in (name for name in systems if name not in OURS):
            ratios[mine][peer] = {}
            for key in labels:
                ours, theirs = medians[mine][key], medians[peer][key]
                ratios[mine][peer][key] = ours / theirs if ours is not None and theirs else None

    print(table(labels, systems, medians, ratios))
    for system in systems:
        for note in sorted(notes[system]):
            print(f"\n{TITLES[system]}: n/a because {note}")
    record = {
        "benchmark": "compare",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.monotonic() - began),
        "rounds": args.rounds,
        "quick": args.quick,
        "nproc": os.cpu_count(),
        "versions": versions(bool(peers)),
        "sizes": sizes(args.quick),
        "medians": {s: {k: _round4(v) for k, v in m.items()} for s, m in medians.items()},
        "ratios": {
            mine: {peer: {k: _round4(v) for k, v in r.items()} for peer, r in per_peer.items()}
            for mine, per_peer in ratios.items()
        },
        "samples": {
            s: {k: [_round4(x) for x in v] for k, v in m.items()} for s, m in samples.items()
        },
        "failures": failures,
    }
    print(json.dumps(record))
    if failures:
        print(f"the logs of the failed rounds are in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def _round4(value: float | None) -> float | None:
    """Four significant digits are plenty for noisy timings and keep the line short."""
    return None if value is None else float(f"{value:.4g}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
