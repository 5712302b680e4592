"""Tests for :mod:`ipkernel.errors`: the exceptions users see and the wire mapping."""

from __future__ import annotations

import io
import pickle
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from ipkernel import errors
from ipkernel.errors import (
    WIRE_ERRORS,
    ClientUnusable,
    CompositeError,
    ControllerUnreachable,
    EngineError,
    InvalidEngineID,
    IPKernelError,
    KeyFileNotFound,
    NoEnginesRegistered,
    QueueCleared,
    RemoteError,
    SerializationError,
    StaleKeyFile,
    TaskAborted,
    error_from_wire,
    error_to_wire,
    format_error_line,
)

REMOTE_TB = (
    "Traceback (most recent call last):\n"
    '  File "<string>", line 1, in <module>\n'
    "ZeroDivisionError: division by zero\n"
)


def remote(exc: BaseException, tb: str | None = REMOTE_TB) -> BaseException:
    """``exc`` as the serialization layer hands it over: with its remote traceback text."""
    exc.remote_traceback = tb  # type: ignore[attr-defined]
    return exc


def two_failures() -> CompositeError:
    """Engines 0 and 2 succeeded; 1 raised ZeroDivisionError and 3 died."""
    zde = remote(ZeroDivisionError("division by zero"))
    dead = EngineError("engine 3 died")
    elist = [(1, "execute", zde), (3, "execute", dead)]
    return CompositeError(elist, ["r0", zde, "r2", dead])


