"""The status page's adapter in one process: feed, resources, access token, TLS.

- the live feed (:mod:`ipkernel.adapters.web.feed`) with a Clock and fake requests: no
  timer without a page, one status per interval, slow pages skipped;
- what each path answers (:mod:`ipkernel.adapters.web.resources`), token or not;
- the URL file and the token (:mod:`ipkernel.adapters.web.access`), and ``ipcluster``'s
  message;
- the page served over HTTPS with the controller's certificate, on loopback.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from ipkernel.adapters.web.access import (
    WEB_URL_FILE,
    is_loopback,
    page_url,
    read_url_file,
    remove_url_file,
    token_matches,
    write_url_file,
)
from ipkernel.adapters.web.feed import StatusFeed
from ipkernel.adapters.web.listener import StatusPage
from ipkernel.adapters.web.page import load_page
from ipkernel.adapters.web.resources import StatusResource
from ipkernel.adapters.web.snapshot import StatusSnapshot
from ipkernel.cli.ipcluster.output import running_message
from ipkernel.controller.service import ControllerService
from ipkernel.security import CERT_NAME, ControllerIdentity
from tests.fakes import FakeEngine

TOKEN = "k" * 43


class PageRequest(DummyRequest):
    """A request for ``path`` that keeps the producer it is given (DummyRequest would
    drive it as a pull producer)."""

    def __init__(self, path: bytes = b"/", token: str | None = TOKEN) -> None:
        super().__init__(path.strip(b"/").split(b"/"))
        self.path = path
        self.producer = None
        if token is not None:
            self.addArg(b"token", token.encode())

    def registerProducer(self, producer, streaming):  # noqa: N802 - Twisted's name
        self.producer = producer

    def unregisterProducer(self):  # noqa: N802 - Twisted's name
        self.producer = None

    def lose(self) -> None:
        """The page's connection drops."""
        self.processingFailed(Failure(ConnectionDone()))

    def events(self) -> list[bytes]:
        return [chunk for chunk in self.written if b"data: " in chunk]


class FeedTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.built = 0
        self.feed = StatusFeed(self.status, self.clock, interval=1.0, limit=2)

    def status(self) -> bytes:
        self.built += 1
        return b'{"n":%d}' % self.built

    def test_no_page_no_timer(self):
        """With no page open nothing is scheduled and no status is built."""
        self.clock.advance(10)
        self.assertEqual((self.clock.getDelayedCalls(), self.built), ([], 0))
        self.assertFalse(self.feed.running)

    def test_pages_get_the_status_at_once_and_every_interval(self):
        """A new page gets the status at once (with the reconnect delay), then every
        interval; the status is built once per interval however many pages are open."""
        first, second = PageRequest(), PageRequest()
        self.assertTrue(self.feed.subscribe(first))
        self.assertTrue(first.written[0].startswith(b"retry: 2000\ndata: {"))
        self.assertEqual(
            first.responseHeaders.getRawHeaders(b"content-type"),
            [b"text/event-stream; charset=utf-8"],
        )
        self.feed.subscribe(second)
        built = self.built
        self.clock.advance(1.0)
        self.assertEqual(self.built, built + 1)
        self.assertEqual(first.written[-1], second.written[-1])
        self.assertTrue(first.written[-1].endswith(b"}\n\n"))
        self.assertEqual((len(first.events()), len(second.events())), (2, 2))

    def test_timer_stops_when_the_last_page_goes(self):
        """When every page's connection has dropped, the timer stops."""
        pages = [PageRequest(), PageRequest()]
        for page in pages:
            self.feed.subscribe(page)
        pages[0].lose()
        self.assertTrue(self.feed.running)
        pages[1].lose()
        self.assertEqual((self.feed.running, self.feed.subscribers), (False, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_paused_page_misses_updates(self):
        """While a page's connection cannot take more, its updates are skipped, not queued."""
        page = PageRequest()
        self.feed.subscribe(page)
        page.producer.pauseProducing()
        self.clock.advance(3.0)
        self.assertEqual(len(page.events()), 1)
        page.producer.resumeProducing()
        self.clock.advance(1.0)
        self.assertEqual(len(page.events()), 2)

    def test_limit_and_close(self):
        """Past the limit a page is refused; close() ends every page and the timer."""
        pages = [PageRequest(), PageRequest()]
        for page in pages:
            self.assertTrue(self.feed.subscribe(page))
        self.assertFalse(self.feed.subscribe(PageRequest()))
        self.feed.close()
        self.assertEqual([p.finished for p in pages], [1, 1])
        self.assertEqual((self.feed.running, self.clock.getDelayedCalls()), (False, []))


class ResourceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.service = ControllerService(clock=self.clock)
        self.service.register_engine(FakeEngine({"host": "h", "pid": 7}))
        snapshot = StatusSnapshot(self.service)
        self.feed = StatusFeed(snapshot.encode, self.clock)
        self.resource = StatusResource(TOKEN, load_page(), snapshot, self.feed)

    def test_without_the_token_everything_is_forbidden(self):
        """No token, another token, or an empty one: 403 on every path, known or not."""
        for path in (b"/", b"/api/status", b"/api/events", b"/nothing"):
            for token in (None, "", "x" * 43, TOKEN[:-1]):
                request = PageRequest(path, token)
                body = self.resource.render(request)
                self.assertEqual(request.responseCode, 403, (path, token))
                self.assertNotIn(b"engine", body)
        self.assertEqual(self.feed.subscribers, 0)

    def test_page_and_status(self):
        """With the token: the page (HTML, everything inline, a strict policy, no
        referrer) and the status as JSON."""
        request = PageRequest(b"/")
        body = self.resource.render(request)
        self.assertIn(b"<title>ipkernel controller</title>", body)
        self.assertNotIn(b"{script}", body)
        self.assertNotRegex(body, rb"(src|href)=\"(https?:)?//")
        headers = request.responseHeaders
        policy = headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"default-src 'none'", policy)
        self.assertIn(b"script-src 'sha256-", policy)
        self.assertEqual(headers.getRawHeaders(b"referrer-policy"), [b"no-referrer"])
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        request = PageRequest(b"/api/status")
        status = json.loads(self.resource.render(request))
        self.assertEqual([(e["id"], e["host"], e["pid"]) for e in status["engines"]], [(0, "h", 7)])
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"]
        )

    def test_events_subscribe_and_other_answers(self):
        """``/api/events`` holds the response open as a feed; an unknown path is 404 and
        anything but GET 405, once the token is right."""
        request = PageRequest(b"/api/events")
        self.assertIs(self.resource.render(request), NOT_DONE_YET)
        self.assertEqual(self.feed.subscribers, 1)
        request = PageRequest(b"/nothing")
        self.resource.render(request)
        self.assertEqual(request.responseCode, 404)
        request = PageRequest(b"/api/status")
        request.method = b"POST"
        self.resource.render(request)
        self.assertEqual(request.responseCode, 405)
        self.feed.close()


