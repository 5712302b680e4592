"""Streams of large payloads through real brokers in memory: client ⇄ relay ⇄ engine.

Three brokers as in a cluster: a client-side broker for the client, two server-side
(relaying) brokers for the controller, and a client-side broker for the engine, joined by
``twisted.test.iosim`` pumps. The "controller" object forwards what it gets without
looking inside, as the real controller does.
"""

from __future__ import annotations

import gc

import numpy as np
from twisted.internet.defer import Deferred, gatherResults
from twisted.spread import pb
from twisted.spread.jelly import InsecureJelly
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from ipkernel.errors import SerializationError, TransferError
from ipkernel.serialization import deserialize, dump
from ipkernel.wire import broker as broker_module
from ipkernel.wire import buffers, kept, outgoing, received, relay, stream_protocol, stream_table
from ipkernel.wire.broker import Broker, ClientFactory, ServerFactory
from ipkernel.wire.outgoing import OutgoingPayload
from ipkernel.wire.received import ReceivedPayload
from ipkernel.wire.relay import RelayedPayload


class Refused(pb.Error):
    """What the test objects answer when a transfer failed (pb.Error: not logged)."""


def refused(failure):
    raise Refused(failure.getErrorMessage())


class Engine(pb.Referenceable):
    """The receiving end: takes payloads whole, gives large results."""

    def __init__(self) -> None:
        self.taken: list[object] = []
        self.given: list[OutgoingPayload] = []

    def remote_take(self, payload: object) -> Deferred:
        d = payload.when_received()
        d.addCallback(lambda p: self.taken.append(deserialize(p)) or len(self.taken))
        return d.addErrback(refused)

    def remote_give(self, nbytes: int, seed: int = 0, ints: int = 0) -> OutgoingPayload:
        value = {"arr": array(nbytes, seed), "ints": list(range(ints))}
        payload = OutgoingPayload(dump(value))
        self.given.append(payload)
        return payload


class Controller(pb.Referenceable):
    """The middle: forwards payloads between the client and the engines untouched."""

    def __init__(self, engines: list[pb.RemoteReference]) -> None:
        self.engines = engines
        self.engine = engines[0] if engines else None
        self.seen: list[object] = []
        self.hold = False
        self.held: list[object] = []

    def remote_push(self, payload: object) -> Deferred | None:
        self.seen.append(type(payload))
        if self.hold:
            self.held.append(payload)
            return None
        return self.engine.callRemote("take", payload).addErrback(refused)

    def remote_push_all(self, payload: object) -> Deferred:
        """Forward one payload to every engine (the core's fan-out of one command)."""
        self.seen.append(type(payload))
        calls = [engine.callRemote("take", payload) for engine in self.engines]
        return gatherResults(calls, consumeErrors=True).addErrback(
            lambda f: refused(f.value.subFailure)
        )

    def remote_push_each(self, payloads: list) -> Deferred:
        """``payloads[i]`` to engine i (the core's ``call_each``)."""
        self.seen.append([type(p) for p in payloads])
        calls = [e.callRemote("take", p) for e, p in zip(self.engines, payloads, strict=True)]
        return gatherResults(calls, consumeErrors=True).addErrback(
            lambda f: refused(f.value.subFailure)
        )

    def remote_pull(self, *args: object) -> Deferred:
        return self.engine.callRemote("give", *args).addErrback(refused)

    def remote_keep(self, payload: object) -> Deferred:
        """Keep a payload here (as a task body is kept); fires with its size."""

        def held(kept_payload: kept.KeptPayload) -> int:
            self.kept = kept_payload
            return kept_payload.nbytes

        return kept.keep(payload).addCallbacks(held, refused)

    def remote_send_kept(self) -> Deferred:
        """Send the kept payload on to the engine, as a new stream."""
        return self.engine.callRemote("take", self.kept.sendable(False)).addErrback(refused)


def brokers() -> tuple[Broker, Broker]:
    """A server-side (relaying) and a client-side (receiving) broker, not connected."""
    server = ServerFactory(pb.Root()).buildProtocol(None)
    client = ClientFactory().buildProtocol(None)
    return server, client


def connect(server: Broker, client: Broker, login: bool = True):
    """Join two brokers in memory; with ``login`` both count as logged in."""
    _, _, pump = connectedServerAndClient(lambda: server, lambda: client)
    pump.flush()
    if login:
        server.raise_limits()
        client.raise_limits()
    return pump


