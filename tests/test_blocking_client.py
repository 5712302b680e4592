"""The synchronous MultiEngineClient, as users call it: scripts run in child processes.

The synchronous client runs the reactor in a thread of its own, so these tests drive it
from a child Python (``Cluster.run_script``) while trial's reactor runs the test.
"""

from __future__ import annotations

import weakref

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipkernel.client.blocking import ReactorBridge
from tests.cluster import Cluster

SEED_EXAMPLES = r"""
import time
from ipkernel import client

mec = client.MultiEngineClient()
assert mec.get_ids() == [0, 1, 2, 3]

# Quick and easy parallelism
serial_result = list(map(lambda x: x**10, range(32)))
parallel_result = mec.map(lambda x: x**10, range(32))
assert serial_result == parallel_result

@mec.parallel()
def f(x):
    return 10.0 * x**4

assert f(range(32)) == [10.0 * x**4 for x in range(32)]

# Blocking execution
r = mec.execute('print("Hello World")')
assert [x['stdout'] for x in r] == ['Hello World\n'] * 4
mec.execute('a=5')
mec.execute('b=10')
mec.execute('c=a+b', targets=[0, 2])
mec.execute('c=a-b', targets=[1, 3])
r = mec.execute('print(c)')
assert [x['stdout'] for x in r] == ['15\n', '-5\n', '15\n', '-5\n'], r
text = repr(r)
assert '[0] In [5]: print(c)' in text and '[0] Out[5]: 15' in text
assert '[1] In [5]: print(c)' in text and '[1] Out[5]: -5' in text, text
result_dict = mec.execute('d=10; print(d)')
for res in result_dict:
    assert set(res) >= {'id', 'number', 'input', 'stdout', 'stderr'}
    assert res['stdout'] == '10\n'

# Non-blocking execution
mec.execute('import time')
pr = mec.execute('time.sleep(0.5)', block=False)
assert pr.get_result(block=False) is None
assert [x['input']['raw'] for x in pr.get_result()] == ['time.sleep(0.5)'] * 4
pr = mec.execute('time.sleep(0.2)', block=False)
assert [x['id'] for x in pr.r] == [0, 1, 2, 3]
mec.block = False
pr_list = [mec.execute('time.sleep(0.1)') for i in range(5)]
mec.barrier(pr_list)
assert all(p.get_result(block=False) is not None for p in pr_list)
mec.block = True

# The targets and block attributes
mec.targets = [0, 2]
mec.block = False
pr = mec.execute('a=5')
assert [x['id'] for x in pr.r] == [0, 2]
mec.targets = 'all'
mec.block = True
assert [x['id'] for x in mec.execute('b=10; print(b)')] == [0, 1, 2, 3]

# Moving Python objects around
mec.push(dict(a=1.03234, b=3453))
assert mec.pull('a') == [1.03234] * 4
assert mec.pull('b', targets=0) == [3453]
assert mec.pull(('a', 'b')) == [[1.03234, 3453]] * 4
assert mec.zip_pull(('a', 'b')) == [(1.03234,) * 4, (3453,) * 4]
mec.push(dict(c='speed'))
assert [x['stdout'] for x in mec.execute('print(c)')] == ['speed\n'] * 4
mec.block = False
pr = mec.pull('a')
assert pr.r == [1.03234] * 4
mec.block = True

def f(x):
    return 2.0 * x**4

mec.push_function(dict(f=f))
mec.execute('y = f(4.0)')
assert [x['stdout'] for x in mec.execute('print(y)')] == ['512.0\n'] * 4

# Dictionary interface
mec['a'] = ['foo', 'bar']
assert mec['a'] == [['foo', 'bar']] * 4

# Scatter and gather
assert mec.scatter('a', range(16)) == [None] * 4
assert [x['stdout'] for x in mec.execute('print(a)')] == [
    '[0, 1, 2, 3]\n', '[4, 5, 6, 7]\n', '[8, 9, 10, 11]\n', '[12, 13, 14, 15]\n']
assert mec.gather('a') == list(range(16))

# Parallel list comprehensions
mec.scatter('x', range(64))
mec.execute('y = [i**10 for i in x]')
assert mec.gather('y') == [i**10 for i in range(64)]

# Parallel exceptions
try:
    mec.execute('1/0')
except client.CompositeError as e:
    assert str(e).count('ZeroDivisionError: division by zero') == 4, str(e)
    try:
        e.raise_exception()
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError('raise_exception did not raise the original type')
    import io, contextlib
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        e.print_tracebacks()
    assert '1/0' in out.getvalue(), out.getvalue()
else:
    raise AssertionError('no CompositeError')

# The mapper and a get_result of the last execution
m = mec.mapper(targets=[1, 3])
assert m.map(abs, [-1, -2, -3]) == [1, 2, 3]
assert [r['id'] for r in mec.get_result()] == [0, 1, 2, 3]
print('SEED OK')
"""


