"""Tests for ipkernel.serialization: frames, chunking, objects and remote failures."""

from __future__ import annotations

import struct
import sys
import threading
import types

import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from ipkernel import serialization
from ipkernel.errors import RemoteError, SerializationError
from ipkernel.frames import CHUNK_SIZE, frames_nbytes
from ipkernel.serialization import (
    deserialize,
    deserialize_failure,
    serialize,
    serialize_failure,
)


def roundtrip(obj: object) -> object:
    return deserialize(serialize(obj))


def main_namespace(source: str) -> dict:
    """Run ``source`` in a fresh namespace named ``__main__``, as an engine cell would."""
    namespace: dict = {"__name__": "__main__"}
    exec(compile(source, "<cell>", "exec"), namespace)
    return namespace


def raised(exc_type: type[BaseException], fn, *args) -> BaseException:
    try:
        fn(*args)
    except exc_type as exc:
        return exc
    raise AssertionError(f"{exc_type.__name__} not raised")


def header_lengths(frames: list[bytes]) -> list[int]:
    """The pickle stream length and the buffer lengths that the header announces."""
    _, _, _, nbuffers, stream_len = struct.unpack_from("<4sBBxxIQ", frames[0])
    return [stream_len, *struct.unpack_from(f"<{nbuffers}Q", frames[0], 20)]