class CompositeErrorTests(SynchronousTestCase):
    def test_message_lines(self) -> None:
        """str() is the header naming the method, then one [id:method]: line per failure."""
        self.assertEqual(
            str(two_failures()),
            "one or more exceptions from call to method: execute\n"
            "[1:execute]: ZeroDivisionError: division by zero\n"
            "[3:execute]: EngineError: engine 3 died",
        )

    def test_message_of_remote_error_and_bare_exception(self) -> None:
        """A RemoteError shows the remote type's name; an empty message shows the type only."""
        elist = [
            (0, "pull", RemoteError("LinAlgError", "Singular matrix")),
            (1, "pull", KeyboardInterrupt()),
        ]
        self.assertEqual(
            str(CompositeError(elist)).splitlines()[1:],
            ["[0:pull]: LinAlgError: Singular matrix", "[1:pull]: KeyboardInterrupt"],
        )

    def test_unprintable_exception(self) -> None:
        """An exception whose __str__ fails still gets a line, and the others are kept."""

        class Broken(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no")

        error = CompositeError([(0, "execute", Broken()), (1, "execute", ValueError("v"))])
        self.assertEqual(
            str(error).splitlines()[1:],
            ["[0:execute]: Broken: <unprintable Broken object>", "[1:execute]: ValueError: v"],
        )

    def test_is_an_ipkernel_error(self) -> None:
        """Catching IPKernelError catches a CompositeError too."""
        self.assertIsInstance(two_failures(), IPKernelError)

    def test_results_keep_successes(self) -> None:
        """.results holds successful results in place and the exceptions where targets failed."""
        error = two_failures()
        self.assertEqual(error.results[0], "r0")
        self.assertEqual(error.results[2], "r2")
        self.assertIs(error.results[1], error.elist[0][2])
        self.assertIs(error.results[3], error.elist[1][2])

    def test_results_default_to_the_failures(self) -> None:
        """Without results, .results is the list of the failures' exceptions."""
        a, b = ValueError("a"), TypeError("b")
        self.assertEqual(CompositeError([(0, "m", a), (1, "m", b)]).results, [a, b])

    def test_raise_exception_original_type_and_traceback(self) -> None:
        """raise_exception() raises the original object, with its remote traceback kept."""
        error = two_failures()
        raised = self.assertRaises(ZeroDivisionError, error.raise_exception)
        self.assertIs(raised, error.elist[0][2])
        self.assertEqual(raised.remote_traceback, REMOTE_TB)
        self.assertEqual(str(raised), "division by zero")

    def test_raise_exception_adds_remote_traceback_note_once(self) -> None:
        """The remote traceback is attached once as a note, so an uncaught re-raise shows it."""
        error = two_failures()
        for _ in range(2):
            raised = self.assertRaises(ZeroDivisionError, error.raise_exception, 0)
        self.assertEqual(len(raised.__notes__), 1)
        self.assertTrue(raised.__notes__[0].startswith("[1:execute] remote traceback:\n"))
        self.assertIn("ZeroDivisionError: division by zero", raised.__notes__[0])

    def test_raise_exception_by_index(self) -> None:
        """raise_exception(excid) picks a failure by its index in elist."""
        error = two_failures()
        raised = self.assertRaises(EngineError, error.raise_exception, 1)
        self.assertEqual(str(raised), "engine 3 died")
        self.assertFalse(hasattr(raised, "__notes__"))

    def test_raise_exception_bad_index(self) -> None:
        """An excid outside elist raises IndexError saying how many failures there are."""
        error = two_failures()
        exc = self.assertRaises(IndexError, error.raise_exception, 2)
        self.assertIn("no exception with index 2", str(exc))
        self.assertIn("it holds 2", str(exc))
        self.assertRaises(IndexError, CompositeError([]).raise_exception)

    def test_print_tracebacks_all(self) -> None:
        """print_tracebacks() prints each remote traceback under its [id:method] header."""
        out = io.StringIO()
        with redirect_stdout(out):
            two_failures().print_tracebacks()
        self.assertEqual(
            out.getvalue(),
            "[1:execute]:\n" + REMOTE_TB + "\n[3:execute]:\nEngineError: engine 3 died\n",
        )

    def test_print_tracebacks_one(self) -> None:
        """print_tracebacks(excid) prints only that failure; a bad index is an IndexError."""
        out = io.StringIO()
        two_failures().print_tracebacks(0, file=out)
        self.assertEqual(out.getvalue(), "[1:execute]:\n" + REMOTE_TB)
        self.assertRaises(IndexError, two_failures().print_tracebacks, 5)

    def test_pickle_round_trip(self) -> None:
        """A CompositeError pickles with its elist, results, tracebacks and message."""
        error = two_failures()
        copy = pickle.loads(pickle.dumps(error))
        self.assertIsInstance(copy, CompositeError)
        self.assertEqual(str(copy), str(error))
        self.assertEqual([(i, m) for i, m, _ in copy.elist], [(1, "execute"), (3, "execute")])
        self.assertEqual(copy.elist[0][2].remote_traceback, REMOTE_TB)
        self.assertEqual(copy.results[0], "r0")
        self.assertIsInstance(copy.results[1], ZeroDivisionError)
        self.assertRaises(ZeroDivisionError, copy.raise_exception)


class ExceptionClassTests(SynchronousTestCase):
    def test_every_class_documented_and_based(self) -> None:
        """Every exported exception subclasses IPKernelError and says when it is raised."""
        for name in errors.__all__:
            obj = getattr(errors, name)
            if isinstance(obj, type):
                self.assertTrue(issubclass(obj, IPKernelError), name)
                self.assertTrue(obj.__doc__ and obj.__doc__.strip(), name)

    def test_builtin_bases(self) -> None:
        """Each class can also be caught as the builtin error it refines."""
        self.assertIsInstance(InvalidEngineID("x"), KeyError)
        self.assertIsInstance(SerializationError("x"), TypeError)
        self.assertIsInstance(KeyFileNotFound("x"), FileNotFoundError)
        self.assertIsInstance(ControllerUnreachable("x"), ConnectionError)
        self.assertIsInstance(ClientUnusable("x"), RuntimeError)

    def test_message_only_constructors(self) -> None:
        """The plain classes take one message, which is their str() unchanged."""
        for cls in (
            EngineError,
            InvalidEngineID,
            NoEnginesRegistered,
            QueueCleared,
            TaskAborted,
            SerializationError,
            KeyFileNotFound,
            ControllerUnreachable,
            StaleKeyFile,
            ClientUnusable,
        ):
            self.assertEqual(str(cls("it went wrong")), "it went wrong", cls.__name__)

    def test_invalid_engine_id_not_quoted(self) -> None:
        """InvalidEngineID's message is not quoted the way KeyError quotes a key."""
        self.assertEqual(str(InvalidEngineID("no engine with id 7")), "no engine with id 7")

    def test_classes_pickle(self) -> None:
        """Each class survives pickling with its type and message."""
        for exc in (
            InvalidEngineID("no engine 7"),
            KeyFileNotFound("missing"),
            ControllerUnreachable("down"),
            RemoteError("LinAlgError", "Singular matrix"),
        ):
            copy = pickle.loads(pickle.dumps(exc))
            self.assertIs(type(copy), type(exc))
            self.assertEqual(str(copy), str(exc))

    def test_remote_error(self) -> None:
        """RemoteError keeps type_name and message; str() reads like the original."""
        exc = RemoteError("LinAlgError", "Singular matrix")
        self.assertEqual((exc.type_name, exc.message), ("LinAlgError", "Singular matrix"))
        self.assertEqual(str(exc), "LinAlgError: Singular matrix")
        self.assertEqual(str(RemoteError("StopIteration", "")), "StopIteration")

    def test_engine_error_names_engine(self) -> None:
        """EngineError.for_engine names the engine, with an optional reason."""
        self.assertEqual(str(EngineError.for_engine(3)), "engine 3 died")
        self.assertEqual(
            str(EngineError.for_engine(3, "connection lost")), "engine 3 died (connection lost)"
        )

    def test_key_file_not_found_says_where_and_how(self) -> None:
        """KeyFileNotFound names the path looked at and how to start a controller."""
        text = str(KeyFileNotFound.for_path("/home/u/.ipkernel/security/ipcontroller-mec.furl"))
        self.assertIn("/home/u/.ipkernel/security/ipcontroller-mec.furl", text)
        self.assertIn("ipcluster -n 4", text)
        self.assertIn("ipcontroller", text)

    def test_controller_unreachable_names_address(self) -> None:
        """ControllerUnreachable names address and port (IPv6 in brackets) and the reason."""
        text = str(ControllerUnreachable.for_address("10.0.0.5", 50123, "connection refused"))
        self.assertIn("10.0.0.5:50123", text)
        self.assertIn("connection refused", text)
        self.assertIn("[::1]:7", str(ControllerUnreachable.for_address("::1", 7)))

    def test_stale_key_file_says_what_to_do(self) -> None:
        """StaleKeyFile says the key file is stale, why, and where to get the current one."""
        text = str(StaleKeyFile.for_file("/k/ipcontroller-mec.furl", "wrong secret"))
        self.assertEqual(
            text,
            "the key file /k/ipcontroller-mec.furl is stale: wrong secret; copy the current "
            "one from the controller's security dir",
        )

    def test_format_error_line(self) -> None:
        """format_error_line gives 'Type: message', or just 'Type' with no message."""
        self.assertEqual(format_error_line(ValueError("bad")), "ValueError: bad")
        self.assertEqual(format_error_line(StopIteration()), "StopIteration")


class WireTests(SynchronousTestCase):
    def test_known_names(self) -> None:
        """error_from_wire rebuilds every class in WIRE_ERRORS with its message."""
        for name, cls in WIRE_ERRORS.items():
            exc = error_from_wire(name, "msg")
            self.assertIs(type(exc), cls, name)
        self.assertEqual(str(error_from_wire("QueueCleared", "dropped")), "dropped")

    def test_builtins_accepted(self) -> None:
        """The builtin errors a whole call can fail with are rebuilt as themselves."""
        for cls in (ValueError, IndexError, KeyError, TypeError, RuntimeError):
            self.assertIs(type(error_from_wire(cls.__name__, "m")), cls)

    def test_qualified_names(self) -> None:
        """Names qualified with ipkernel.errors. or builtins. map to the same classes."""
        self.assertIs(type(error_from_wire("ipkernel.errors.EngineError", "m")), EngineError)
        self.assertIs(type(error_from_wire("builtins.ValueError", "m")), ValueError)

    def test_unknown_name_falls_back(self) -> None:
        """An unknown name gives a RemoteError that keeps the name and the message."""
        exc = error_from_wire("numpy.linalg.LinAlgError", "Singular matrix")
        self.assertIsInstance(exc, RemoteError)
        self.assertEqual(str(exc), "numpy.linalg.LinAlgError: Singular matrix")

    def test_no_composite_or_remote_in_table(self) -> None:
        """The table holds only classes built from one message."""
        self.assertNotIn("CompositeError", WIRE_ERRORS)
        self.assertNotIn("RemoteError", WIRE_ERRORS)

    def test_round_trip(self) -> None:
        """error_to_wire then error_from_wire gives the same type and message back."""
        for exc in (
            EngineError("engine 3 died"),
            InvalidEngineID("no engine with id 7"),
            KeyError("k"),
            RemoteError("LinAlgError", "Singular matrix"),
        ):
            back = error_from_wire(*error_to_wire(exc))
            self.assertIs(type(back), type(exc))
            self.assertEqual(str(back), str(exc))

    def test_to_wire_uses_message_not_quoted_key(self) -> None:
        """error_to_wire sends a KeyError's own message, not its quoted str()."""
        self.assertEqual(error_to_wire(KeyError("k")), ("KeyError", "k"))
        self.assertEqual(error_to_wire(InvalidEngineID("no 7")), ("InvalidEngineID", "no 7"))