class SynchronousClientTests(TestCase):
    timeout = 300

    @inlineCallbacks
    def test_seed_multiengine_examples(self):
        """Every example of the original MultiEngine chapter works in Python 3 form."""
        cluster = Cluster(self, n=4)
        yield cluster.start()
        result = cluster.run_script(SEED_EXAMPLES)
        self.assertIn("SEED OK", result.stdout)

    @inlineCallbacks
    def test_interrupt_fork_and_reactor_thread(self):
        """Ctrl-C interrupts a blocking call at once; misuse gives clear errors, not hangs."""
        cluster = Cluster(self, n=1)
        yield cluster.start()
        result = cluster.run_script(
            r"""
            import os, signal, threading, time
            from ipkernel import client
            mec = client.MultiEngineClient()
            main = threading.main_thread().ident
            threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
            start = time.monotonic()
            try:
                mec.execute('import time; time.sleep(3)')
            except KeyboardInterrupt:
                waited = time.monotonic() - start
                assert waited < 2.5, waited
            else:
                raise AssertionError('no KeyboardInterrupt')
            # The client is still usable (the engine finishes its sleep first).
            assert mec.pull('id') == [0]

            # A blocking call from the reactor thread is refused, not a deadlock.
            bridge = mec._bridge
            errors = []
            def in_reactor():
                try:
                    mec.get_ids()
                except client.ClientUnusable as exc:
                    errors.append(exc)
            threading.Thread(target=lambda: None).start()
            done = threading.Event()
            bridge.reactor.callFromThread(lambda: (in_reactor(), done.set()))
            assert done.wait(10)
            assert errors and 'reactor thread' in str(errors[0]), errors

            # After fork the child gets a clear error.
            pid = os.fork()
            if pid == 0:
                try:
                    mec.get_ids()
                except client.ClientUnusable:
                    os._exit(0)
                os._exit(1)
            assert os.waitpid(pid, 0)[1] == 0
            print('MISUSE OK')
            """
        )
        self.assertIn("MISUSE OK", result.stdout)

    @inlineCallbacks
    def test_several_clients_and_flush(self):
        """Two client processes share the engines; one's flush never touches the other's."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        result = cluster.run_script(
            r'''
            import subprocess, sys
            from ipkernel import client
            mec = client.MultiEngineClient()
            mine = mec.execute('import time; time.sleep(0.3); mine = 1', block=False)
            other = subprocess.run([sys.executable, '-c', """
            from ipkernel import client
            mec = client.MultiEngineClient()
            pr = mec.execute('theirs = 2', block=False)
            mec.flush()
            try:
                pr.get_result()
            except client.IPKernelError as exc:
                assert 'flush' in str(exc)
            else:
                raise AssertionError('flushed result still there')
            print(mec.pull('theirs'))
            """.replace('\n            ', '\n')], capture_output=True, text=True)
            assert other.returncode == 0, other.stderr
            assert other.stdout.strip() == '[2, 2]', other.stdout
            assert [r['number'] for r in mine.r] == [1, 1]
            assert mec.pull('mine') == [1, 1]
            print('CLIENTS OK')
            '''
        )
        self.assertIn("CLIENTS OK", result.stdout)


class _Broker:
    def __init__(self, transport: object, waiting: dict) -> None:
        self.transport = transport
        self.waitingForAnswers = waiting


class ServedConnectionsTests(SynchronousTestCase):
    def test_only_connections_owing_an_answer_are_served(self):
        """A caller waiting for an answer reads only the connections of the blocking
        clients that owe one (its own call's): the others stay with the reactor."""
        bridge = object.__new__(ReactorBridge)
        bridge._connections = weakref.WeakSet()
        owing, idle, closed = _Broker("t1", {1: None}), _Broker("t2", {}), _Broker(None, {2: None})
        for broker in (owing, idle, closed):
            bridge.serve(broker)
        transports = bridge._transports()
        owing.waitingForAnswers.clear()
        idle.waitingForAnswers[3] = None  # the call starts before they are read
        self.assertEqual(list(transports), ["t2"])