class AccessTests(SynchronousTestCase):
    def test_token_comparison(self):
        """Only the exact token is accepted, as the first ``token`` argument."""
        self.assertTrue(token_matches({b"token": [TOKEN.encode()]}, TOKEN))
        self.assertFalse(token_matches({b"token": [b"x"]}, TOKEN))
        self.assertFalse(token_matches({b"token": []}, TOKEN))
        self.assertFalse(token_matches({}, TOKEN))

    def test_loopback_and_urls(self):
        """Loopback addresses are told apart from others; URLs bracket IPv6 hosts."""
        for address, loopback in [
            ("127.0.0.1", True),
            ("127.3.0.1", True),
            ("::1", True),
            ("localhost", True),
            ("0.0.0.0", False),
            ("10.1.2.3", False),
            ("::", False),
            ("node7", False),
        ]:
            self.assertEqual(is_loopback(address), loopback, address)
        self.assertEqual(page_url(False, "127.0.0.1", 80, "t"), "http://127.0.0.1:80/?token=t")
        self.assertEqual(page_url(True, "fe80::1", 8443, "t"), "https://[fe80::1]:8443/?token=t")

    def test_url_file(self):
        """The URL file is mode 0600, read back as written, and removed on demand."""
        directory = Path(self.mktemp())
        directory.mkdir()
        self.assertIsNone(read_url_file(directory))
        path = write_url_file(directory, "http://127.0.0.1:1/?token=t")
        self.assertEqual(path, directory / WEB_URL_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(read_url_file(directory), "http://127.0.0.1:1/?token=t")
        remove_url_file(directory)
        remove_url_file(directory)
        self.assertIsNone(read_url_file(directory))

    def test_ipcluster_prints_the_url(self):
        """ipcluster's message gives the status page's URL when the controller wrote one."""
        directory = Path(self.mktemp())
        directory.mkdir()
        self.assertNotIn("Status page", running_message(2, directory))
        write_url_file(directory, "http://127.0.0.1:1/?token=t")
        self.assertIn("\nStatus page: http://127.0.0.1:1/?token=t\n", running_message(2, directory))


@implementer(IPolicyForHTTPS)
class PinnedPolicy:
    """Trust exactly the controller's certificate (as a browser told to accept it would)."""

    def __init__(self, identity: ControllerIdentity) -> None:
        self._options = optionsForClientTLS(
            CERT_NAME, trustRoot=Certificate.loadPEM(identity.certificate_pem)
        )

    def creatorForNetloc(self, hostname, port):  # noqa: N802 - Twisted's name
        return self._options


class ListenerTests(TestCase):
    def test_loopback_page_is_plain_http(self):
        """On a loopback address the page is HTTP and needs no certificate."""
        page = StatusPage(ControllerService(clock=reactor), reactor)
        url = page.listen(reactor, "127.0.0.1")
        self.addCleanup(page.stop)
        self.assertTrue(url.startswith("http://127.0.0.1:"))
        self.assertTrue(url.endswith(f"/?token={page.token}"))
        self.assertRaises(
            ValueError,
            StatusPage(ControllerService(clock=reactor), reactor).listen,
            reactor,
            "0.0.0.0",
        )

    @inlineCallbacks
    def test_https_with_the_controllers_certificate(self):
        """Served with TLS, the page presents the controller's certificate and answers
        with the token, 403 without."""
        identity = ControllerIdentity.generate()
        service = ControllerService(clock=reactor)
        service.register_engine(FakeEngine({"host": "h", "pid": 7}))
        page = StatusPage(service, reactor)
        url = page.listen(reactor, "127.0.0.1", identity=identity, tls=True, host="127.0.0.1")
        self.addCleanup(page.stop)
        self.assertTrue(url.startswith("https://127.0.0.1:"))
        agent = Agent(reactor, contextFactory=PinnedPolicy(identity))
        base = url.split("?")[0]
        response = yield agent.request(b"GET", (base + "api/status?token=" + page.token).encode())
        status = json.loads((yield readBody(response)))
        self.assertEqual([e["pid"] for e in status["engines"]], [7])
        response = yield agent.request(b"GET", base.encode())
        yield readBody(response)
        self.assertEqual(response.code, 403)