class Chain:
    """client broker ⇄ controller (relaying brokers) ⇄ ``engines`` engine brokers.

    ``back``, ``engine_broker`` and ``engine`` are the first engine's.
    """

    def __init__(self, engines: int = 1) -> None:
        self.front, self.client = brokers()
        self.backs: list[Broker] = []
        self.engine_brokers: list[Broker] = []
        self.engines: list[Engine] = []
        self.pumps = [connect(self.front, self.client)]
        for _ in range(engines):
            back, engine_broker = brokers()
            self.pumps.append(connect(back, engine_broker))
            engine = Engine()
            engine_broker.setNameForLocal("engine", engine)
            self.backs.append(back)
            self.engine_brokers.append(engine_broker)
            self.engines.append(engine)
        self.back, self.engine_broker, self.engine = (
            self.backs[0],
            self.engine_brokers[0],
            self.engines[0],
        )
        self.controller = Controller([back.remoteForName("engine") for back in self.backs])
        self.front.setNameForLocal("controller", self.controller)
        self.remote = self.client.remoteForName("controller")
        self.peak_held = 0

    def held(self) -> int:
        """What the controller's brokers hold for the streams they relay."""
        return sum(b.streams.stats()["held"] for b in (self.front, *self.backs))

    def flush(self, steps: int = 100000) -> None:
        """Pump until quiet, recording the most the controller held at any step."""
        for _ in range(steps):
            moved = False
            for pump in self.pumps:
                moved = pump.pump() or moved
            self.peak_held = max(self.peak_held, self.held())
            if not moved:
                return
        raise AssertionError("the chain never went quiet")

    def streams_open(self) -> int:
        brokers = (self.client, self.front, *self.backs, *self.engine_brokers)
        return sum(b.streams.stats()["incoming"] + b.streams.stats()["outgoing"] for b in brokers)


