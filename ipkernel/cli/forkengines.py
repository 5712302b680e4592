"""Start N local engines from one Python that has already loaded the engine's code.

``python -m ipkernel.cli.forkengines N [ipengine options]`` imports everything an engine
needs (Twisted, TLS, the engine modules), then forks N children, each of which runs
``ipkernel.cli.ipengine.main(options)`` exactly as ``python -m ipkernel.cli.ipengine
[options]`` would. Importing once instead of N times is what makes ``ipcluster -n 8`` come
up in about the time of one engine: on a small machine each fresh interpreter spends about
half a CPU-second importing before it can connect. numpy, when installed, is loaded too,
so that no engine pays for its import inside a user's first call that carries an array.

This process stays as the engines' parent. It prints one line per engine on stdout,
``ipkernel-fork: engine-pid <pid>`` when started and ``ipkernel-fork: engine-exit <pid>
<code>`` (``-<signal>`` if killed) when reaped, so that ``ipcluster`` knows every engine's
PID; it passes SIGTERM on to the engines, ignores SIGINT (Ctrl-C in a terminal reaches the
engines themselves, which treat it as an interrupt), and exits once every engine has ended.

What an engine must not share with its siblings is renewed in each child: the reactor is
installed only after the fork (``twisted.internet.reactor`` is never imported here), the
``random`` module re-seeds itself on fork, and numpy's global random state, if numpy was
loaded, is re-seeded from the OS. Only this module's own code runs before the fork.
"""

from __future__ import annotations

import gc
import os
import signal
import ssl
import sys
import traceback

#: Prefix of the lines this process prints about its engines.
MARKER = "ipkernel-fork:"

# Modules an engine imports before it can connect; loaded once, before forking.
_PRELOAD = (
    "twisted.internet.epollreactor",
    "twisted.internet.default",
    "twisted.internet.tcp",
    "twisted.internet.ssl",
    "twisted.spread.pb",
    "twisted.logger",
    "twisted.application.service",
    "ipkernel.cli.ipengine",
    "ipkernel.engine.core",
    "ipkernel.engine.executor",
    "ipkernel.engine.interpreter",
    "ipkernel.engine.properties",
    "ipkernel.engine.service",
    "ipkernel.serialization",
    "ipkernel.shm",
    "ipkernel.wire.connect",
    "ipkernel.wire.direct_listener",
    "ipkernel.wire.handoff",
    "ipkernel.wire.transfer",
    # Not the engine's own, but what a user's first array brings: unpickling one imports
    # numpy, which would otherwise cost each engine about 0.1 s of CPU inside that call
    # (a first 100 MB push ran at a sixth of the speed of the next). Loaded here, its pages
    # are shared by every engine. Skipped when numpy is not installed.
    "numpy",
    # numpy loads it at its first use, which is each engine's start: its global random
    # state is re-seeded there (see _child).
    "numpy.random",
)


def _preload() -> None:
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            # Another reactor module on another platform, say: the child imports what
            # it needs itself, only more slowly.
            pass
    if "twisted.internet.reactor" in sys.modules:
        raise RuntimeError("the reactor was installed before forking engines")
    # OpenSSL reads its configuration when the first context is made, a few milliseconds
    # that each engine would otherwise spend before it can dial.
    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _child(args: list[str]) -> int:
    """Become one engine (in the forked child); return its exit code."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    from ipkernel.cli import ipengine

    sys.argv = [ipengine.__file__, *args]
    return ipengine.main(args)


def _report(*fields: object) -> None:
    try:
        print(MARKER, *fields, flush=True)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Fork ``argv[0]`` engines with ipengine options ``argv[1:]``; wait for all of them."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or not args[0].isdigit() or int(args[0]) < 1:
        print("usage: python -m ipkernel.cli.forkengines N [ipengine options]", file=sys.stderr)
        return 2
    count, engine_args = int(args[0]), args[1:]
    # Loading modules makes many objects and no garbage: collections would only slow it.
    # Frozen once loaded, they are left out of every collection, here and in the engines,
    # so that their pages stay shared instead of being copied when one touches them.
    gc.disable()
    _preload()
    gc.freeze()
    gc.enable()
    sys.stdout.flush()
    sys.stderr.flush()
    children: list[int] = []
    stopping: list[int] = []

    def pass_on(signum: int, frame: object) -> None:
        stopping.append(signum)
        for pid in children:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    # Installed before forking, so that a SIGTERM that comes during the loop still reaches
    # every engine started; each child sets its own handlers first thing.
    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    held = {signal.SIGTERM}
    for _ in range(count):
        if stopping:
            break
        # SIGTERM is held back across the fork: in this process until the new engine is
        # in ``children`` (so that pass_on reaches it), and in the engine until it has the
        # default action again (pass_on, inherited, would drop a SIGTERM sent to it).
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
            code = 1
            try:
                code = _child(engine_args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                # os._exit below would end the child before Python printed the error.
                traceback.print_exc()
            finally:
                # Never return into the parent's stack, and skip its atexit handlers.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        children.append(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        _report("engine-pid", pid)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid in children:
            children.remove(pid)
            code = os.waitstatus_to_exitcode(status)
            _report("engine-exit", pid, code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
