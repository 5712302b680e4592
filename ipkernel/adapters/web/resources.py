"""What the status page's HTTP server answers: the page, ``/api/status``, ``/api/events``.

Every request must carry the access token (``?token=...``); without it, or with another,
the answer is 403 whatever the path, so nothing about the controller shows. Only ``GET``
is served; nothing here changes the controller.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ipkernel.adapters.web.access import token_matches
from ipkernel.adapters.web.feed import StatusFeed
from ipkernel.adapters.web.page import Page
from ipkernel.adapters.web.snapshot import StatusSnapshot

__all__ = ["StatusResource"]

#: Headers on every answer: never cached, never sniffed, never framed, no referrer (the
#: URL holds the token).
_COMMON_HEADERS = {
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}


class StatusResource(Resource):
    """The whole site, one resource: checks the token, then routes by path."""

    isLeaf = True

    def __init__(self, token: str, page: Page, snapshot: StatusSnapshot, feed: StatusFeed) -> None:
        super().__init__()
        self._token = token
        self._page = page
        self._snapshot = snapshot
        self._feed = feed

    def render(self, request: Request) -> bytes | int:
        for name, value in _COMMON_HEADERS.items():
            request.setHeader(name, value)
        if not token_matches(request.args, self._token):
            return self._plain(request, 403, b"403 Forbidden: this page needs its access token\n")
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            return self._plain(request, 405, b"405 Method Not Allowed\n")
        path = request.path
        if path == b"/":
            for name, value in self._page.headers.items():
                request.setHeader(name, value)
            return self._page.body
        if path == b"/api/status":
            request.setHeader(b"content-type", b"application/json")
            return self._snapshot.encode()
        if path == b"/api/events":
            if not self._feed.subscribe(request):
                return self._plain(request, 503, b"503 Too many pages open\n")
            return NOT_DONE_YET
        return self._plain(request, 404, b"404 Not Found\n")

    @staticmethod
    def _plain(request: Request, code: int, text: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return text
