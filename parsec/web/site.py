"""The HTTP side of the listener (docs/protocol/transport.md §2): one twisted.web Site, one request per connection.

Connections reach the Site's channel through `parsec.web.listener` (connection caps, head
limit, request deadline, complete error answers); only public Twisted APIs are used here.

`RootResource` routes on the percent-decoded path itself (twisted's segment
tree neither decodes `+` as space nor matches the reference's route table), and
hands websocket upgrades of exactly `GET /ws` to Autobahn's WebSocketResource.

Health, for load balancers and supervisors (unauthenticated, cheap, answered before any other
check): `GET /health` is 200 as long as the process answers (no dependency touched);
`GET /ready` is 200 when the server serves and PostgreSQL and the blockstore answer within a
short timeout, else 503 with the reason (parsec.readiness). Every other request gets 503 with
the reason while the server does not serve (starting, shutting down, event feed lost).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote_plus, unquote_plus, urlencode

from autobahn.twisted.resource import WebSocketResource
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import Resource

import parsec
from parsec import limits as limits_module
from parsec.limits import Limits
from parsec.readiness import Readiness, ReadyCheck
from parsec.web.drain import RequestTracker
from parsec.web.listener import Listener

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp
    from parsec.web.admin import AdminResource
    from parsec.web.anonymous import AnonymousResource
    from parsec.web.websocket import ParsecWebSocketFactory

_log = Logger()

MAX_BODY_SIZE = 1024 * 1024
HTML = b"text/html;charset=utf-8"
STATIC_FILES = ("base.css", "favicon.ico", "parsec-vert.png", "parsec.png")
_STATIC_TYPES = {".ico": "image/vnd.microsoft.icon"}


def _template(name: str) -> str:
    return resources.files("parsec.web").joinpath("templates", name).read_text("utf8")


class ParsecRequest(server.Request):
    """Bounded body (read only when 0 < Content-Length < 1 MiB), fixed server header."""

    _discard_body = False
    gone = False  # the connection was lost before the answer

    def connectionLost(self, reason: Any) -> None:
        self.gone = True
        super().connectionLost(reason)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # Head and body are in: the listener's request deadline stops here.
        request_received = getattr(self.transport, "request_received", None)
        if request_received is not None:
            request_received(command, path, self.requestHeaders.getRawHeaders(b"x-forwarded-for"))
        super().requestReceived(command, path, version)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length >= MAX_BODY_SIZE:
            limits_module.hit("http_body_bytes")
        if length is None or length >= MAX_BODY_SIZE:
            # Chunked or too large: the body is treated as empty and not buffered.
            self._discard_body = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if not self._discard_body:
            super().handleContentChunk(data)

    def body(self) -> bytes:
        if self._discard_body or self.content is None:
            return b""
        self.content.seek(0)
        body: bytes = self.content.read()
        return body

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.setHeader(b"server", self.site.server_header)  # type: ignore[union-attr]
            access = getattr(self.transport, "access", None)
            if access is not None:
                access.status = self.code  # for the access log (parsec.web.access)
        super().write(data)


class ParsecChannel(http.HTTPChannel):
    # The head limit itself (`http_head_bytes`) is enforced in front of the channel, by
    # parsec.web.listener.HttpGuard, which counts the whole head; twisted.web's own limit
    # (request line and headers without their line ends) can then never be the first hit.

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # No keep-alive: every response closes the connection.
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False


class ParsecSite(server.Site):
    requestFactory = ParsecRequest
    protocol = ParsecChannel  # type: ignore[assignment]  # HTTPFactory's annotation is too narrow
    noisy = False  # no "Starting factory <ParsecSite ...>" at INFO

    def __init__(
        self,
        root: Resource,
        *,
        debug: bool = False,
        limits: Limits | None = None,
        trusted_proxies: tuple[str, ...] = (),
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        super().__init__(root, reactor=reactor)
        self.server_header = (
            f"parsec/{parsec.__version__} python-twisted".encode() if debug else b"parsec"
        )
        self.listener = Listener(limits or Limits(), trusted_proxies, reactor)
        self.listener.server_header = self.server_header

    def buildProtocol(self, addr: Any) -> Any:
        return self.listener.build(super().buildProtocol(addr), addr)

    def log(self, request: Any) -> None:
        """Nothing: the access log line is written when the connection closes (parsec.web.access)."""


def finish(request: ParsecRequest, code: int, body: bytes = b"", content_type: bytes | None = None) -> None:
    if request.finished or request.gone:
        return
    request.setResponseCode(code)
    if content_type is not None:
        request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", str(len(body)).encode())
    if body:
        request.write(body)
    else:
        request.setHeader(b"server", request.site.server_header)  # type: ignore[union-attr]
    request.finish()


AsyncHandler = Callable[[ParsecRequest, list[str]], Awaitable[None]]


class RootResource(Resource):
    isLeaf = True

    def __init__(
        self,
        app: BackendApp,
        ws_factory: ParsecWebSocketFactory,
        admin: AdminResource,
        anonymous: AnonymousResource,
        *,
        readiness: Readiness,
        ready_check: ReadyCheck,
        requests: RequestTracker,
    ) -> None:
        super().__init__()
        self._app = app
        self._readiness = readiness
        self._ready_check = ready_check
        self._requests = requests
        self._ws_factory = ws_factory
        self._ws = WebSocketResource(ws_factory)
        self._admin = admin
        self._anonymous = anonymous
        self._landing = _template("index.html").encode("utf8")
        self._not_found = _template("404.html").encode("utf8")

    # ---- entry ---------------------------------------------------------------------------

    def render(self, request: ParsecRequest) -> Any:
        try:
            return self._render(request)
        except Exception:
            _log.failure("HTTP request crashed")
            finish(request, 500, b"Parsec server has crashed :'(")
            return server.NOT_DONE_YET

    def _render(self, request: ParsecRequest) -> Any:
        upgrade = self._is_websocket_upgrade(request)
        if not upgrade:
            self._requests.track(request)  # waited for at shutdown (parsec.web.drain)
        if request.path in (b"/health", b"/ready"):
            if request.method not in (b"GET", b"HEAD"):
                finish(request, 405)
            elif request.path == b"/health":
                finish(request, 200, b"ok\n", b"text/plain;charset=utf-8")
            else:
                self._spawn(request, self._ready)
            return server.NOT_DONE_YET

        config = self._app.config
        if config.forward_proto_enforce_https is not None:
            name, expected = config.forward_proto_enforce_https
            value = request.requestHeaders.getRawHeaders(name.encode("latin1"))
            if value is not None and value[0] != expected.encode("latin1"):
                netloc = config.backend_addr.netloc if config.backend_addr else ""
                request.setHeader(b"location", f"https://{netloc}".encode() + request.uri)
                finish(request, 301)
                return server.NOT_DONE_YET

        site = request.site
        listener = getattr(site, "listener", None)
        if listener is not None and not listener.admit_forwarded(
            request.transport, request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        ):
            finish(request, 429)
            return server.NOT_DONE_YET

        reason = self._readiness.reason
        if reason is not None:
            finish(request, 503, f"Parsec server unavailable: {reason}".encode())
            return server.NOT_DONE_YET

        if upgrade:
            if not request.requestHeaders.getRawHeaders(b"sec-websocket-key"):
                finish(request, 400)
                return server.NOT_DONE_YET
            if self._ws_factory.upgrade(request):
                return server.NOT_DONE_YET
            return self._ws.render(request)  # anything to negotiate or check: Autobahn's way

        raw_path = request.path.decode("latin1")
        # Invalid UTF-8 escapes become U+FFFD: no route or identifier accepts it.
        path = unquote_plus(raw_path, encoding="utf8", errors="replace")
        method = request.method
        segments = path.split("/")[1:] if path.startswith("/") else [path]

        if path in ("", "/"):
            return self._only(request, (b"GET",), self._get_landing)
        head = segments[0]
        if head == "redirect" and len(segments) >= 2:
            return self._only(request, (b"GET",), lambda r: self._redirect(r, "/".join(segments[1:])))
        if head == "static" and len(segments) >= 2:
            # Only files directly in the folder: any other name (an escape such as
            # `../x` included) is a miss, and every miss is an empty 404.
            name = segments[1] if len(segments) == 2 else ""
            return self._only(request, (b"GET",), lambda r: self._static(r, name))
        if head == "administration":
            route = self._admin.match(segments[1:])
            if route is not None:
                methods, handler = route
                if method not in methods:
                    finish(request, 405)
                    return server.NOT_DONE_YET
                self._spawn(request, handler)
                return server.NOT_DONE_YET
        if head == "anonymous" and len(segments) == 2:
            if method not in (b"GET", b"POST"):
                finish(request, 405)
                return server.NOT_DONE_YET
            self._spawn(request, lambda r: self._anonymous.handle(r, segments[1]))
            return server.NOT_DONE_YET
        finish(request, 404, self._not_found, HTML)
        return server.NOT_DONE_YET

    @staticmethod
    def _is_websocket_upgrade(request: ParsecRequest) -> bool:
        if request.clientproto != b"HTTP/1.1" or request.uri != b"/ws":
            return False
        connection = request.requestHeaders.getRawHeaders(b"connection")
        upgrade = request.requestHeaders.getRawHeaders(b"upgrade")
        return bool(
            connection
            and upgrade
            and connection[0].strip().lower() == b"upgrade"
            and upgrade[0].strip().lower() == b"websocket"
        )

    def _only(self, request: ParsecRequest, methods: tuple[bytes, ...], handler: Callable[[ParsecRequest], None]) -> Any:
        if request.method not in methods:
            finish(request, 405)
        else:
            handler(request)
        return server.NOT_DONE_YET

    def _spawn(self, request: ParsecRequest, handler: Callable[[ParsecRequest], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await handler(request)
            except ConnectionError as exc:
                # A backing service is unreachable (e.g. the database restarts): one line.
                _log.warn("HTTP request failed: {error}", error=str(exc))
                finish(request, 503, b"Parsec server unavailable: try again later")
            except Exception:
                _log.failure("HTTP request crashed")
                finish(request, 500, b"Parsec server has crashed :'(")

        defer.ensureDeferred(run())

    # ---- simple routes ------------------------------------------------------------------

    async def _ready(self, request: ParsecRequest) -> None:
        reason = await self._ready_check()
        if reason is None:
            finish(request, 200, b"ready\n", b"text/plain;charset=utf-8")
        else:
            finish(request, 503, f"not ready: {reason}\n".encode(), b"text/plain;charset=utf-8")

    def _get_landing(self, request: ParsecRequest) -> None:
        finish(request, 200, self._landing, HTML)

    def _static(self, request: ParsecRequest, name: str) -> None:
        if name not in STATIC_FILES:
            finish(request, 404)
            return
        data = resources.files("parsec.web").joinpath("static", name).read_bytes()
        ext = "." + name.rsplit(".", 1)[-1]
        ctype = _STATIC_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        finish(request, 200, data, ctype.encode())

    def _redirect(self, request: ParsecRequest, path: str) -> None:
        addr = self._app.config.backend_addr
        if addr is None:
            finish(request, 501, b"Url redirection is not available")
            return
        query = request.uri.split(b"?", 1)[1].decode("latin1") if b"?" in request.uri else ""
        params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "no_ssl"]
        if not addr.use_ssl:
            params.append(("no_ssl", "true"))
        location = f"parsec://{addr.netloc}/{quote_plus(path, safe='/')}"
        if params:
            location += "?" + urlencode(params)
        request.setHeader(b"location", location.encode("utf8"))
        finish(request, 302)