def array(nbytes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(nbytes // 8)


def patch_flow(test: SynchronousTestCase, name: str, value: int) -> None:
    """Set the stream constant ``name`` for the test, in every module that reads it."""
    for module in (stream_protocol, outgoing, received, relay, stream_table):
        if hasattr(module, name):
            test.patch(module, name, value)


class StreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Small chunks and windows, so that a few hundred kilobytes exercise everything.
        patch_flow(self, "CHUNK", 16 * 1024)
        patch_flow(self, "ACK_EVERY", 16 * 1024)
        patch_flow(self, "WINDOW", 64 * 1024)
        patch_flow(self, "FIRST_CREDIT", 16 * 1024)
        patch_flow(self, "RELAY_BUDGET", 128 * 1024)

    def chain(self, engines: int = 1) -> Chain:
        chain = Chain(engines)
        for broker in (chain.client, chain.front, *chain.backs, *chain.engine_brokers):
            broker.streams.window = stream_protocol.WINDOW
        return chain

    def test_push_through_the_relay(self) -> None:
        """A large object streams client → controller → engine and arrives equal.

        The controller sees only a RelayedPayload and holds at most a window or two of
        the stream at any time; every stream is closed at the end.
        """
        chain = self.chain()
        data = array(1_000_000)
        payload = OutgoingPayload(dump({"a": data}))
        d = chain.remote.callRemote("push", payload)
        chain.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(chain.controller.seen, [RelayedPayload])
        self.assertTrue(np.array_equal(chain.engine.taken[0]["a"], data))
        self.assertLessEqual(chain.peak_held, stream_protocol.WINDOW + stream_protocol.CHUNK)
        self.assertEqual(chain.streams_open(), 0)
        sent = payload.when_sent()
        self.successResultOf(sent)

    def test_pull_through_the_relay(self) -> None:
        """A large result streams engine → controller → client, in-band pickles included."""
        chain = self.chain()
        d = chain.remote.callRemote("pull", 300_000, 1, 50_000)
        chain.flush()
        got = self.successResultOf(d)
        self.assertIsInstance(got, ReceivedPayload)
        self.assertTrue(got.received)
        back = deserialize(got)
        self.assertEqual(back["ints"], list(range(50_000)))
        self.assertTrue(np.array_equal(back["arr"], array(300_000, 1)))
        self.assertTrue(back["arr"].flags.writeable)
        self.assertEqual(chain.streams_open(), 0)

    def test_kept_in_the_controller_and_sent_again(self) -> None:
        """A stream kept whole in the controller (a task body) is decrypted into its own
        buffers in place, chunk by chunk, and can be sent on, more than once."""
        filled = []
        self.patch(kept, "fill_parts", lambda *a: filled.append(a) or buffers.fill_parts(*a))
        self.patch(broker_module, "_DIRECT_MIN", 4096)  # this test's chunks are small
        chain = self.chain()
        # Bytes reach the controller in small reads, as TLS records do: a chunk's header
        # comes before its data, which can then be put in place.
        whole = chain.front.dataReceived

        def in_pieces(data: bytes) -> None:
            for start in range(0, len(data), 4096):
                whole(data[start : start + 4096])

        chain.front.dataReceived = in_pieces
        data = array(1_000_000)
        d = chain.remote.callRemote("keep", OutgoingPayload(dump({"a": data})))
        chain.flush()
        self.assertGreater(self.successResultOf(d), data.nbytes)
        # Of 62 chunks only two are copied: the first, which spans two parts (the pickle
        # stream and the array), and the last, too short to be put in place.
        self.assertLessEqual(len(filled), 2)
        for n in (1, 2):
            d = chain.remote.callRemote("send_kept")
            chain.flush()
            self.assertEqual(self.successResultOf(d), n)
            np.testing.assert_array_equal(chain.engine.taken[-1]["a"], data)
        self.assertEqual(chain.streams_open(), 0)
        chain.controller.kept.close()
        self.assertRaises(TransferError, chain.controller.kept.sendable, False)

    def test_small_result_goes_inline(self) -> None:
        """Without a connection an outgoing payload is plain frames (jelly outside PB)."""
        from twisted.spread.jelly import jelly, unjelly

        payload = OutgoingPayload(dump([1, 2, 3]))
        frames = unjelly(jelly(payload))
        self.assertEqual(deserialize(frames), [1, 2, 3])
        self.successResultOf(payload.when_sent())

    def test_receiver_disconnects_midway(self) -> None:
        """The engine's connection drops mid-push: the client's stream is aborted and the
        controller frees what it held."""
        chain = self.chain()
        payload = OutgoingPayload(dump(array(2_000_000)))
        d = chain.remote.callRemote("push", payload)
        for _ in range(20):
            for pump in chain.pumps:
                pump.pump()
        self.assertNoResult(d)
        chain.engine_broker.transport.loseConnection()
        chain.flush()
        self.failureResultOf(d)
        self.successResultOf(payload.when_sent())
        self.assertEqual(chain.front.streams.stats(), {"incoming": 0, "outgoing": 0, "held": 0})
        self.assertEqual(chain.client.streams.stats()["outgoing"], 0)

    def test_sender_disconnects_midway(self) -> None:
        """The client's connection drops mid-push: the engine's partial payload fails and
        is dropped, and nothing stays open on the controller."""
        chain = self.chain()
        payload = OutgoingPayload(dump(array(2_000_000)))
        chain.remote.callRemote("push", payload).addErrback(lambda f: None)
        for _ in range(20):
            for pump in chain.pumps:
                pump.pump()
        [incoming] = chain.engine_broker.streams.incoming.values()
        waiting = incoming.when_received()
        chain.client.transport.loseConnection()
        chain.flush()
        self.failureResultOf(waiting, TransferError)
        self.assertRaises(TransferError, incoming.open)
        self.assertEqual(incoming._parts, [])
        self.assertEqual(chain.engine.taken, [])
        self.assertEqual(chain.streams_open(), 0)

    def test_client_disconnects_during_pull(self) -> None:
        """The client goes away while a result streams to it: the engine's stream ends."""
        chain = self.chain()
        d = chain.remote.callRemote("pull", 2_000_000)
        d.addErrback(lambda f: None)
        for _ in range(30):
            for pump in chain.pumps:
                pump.pump()
        [given] = chain.engine.given
        sent = given.when_sent()
        chain.client.transport.loseConnection()
        chain.flush()
        self.successResultOf(sent)  # released: the engine may run its next command
        self.assertEqual(chain.streams_open(), 0)

    def test_dropped_payload_is_aborted(self) -> None:
        """A relayed payload the controller lets go of, unforwarded, stops its sender."""
        chain = self.chain()
        chain.controller.hold = True
        payload = OutgoingPayload(dump(array(1_000_000)))
        chain.remote.callRemote("push", payload)
        chain.flush()
        self.assertLessEqual(chain.front.streams.stats()["held"], stream_protocol.WINDOW)
        self.assertNoResult(payload.when_sent())
        chain.controller.held.clear()
        gc.collect()
        chain.flush()
        self.successResultOf(payload.when_sent())
        self.assertEqual(chain.streams_open(), 0)

    def test_relay_budget_bounds_many_streams(self) -> None:
        """However many streams wait at the controller (their commands queued), what it
        holds stays within a small multiple of the relay budget, not a window each; and
        once released they all complete."""
        patch_flow(self, "WINDOW", 1024 * 1024)
        chain = self.chain()
        chain.controller.hold = True
        payloads = [OutgoingPayload(dump(array(400_000, seed=i))) for i in range(12)]
        for payload in payloads:
            chain.remote.callRemote("push", payload)
        chain.flush()
        held = chain.front.streams.stats()["held"]
        self.assertGreater(held, 0)
        self.assertLessEqual(held, 3 * stream_protocol.RELAY_BUDGET)
        self.assertLess(held, 12 * stream_protocol.WINDOW // 4)
        engine = chain.controller.engine
        done = [engine.callRemote("take", p) for p in chain.controller.held]
        chain.flush()
        self.assertEqual(sorted(self.successResultOf(d) for d in done), list(range(1, 13)))
        self.assertEqual(chain.streams_open(), 0)

    def test_fan_out_sends_each_byte_once(self) -> None:
        """One payload for three engines crosses the client's connection once; the
        controller forwards each chunk to all three, holding no more than a window or two,
        and every stream is closed at the end."""
        chain = self.chain(engines=3)
        sent = self.count_sent(chain.client)
        data = array(1_000_000)
        payload = OutgoingPayload(dump({"a": data}))
        d = chain.remote.callRemote("push_all", payload)
        chain.flush()
        self.assertEqual(self.successResultOf(d), [1, 1, 1])
        self.assertEqual(chain.controller.seen, [RelayedPayload])
        for engine in chain.engines:
            np.testing.assert_array_equal(engine.taken[0]["a"], data)
        self.assertEqual(sent, [payload.nbytes])
        self.assertLessEqual(chain.peak_held, stream_protocol.WINDOW + stream_protocol.CHUNK)
        self.assertEqual(chain.streams_open(), 0)
        self.successResultOf(payload.when_sent())

    def test_one_payload_in_several_places_is_sent_once(self) -> None:
        """The same payload object given for several engines in one message is sent once;
        the controller sees one RelayedPayload in each place and fans it out."""
        chain = self.chain(engines=3)
        sent = self.count_sent(chain.client)
        data = array(600_000)
        payload = OutgoingPayload(dump({"a": data}))
        d = chain.remote.callRemote("push_each", [payload] * 3)
        chain.flush()
        self.assertEqual(self.successResultOf(d), [1, 1, 1])
        self.assertEqual(chain.controller.seen, [[RelayedPayload] * 3])
        for engine in chain.engines:
            np.testing.assert_array_equal(engine.taken[0]["a"], data)
        self.assertEqual(sent, [payload.nbytes])
        self.assertEqual(chain.streams_open(), 0)

    def test_fan_out_keeps_the_bytes_for_a_later_destination(self) -> None:
        """While the controller still holds the payload (a command waits in a busy
        engine's queue), the stream completes to the engines it was forwarded to and the
        relay keeps every byte for the one still to come; once that one has it and the
        payload is let go, nothing is held."""
        chain = self.chain(engines=2)
        chain.controller.hold = True
        data = array(500_000)
        payload = OutgoingPayload(dump({"a": data}))
        chain.remote.callRemote("push", payload)
        chain.flush()
        [relayed] = chain.controller.held
        first = chain.controller.engines[0].callRemote("take", relayed)
        chain.flush()
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual(chain.held(), payload.nbytes)
        self.successResultOf(payload.when_sent())  # the client is done
        second = chain.controller.engines[1].callRemote("take", relayed)
        chain.flush()
        self.assertEqual(self.successResultOf(second), 1)
        np.testing.assert_array_equal(chain.engines[1].taken[0]["a"], data)
        del relayed
        chain.controller.held.clear()
        gc.collect()
        self.assertEqual(chain.held(), 0)
        self.assertEqual(chain.streams_open(), 0)

    def test_fan_out_survives_an_engine_leaving(self) -> None:
        """An engine's connection drops while a payload fans out: the other engines get
        it whole, the client's stream completes, nothing stays open."""
        chain = self.chain(engines=3)
        payload = OutgoingPayload(dump({"a": array(2_000_000)}))
        calls = [chain.remote.callRemote("push_all", payload)]
        calls[0].addErrback(lambda f: None)
        for _ in range(10):
            for pump in chain.pumps:
                pump.pump()
        chain.engine_brokers[1].transport.loseConnection()
        chain.flush()
        self.assertEqual([len(e.taken) for e in chain.engines], [1, 0, 1])
        self.successResultOf(payload.when_sent())
        self.assertEqual(chain.held(), 0)
        self.assertEqual(chain.streams_open(), 0)

    def test_fan_out_aborts_when_every_engine_leaves(self) -> None:
        """When every destination has gone the sender is told to stop."""
        chain = self.chain(engines=2)
        payload = OutgoingPayload(dump({"a": array(2_000_000)}))
        chain.remote.callRemote("push_all", payload).addErrback(lambda f: None)
        for _ in range(10):
            for pump in chain.pumps:
                pump.pump()
        for engine_broker in chain.engine_brokers:
            engine_broker.transport.loseConnection()
        chain.flush()
        self.successResultOf(payload.when_sent())
        self.assertEqual(chain.client.streams.stats()["outgoing"], 0)
        self.assertEqual(chain.front.streams.stats(), {"incoming": 0, "outgoing": 0, "held": 0})

    def test_kept_payload_is_not_forwarded(self) -> None:
        """A payload the controller keeps whole cannot also be forwarded."""
        chain = self.chain()
        chain.controller.hold = True
        chain.remote.callRemote("push", OutgoingPayload(dump(array(200_000))))
        chain.flush()
        [relayed] = chain.controller.held
        keeping = kept.keep(relayed)
        forwarded = chain.controller.engine.callRemote("take", relayed)
        self.failureResultOf(forwarded, TransferError)
        chain.flush()
        self.assertIsInstance(self.successResultOf(keeping), kept.KeptPayload)

    @staticmethod
    def count_sent(client: Broker) -> list[int]:
        """Each stream's payload bytes ``client`` sends, listed as each stream ends."""
        streams: dict[int, int] = {}
        ended: list[int] = []
        send_data = client.streams.send_data

        def counting(sid: int, offset: int, data: object) -> None:
            streams[sid] = streams.get(sid, 0) + memoryview(data).nbytes
            send_data(sid, offset, data)

        def forget(sid: int) -> None:
            if sid in streams:
                ended.append(streams.pop(sid))
            forget_outgoing(sid)

        forget_outgoing = client.streams.forget_outgoing
        client.streams.send_data = counting
        client.streams.forget_outgoing = forget
        return ended

    def test_out_of_order_chunk_aborts(self) -> None:
        """A chunk at the wrong offset aborts the stream on the receiving side."""
        chain = self.chain()
        chain.controller.hold = True
        chain.remote.callRemote("push", OutgoingPayload(dump(array(200_000))))
        chain.flush()
        [relayed] = chain.controller.held
        d = chain.controller.engine.callRemote("take", relayed)
        chain.flush()
        self.assertEqual(self.successResultOf(d), 1)
        # A stream the engine does not know: answered with an abort, then ignored.
        chain.back.streams.send_data(999, 0, b"x")
        chain.flush()

    def test_bad_header_fails_the_payload(self) -> None:
        """A stream whose header is not ours is refused by the receiver, nothing runs."""
        broker = Broker(isClient=True)
        payload = ReceivedPayload(broker.streams, 7, 10, b"not a header")
        self.assertRaises(TransferError, payload.open)
        self.failureResultOf(payload.when_received(), TransferError)

    def test_streams_need_login(self) -> None:
        """Before login a stream reference is refused, and so are stream messages."""
        server, client = brokers()
        pump = connect(server, client, login=False)
        client.raise_limits()  # the client thinks it logged in; the server does not
        server.setNameForLocal("root", Controller(None))  # type: ignore[arg-type]
        d = client.remoteForName("root").callRemote("push", OutgoingPayload(dump(array(200_000))))
        pump.flush()
        self.failureResultOf(d)
        self.assertEqual(len(self.flushLoggedErrors(InsecureJelly)), 1)


class SerializedTests(SynchronousTestCase):
    def test_dump_keeps_views(self) -> None:
        """dump() does not copy out-of-band buffers; frames() and load() agree."""
        data = np.arange(100_000, dtype=np.float64)
        ser = dump({"d": data})
        self.assertEqual(ser.nbytes, sum(ser.lengths))
        self.assertEqual(len(ser.parts), 2)
        self.assertEqual(ser.parts[1].nbytes, data.nbytes)
        data[0] = 42.0  # the view sees it: nothing was copied
        self.assertEqual(np.frombuffer(ser.parts[1], dtype=np.float64)[0], 42.0)
        self.assertEqual(deserialize(ser.frames())["d"][0], 42.0)

    def test_load_checks_parts(self) -> None:
        """load() refuses parts that do not match the header."""
        from ipkernel.serialization import load

        ser = dump(np.zeros(10))
        self.assertTrue(np.array_equal(load(ser.header, ser.parts), np.zeros(10)))
        self.assertRaises(SerializationError, load, ser.header, ser.parts[:1])
        self.assertRaises(SerializationError, load, ser.header, [ser.parts[0], b"short"])