class FramesTests(SynchronousTestCase):
    """The shape of frames."""

    def test_frames_are_bytes(self) -> None:
        """serialize() returns a list of bytes: a header, then at least one chunk."""
        frames = serialize({"a": 1})
        self.assertIsInstance(frames, list)
        self.assertGreaterEqual(len(frames), 2)
        for frame in frames:
            self.assertIs(type(frame), bytes)

    def test_frames_nbytes(self) -> None:
        """frames_nbytes() is the sum of the frames' lengths, header included."""
        frames = serialize(list(range(100)))
        self.assertEqual(frames_nbytes(frames), sum(len(f) for f in frames))
        self.assertEqual(frames_nbytes([]), 0)

    def test_header_is_a_struct(self) -> None:
        """The header is a small struct (magic, lengths), not a pickle."""
        frames = serialize(np.zeros(3))
        self.assertTrue(frames[0].startswith(b"IPKF"))
        self.assertEqual(len(frames[0]), 20 + 8)  # fixed part + one buffer length
        self.assertEqual(header_lengths(frames)[1], 24)

    def test_chunks_span_parts(self) -> None:
        """Chunks are CHUNK_SIZE bytes except the last, even across buffer boundaries."""
        arrays = [
            np.ones(CHUNK_SIZE - 10, dtype=np.uint8),
            np.full(20, 2, dtype=np.uint8),
            np.full(CHUNK_SIZE, 3, dtype=np.uint8),
            np.full(7, 4, dtype=np.uint8),
        ]
        frames = serialize(arrays)
        lengths = header_lengths(frames)
        self.assertEqual(lengths[1:], [CHUNK_SIZE - 10, 20, CHUNK_SIZE, 7])
        total = sum(lengths)
        self.assertEqual(len(frames) - 1, -(-total // CHUNK_SIZE))
        self.assertEqual([len(f) for f in frames[1:-1]], [CHUNK_SIZE] * (len(frames) - 2))
        back = deserialize(frames)
        for original, copy in zip(arrays, back, strict=True):
            np.testing.assert_array_equal(copy, original)

    def test_many_small_buffers_few_frames(self) -> None:
        """Ten thousand tiny arrays still make only a handful of frames."""
        arrays = [np.arange(4, dtype=np.int64) + i for i in range(10_000)]
        frames = serialize(arrays)
        self.assertLessEqual(len(frames), 1 + -(-frames_nbytes(frames) // CHUNK_SIZE))
        back = deserialize(frames)
        self.assertEqual(len(back), 10_000)
        np.testing.assert_array_equal(back[9_999], arrays[9_999])

    def test_accepts_bytes_like_frames(self) -> None:
        """Frames given as bytearray or memoryview deserialize like bytes."""
        frames = serialize({"x": np.arange(5)})
        mixed = [bytearray(frames[0])] + [memoryview(f) for f in frames[1:]]
        np.testing.assert_array_equal(deserialize(mixed)["x"], np.arange(5))


class RoundTripTests(SynchronousTestCase):
    """Objects come back equal to what was sent."""

    def test_plain_data(self) -> None:
        """Ints, floats, strings, bytes, None and containers round-trip unchanged."""
        for obj in [0, -(2**100), 1.5, "héllo", b"\x00\xff", None, True, (1, "a"), {1, 2}]:
            self.assertEqual(roundtrip(obj), obj)

    def test_nested(self) -> None:
        """Nested dicts and lists round-trip unchanged."""
        obj = {"a": [1, {"b": (2, 3.0, [None, "x" * 1000])}], "c": {"d": {"e": []}}}
        self.assertEqual(roundtrip(obj), obj)

    def test_large_plain_data(self) -> None:
        """Plain data larger than one chunk is cut into chunks and rebuilt."""
        obj = list(range(300_000))
        frames = serialize(obj)
        self.assertGreater(len(frames), 2)
        self.assertEqual(deserialize(frames), obj)

    def test_numpy_array(self) -> None:
        """A numpy array comes back equal, with its dtype and shape, and writable."""
        a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        b = roundtrip(a)
        self.assertEqual(b.dtype, a.dtype)
        self.assertEqual(b.shape, a.shape)
        np.testing.assert_array_equal(b, a)
        self.assertTrue(b.flags.writeable)
        b[0, 0, 0] = 99
        self.assertEqual(a[0, 0, 0], 0)

    def test_numpy_read_only(self) -> None:
        """With readonly, an array comes back read-only on the received memory: a write
        raises, and the flag cannot be turned back on; without, the same frames give a
        writable array."""
        frames = serialize({"a": np.arange(100_000.0)})
        a = deserialize(frames, readonly=True)["a"]
        self.assertFalse(a.flags.writeable)
        self.assertIn("read-only", str(raised(ValueError, a.__setitem__, 0, 1.0)))

        def make_writable() -> None:
            a.flags.writeable = True

        raised(ValueError, make_writable)
        np.testing.assert_array_equal(a, np.arange(100_000.0))
        self.assertTrue(deserialize(frames)["a"].flags.writeable)

    def test_numpy_zero_dimensional(self) -> None:
        """A 0-d array round-trips as a 0-d array."""
        b = roundtrip(np.array(5.25))
        self.assertEqual(b.shape, ())
        self.assertEqual(float(b), 5.25)

    def test_numpy_non_contiguous(self) -> None:
        """A strided view and a Fortran-ordered array round-trip with equal values."""
        base = np.arange(100, dtype=np.int64).reshape(10, 10)
        view = base[::2, 1::3]
        np.testing.assert_array_equal(roundtrip(view), view)
        fortran = np.asfortranarray(base)
        back = roundtrip(fortran)
        np.testing.assert_array_equal(back, fortran)
        self.assertTrue(back.flags.f_contiguous)

    def test_numpy_structured(self) -> None:
        """A structured dtype round-trips with its fields."""
        dtype = np.dtype([("name", "U10"), ("x", "<f8"), ("n", "<i4")])
        a = np.array([("a", 1.5, 3), ("bb", -2.0, 7)], dtype=dtype)
        b = roundtrip(a)
        self.assertEqual(b.dtype, dtype)
        self.assertEqual(b["name"].tolist(), ["a", "bb"])
        np.testing.assert_array_equal(b["x"], a["x"])

    def test_numpy_large_array(self) -> None:
        """A 20 MB array spans many chunks, each at most CHUNK_SIZE, and is sent once."""
        a = np.random.default_rng(0).random(20 * 1024 * 1024 // 8)
        frames = serialize(a)
        self.assertGreater(len(frames), 30)
        self.assertTrue(all(len(f) <= CHUNK_SIZE for f in frames))
        # Out of band: the payload is the array's bytes plus a small pickle stream.
        self.assertLess(frames_nbytes(frames), a.nbytes + 1024)
        b = deserialize(frames)
        np.testing.assert_array_equal(b, a)
        self.assertTrue(b.flags.writeable)

    def test_lambda_and_closure(self) -> None:
        """Lambdas and closures travel by value and keep their captured values."""
        offset = 10

        def add(x: int) -> int:
            return x + offset

        self.assertEqual(roundtrip(lambda x: x * 3)(2), 6)
        self.assertEqual(roundtrip(add)(1), 11)

    def test_main_function_and_class(self) -> None:
        """Functions and classes defined in a __main__ namespace travel by value."""
        ns = main_namespace(
            "k = 5\n"
            "def f(x):\n    return x + k\n"
            "class Point:\n    def __init__(self, x):\n        self.x = x\n"
        )
        self.assertEqual(ns["f"].__module__, "__main__")
        self.assertEqual(roundtrip(ns["f"])(1), 6)
        point = roundtrip(ns["Point"](7))
        self.assertEqual(point.x, 7)
        self.assertEqual(type(point).__name__, "Point")


class SerializationErrorTests(SynchronousTestCase):
    """What cannot be serialized or read gives a clear SerializationError."""

    def test_generator(self) -> None:
        """A generator cannot be pickled; the message names its type and the key."""
        exc = raised(SerializationError, serialize, (i for i in range(3)), "g")
        self.assertIsInstance(exc, TypeError)
        self.assertIn("'g'", str(exc))
        self.assertIn("'generator'", str(exc))

    def test_lock_inside_container(self) -> None:
        """A lock inside a dict: the message names the dict and the lock's type."""
        exc = raised(SerializationError, serialize, {"lock": threading.Lock()}, "state")
        message = str(exc)
        self.assertIn("'state'", message)
        self.assertIn("'dict'", message)
        self.assertIn("lock", message)

    def test_without_name(self) -> None:
        """Without a name the message still names the type."""
        exc = raised(SerializationError, serialize, threading.Lock())
        self.assertIn("_thread.lock", str(exc))

    def assertMalformed(self, frames: object, *words: str) -> None:
        exc = raised(SerializationError, deserialize, frames)
        self.assertIn("malformed frames", str(exc))
        for word in words:
            self.assertIn(word, str(exc))

    def test_malformed_container(self) -> None:
        """Frames that are not a non-empty list or tuple are refused."""
        self.assertMalformed([], "non-empty list")
        self.assertMalformed(b"abc", "non-empty list")
        self.assertMalformed(None, "non-empty list")

    def test_malformed_header(self) -> None:
        """A short, foreign or mis-sized header is refused with the reason."""
        frames = serialize(1)
        self.assertMalformed(["header", *frames[1:]], "header")
        self.assertMalformed([b"IPK", *frames[1:]], "bytes")
        self.assertMalformed([b"XXXX" + frames[0][4:], *frames[1:]], "magic")
        self.assertMalformed([frames[0] + b"\x00", *frames[1:]], "header's size")

    def test_wrong_version(self) -> None:
        """A header of another format version is refused, naming both versions."""
        frames = serialize(1)
        header = frames[0][:4] + bytes([99]) + frames[0][5:]
        self.assertMalformed([header, *frames[1:]], "version 99")

    def test_missing_or_extra_chunks(self) -> None:
        """Chunk counts that disagree with the header are refused."""
        frames = serialize(list(range(200_000)))
        self.assertMalformed(frames[:-1], "chunks came")
        self.assertMalformed([*frames, b"x"], "chunks came")

    def test_wrong_chunk_size(self) -> None:
        """A chunk of the wrong size or type is refused, naming the chunk."""
        frames = serialize(list(range(200_000)))
        self.assertMalformed([frames[0], frames[1][:-1], *frames[2:]], "chunk 0")
        self.assertMalformed([frames[0], "text", *frames[2:]], "chunk 0")

    def test_kind_mismatch(self) -> None:
        """Failure frames are not objects, and object frames are not failures."""
        failure = serialize_failure(ValueError("x"), engine_id=0, method="pull")
        self.assertMalformed(failure, "remote failure")
        exc = raised(SerializationError, deserialize_failure, serialize(1))
        self.assertIn("expected a remote failure", str(exc))

    def test_unpickling_failure(self) -> None:
        """A pickle naming a module missing here gives SerializationError naming it."""
        frames = serialization._frame(0, b"cno_such_module_xyz\nthing\n.", [])
        exc = raised(SerializationError, deserialize, frames)
        self.assertIn("no_such_module_xyz", str(exc))


class Boom(Exception):
    """An exception importable on both sides."""


class TwoArgs(Exception):
    """An exception whose pickle cannot be rebuilt (its __init__ needs two arguments)."""

    def __init__(self, a: object, b: object) -> None:
        super().__init__(a)


class FailureTests(SynchronousTestCase):
    """Remote failures come back as the same exception type, with their traceback."""

    def make(self, exc: BaseException) -> BaseException:
        try:
            raise exc
        except BaseException as caught:
            return caught

    def test_builtin_exception(self) -> None:
        """A builtin exception comes back with its type, message and traceback text."""
        exc = self.make(ZeroDivisionError("division by zero"))
        back = deserialize_failure(serialize_failure(exc, engine_id=2, method="execute"))
        self.assertIs(type(back), ZeroDivisionError)
        self.assertEqual(str(back), "division by zero")
        self.assertEqual(back.engine_id, 2)
        self.assertEqual(back.method, "execute")
        self.assertIn("Traceback", back.remote_traceback)
        self.assertIn("ZeroDivisionError: division by zero", back.remote_traceback)

    def test_importable_custom_exception(self) -> None:
        """An exception from an importable module comes back as that class."""
        back = deserialize_failure(serialize_failure(Boom("b"), engine_id=None, method="pull"))
        self.assertIs(type(back), Boom)
        self.assertIsNone(back.engine_id)

    def test_remote_traceback_attribute_is_used(self) -> None:
        """Text already in exc.remote_traceback (set by the interpreter) is carried as is."""
        exc = ValueError("v")
        exc.remote_traceback = "custom traceback text\n"
        back = deserialize_failure(serialize_failure(exc, engine_id=1, method="execute"))
        self.assertEqual(back.remote_traceback, "custom traceback text\n")

    def test_base_exception(self) -> None:
        """KeyboardInterrupt (not an Exception) round-trips too."""
        back = deserialize_failure(
            serialize_failure(KeyboardInterrupt(), engine_id=0, method="execute")
        )
        self.assertIs(type(back), KeyboardInterrupt)

    def test_unpicklable_exception(self) -> None:
        """An exception holding a lock becomes RemoteError with the type name and message."""
        exc = ValueError("locked", threading.Lock())
        back = deserialize_failure(serialize_failure(exc, engine_id=0, method="execute"))
        self.assertIsInstance(back, RemoteError)
        self.assertEqual(back.type_name, "ValueError")
        self.assertIn("locked", back.message)
        self.assertIn("ValueError", back.remote_traceback)

    def test_exception_that_cannot_be_rebuilt(self) -> None:
        """An exception whose __init__ rejects its own args falls back to RemoteError."""
        exc = TwoArgs("first", "second")
        back = deserialize_failure(serialize_failure(exc, engine_id=4, method="apply"))
        self.assertIsInstance(back, RemoteError)
        self.assertEqual(back.type_name, f"{__name__}.TwoArgs")
        self.assertEqual(back.message, "first")
        self.assertEqual((back.engine_id, back.method), (4, "apply"))

    def test_exception_from_module_missing_here(self) -> None:
        """An exception whose module the client lacks becomes RemoteError naming it."""
        module = types.ModuleType("engine_only_module")
        exec("class EngineOnly(Exception):\n    pass\n", module.__dict__)
        sys.modules["engine_only_module"] = module
        try:
            frames = serialize_failure(module.EngineOnly("gone"), engine_id=0, method="execute")
        finally:
            del sys.modules["engine_only_module"]
        back = deserialize_failure(frames)
        self.assertIsInstance(back, RemoteError)
        self.assertEqual(back.type_name, "engine_only_module.EngineOnly")
        self.assertEqual(str(back), "engine_only_module.EngineOnly: gone")

    def test_main_exception_class(self) -> None:
        """An exception class defined in __main__ travels by value: same name, same message."""
        ns = main_namespace("class MyError(Exception):\n    pass\n")
        back = deserialize_failure(
            serialize_failure(ns["MyError"]("mine"), engine_id=0, method="execute")
        )
        self.assertEqual(type(back).__name__, "MyError")
        self.assertIsInstance(back, Exception)
        self.assertEqual(str(back), "mine")

    def test_unprintable_exception(self) -> None:
        """An exception whose __str__ raises is still serialized."""

        class Unprintable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no")

        frames = serialize_failure(Unprintable(), engine_id=0, method="execute")
        back = deserialize_failure(frames)
        self.assertEqual(type(back).__name__, "Unprintable")
