"""What stands between a TCP connection and twisted.web: caps, head limit, deadlines.

Every accepted connection goes through `Listener.build` (called by `ParsecSite.buildProtocol`):

* over `max_connections` open connections, or `max_connections_per_address` from one
  address, the connection gets a complete `503` / `429` answer and is closed at once;
* otherwise an `HttpGuard` (a `ProtocolWrapper`, public Twisted API) is put in front of the
  HTTP channel. Until the request head is complete it holds the bytes itself: a first byte
  that cannot start a request is answered `400` at once, a head (request line, headers
  and the final blank line) over `http_head_bytes` is answered `431` and never reaches
  the channel, and a request not received within `http_request_timeout` gets `408`.
  The channel's own refusals (a bare ``HTTP/1.1 400 Bad Request`` status line without
  any header) are completed on their way out with `Date`, `Content-Length: 0` and
  `Connection: close` (docs/protocol/transport.md §2). Over our own TLS, closing waits for
  the peer (its close_notify; mid-handshake, the end of the handshake, before our answer can
  even be encrypted): after its own answer the guard closes the socket beneath in order, so
  a peer that never completes the TLS handshake, or stops there, is gone after
  `http_request_timeout` like any other;
* at most `connections_per_turn` new connections start being read per turn of the event
  loop; the others are paused (`pauseProducing`) and resumed over the next turns, so a
  burst of new connections (each costs about a millisecond: HTTP, upgrade, challenge)
  cannot stall the connections already served;
* after a websocket upgrade Autobahn's protocol replaces the channel inside the guard
  (`WebSocketResource` swaps a `ProtocolWrapper`'s `wrappedProtocol`), so the guard still
  counts the connection until it closes.

Behind a reverse proxy listed in `--trusted-proxy`, the per-address cap applies to the
client named by the last `X-Forwarded-For` entry that is not itself a trusted proxy
(`Listener.admit_forwarded`, called for each request); from any other peer the header is
ignored. IPv6 clients are counted by network (`ipv6_prefix_bits`, a /64): one subscriber
commonly holds a whole /64, and would otherwise have as many caps as addresses.

EMFILE: `EmfileWatch` turns Twisted's INFO lines about refused accepts into one WARNING per
minute (a log observer: the structured `acceptError` field of the `twisted.internet.tcp`
events), and `check_file_limit` raises the soft RLIMIT_NOFILE to the hard one at start-up.
"""

from __future__ import annotations

import ipaddress
import resource
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from twisted.internet import abstract, interfaces
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import datetimeToString
from zope.interface import directlyProvides, implementer, providedBy

from parsec import limits as limits_module
from parsec.limits import Limits
from parsec.metrics import NO_METRICS, NoMetrics
from parsec.web.access import Access

_log = Logger()

# RFC 9110 token characters: the only bytes a method (the first thing of a request) is made
# of, plus CR/LF (an empty line before the request line is tolerated, RFC 9112 §2.2).
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_REQUEST_START = _TCHAR | frozenset(b"\r\n")
_END_OF_HEAD = b"\r\n\r\n"
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
WARNING_INTERVAL = 60.0


def error_answer(status: int, server: bytes, reason: bytes | None = None) -> bytes:
    """A complete, empty HTTP answer that announces the close."""
    reason = reason if reason is not None else _REASONS.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        % (status, reason, server, datetimeToString())
    )


class _RateLimitedWarning:
    """One WARNING line per `WARNING_INTERVAL` at most, with the count of events since."""

    def __init__(self, clock: Callable[[], float], fmt: str) -> None:
        self._clock = clock
        self._fmt = fmt
        self._last: float | None = None
        self._since = 0

    def __call__(self, **fields: Any) -> None:
        self._since += 1
        now = self._clock()
        if self._last is not None and now - self._last < WARNING_INTERVAL:
            return
        self._last = now
        _log.warn(self._fmt, count=self._since, **fields)
        self._since = 0


class _Refusal(Protocol):
    """Answers a complete error at once and closes (connection caps)."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self._answer)
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass


# The interfaces a guard takes on, per declaration of its transport's interfaces: a few kinds
# of transport (TCP, TLS, UNIX sockets), so a few entries; bounded all the same.
_GUARD_INTERFACES: dict[Any, tuple[Any, ...]] = {}
_GUARD_INTERFACES_KEPT = 32


def _guard_interfaces(provided: Any) -> tuple[Any, ...]:
    kept = _GUARD_INTERFACES.get(provided)
    if kept is None:
        kept = tuple(i for i in provided.interfaces() if not i.isOrExtends(interfaces.ISSLTransport))
        if len(_GUARD_INTERFACES) < _GUARD_INTERFACES_KEPT:
            _GUARD_INTERFACES[provided] = kept
    return kept


# Bytes handed to the kernel per send() call (Twisted's `SEND_LIMIT`, 128 KiB by default: its
# TCP transport sends at most that much per call, a call per turn of the event loop): the
# largest reply, a 1 MiB block, goes in one call as far as the socket buffer takes it. A 512 KiB
# `block_read` on memory: 281-292 -> 146-150 us of the server's CPU (the kernel's share
# 165-176 -> 68-75: fewer calls and wake-ups), 2,600 -> 5,350-6,570 reads/s
# (benchmarks/server_bench.py, block_read_512k, interleaved quick runs; README.rst, Performance).
SEND_BYTES_PER_CALL = 2 * 1024 * 1024


def lowest_transport(transport: Any) -> Any:
    """The socket transport under any protocol wrappers (TLS, the listener's guard)."""
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


class HttpGuard(ProtocolWrapper):
    """One accepted connection, in front of the HTTP channel (see the module docstring)."""

    factory: Listener

    def __init__(self, listener: Listener, channel: Any, address: str, counted: bool) -> None:
        # The listener plays the WrappingFactory part (registerProtocol/unregisterProtocol).
        super().__init__(listener, channel)  # type: ignore[arg-type]
        self.peer = address  # the peer's address
        self.address = address  # the peer, or the forwarded client once known
        self.access = Access(address)  # the access log line (parsec.web.access)
        self.counted = counted  # counted in the per-address table under `address`
        self._channel = channel
        self._head = bytearray()
        self._in_head = True
        self._answered = False
        self._deadline: Any = None
        self.gone = False

    # ---- life cycle ----------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        # What ProtocolWrapper.makeConnection does, with the interfaces declared once: the
        # wrapper takes on those of its transport, but it is not the TLS protocol itself
        # (Autobahn would look for TLS details on it and fail). Working the list out again for
        # every connection, and declaring the transport's own first as the base class does, was
        # 141k of the 2.9M instructions of a `connect` (callgrind; benchmarks/server_bench.py, connect).
        directlyProvides(self, *_guard_interfaces(providedBy(transport)))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        wrapped: Any = self.wrappedProtocol
        wrapped.makeConnection(self)

    def connectionMade(self) -> None:
        limits = self.factory.limits
        self._deadline = self.factory.reactor.callLater(limits.http_request_timeout, self._expired)
        transport: Any = self.transport
        if interfaces.ITCPTransport.providedBy(transport):
            # Lets the kernel notice peers that vanished without a FIN.
            transport.setTcpKeepAlive(True)
        lowest = lowest_transport(transport)
        if isinstance(lowest, abstract.FileDescriptor):
            lowest.SEND_LIMIT = SEND_BYTES_PER_CALL
        if not self.factory.may_start(self):
            transport.pauseProducing()  # resumed by the listener in a later turn

    def start(self) -> None:
        """The listener's turn for this connection has come: read it."""
        if not self.gone:
            transport: Any = self.transport
            transport.resumeProducing()

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True
        self._cancel_deadline()
        super().connectionLost(reason)
        self.access.emit()
        self.factory.metrics.connection_closed(self.access)

    def upgraded(self) -> None:
        """The connection now speaks websocket: the HTTP channel is done with, let it go."""
        self._channel = None

    def request_received(self, method: bytes, uri: bytes, forwarded_for: list[bytes] | None) -> None:
        """The channel has the whole request: the request deadline no longer applies."""
        self._cancel_deadline()
        self.access.request(method, uri, self.factory.client_address(self.peer, forwarded_for))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        limits_module.hit("http_request_timeout")
        self._answer(408)

    def _answer(self, status: int) -> None:
        """Answer completely and close; the channel never sees another byte."""
        if self._answered or self.disconnecting:
            return
        self._answered = True
        self._head = bytearray()
        answer = error_answer(status, self.factory.server_header)
        self.access.status = status
        self.access.bytes_out += len(answer)
        transport: Any = self.transport
        transport.write(answer)
        self.loseConnection()
        if interfaces.ISSLTransport.providedBy(transport):
            # TLS would wait for the peer (see the module docstring): our close_notify, if the
            # handshake was done, is already in the socket's buffer; close the socket in order.
            lowest: Any = transport
            while isinstance(lowest, ProtocolWrapper):
                lowest = lowest.transport
            lowest.loseConnection()

    # ---- data ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.access.bytes_in += len(data)
        if self._answered:
            return
        wrapped: Any = self.wrappedProtocol
        if not self._in_head:
            wrapped.dataReceived(data)
            return
        if not self._head and data and data[0] not in _REQUEST_START:
            self._answer(400)
            return
        self._head += data
        limit = self.factory.limits.http_head_bytes
        # The end of the head can straddle two reads: search from just before the new bytes.
        end = self._head.find(_END_OF_HEAD, max(0, len(self._head) - len(data) - 3))
        if end < 0:
            if len(self._head) > limit:
                limits_module.hit("http_head_bytes")
                self._answer(431)
            return
        if end + len(_END_OF_HEAD) > limit:
            limits_module.hit("http_head_bytes")
            self._answer(431)
            return
        self._in_head = False
        whole, self._head = bytes(self._head), bytearray()
        wrapped.dataReceived(whole)

    def write(self, data: bytes) -> None:
        if self._answered:
            return
        if self.wrappedProtocol is self._channel and self._is_bare_error(data):
            # twisted.web refused the request with a status line and nothing else.
            status = int(data[9:12])
            self._answered = True
            answer = error_answer(status, self.factory.server_header, data[13:-4])
            self.access.status = status
            self.access.bytes_out += len(answer)
            transport: Any = self.transport
            transport.write(answer)
            return
        self.access.bytes_out += len(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        if self._answered:
            return
        self.access.bytes_out += sum(len(chunk) for chunk in data)
        super().writeSequence(data)

    @staticmethod
    def _is_bare_error(data: bytes) -> bool:
        return (
            data.startswith(b"HTTP/1.1 4")
            and data.endswith(_END_OF_HEAD)
            and data.count(b"\r\n") == 2
            and data[9:12].isdigit()
        )


def half_close(transport: Any) -> bool:
    """FIN once the buffered bytes are sent, reading goes on: on a socket, directly or under
    the guard. Not under TLS (Twisted's TLS transport cannot half-close, and shutting the
    socket beneath it would cut the TLS stream): False, nothing done."""
    if isinstance(transport, HttpGuard):
        transport = transport.transport
    if isinstance(transport, abstract.FileDescriptor):
        transport.loseWriteConnection()
        return True
    return False


@implementer(ILogObserver)
class EmfileWatch:
    """Twisted logs refused accepts (EMFILE, ENFILE, ENOBUFS...) at INFO: make them a WARNING."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._warn = _RateLimitedWarning(
            clock,
            "Cannot accept new connections ({error}, {count} time(s)): out of file descriptors or "
            "memory; raise LimitNOFILE (ulimit -n) or lower --max-connections",
        )

    def __call__(self, event: dict[str, Any]) -> None:
        if not str(event.get("log_namespace", "")).startswith("twisted.internet.tcp"):
            return
        error = event.get("acceptError")
        if error is None and str(event.get("log_format", "")).startswith("EMFILE"):
            error = "EMFILE"
        if error is not None:
            self._warn(error=error)


def check_file_limit(limits: Limits) -> None:
    """Raise the soft file-descriptor limit to the hard one; warn when it is still too low."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ValueError, OSError):
        return
    needed = limits.max_connections + 256  # database, object store, SMTP, logs...
    if soft != resource.RLIM_INFINITY and soft < needed:
        _log.warn(
            "File descriptor limit {soft} is below --max-connections {max} plus a reserve of 256: "
            "connections will be refused with EMFILE (raise LimitNOFILE, see systemd/parsec.service)",
            soft=soft,
            max=limits.max_connections,
        )


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text.strip(), strict=False)


class Listener:
    """Connection accounting for one listening port (the `factory` of every `HttpGuard`)."""

    def __init__(self, limits: Limits, trusted_proxies: tuple[str, ...], reactor: Any) -> None:
        self.limits = limits
        self.reactor = reactor
        self.server_header = b"parsec"
        self.metrics: NoMetrics = NO_METRICS  # parsec.metrics, set by the service
        self._trusted = [_network(text) for text in trusted_proxies]
        self.protocols: set[HttpGuard] = set()
        self._per_address: Counter[str] = Counter()
        self._started_this_turn = 0
        self._waiting: deque[HttpGuard] = deque()
        self._turn: Any = None
        self._refused = _RateLimitedWarning(
            reactor.seconds,
            "Refused {count} connection(s): {reason} (connections open: {open})",
        )

    # ---- accounting ----------------------------------------------------------------------

    def is_trusted_proxy(self, host: str) -> bool:
        if not self._trusted:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    def client_address(self, peer: str, forwarded_for: list[bytes] | None) -> str:
        """The client of a request: the peer, or the one a trusted proxy's X-Forwarded-For names."""
        if not self.is_trusted_proxy(peer):
            return peer
        return self._client_of(forwarded_for) or peer

    def connections_from(self, address: str) -> int:
        return self._per_address[self.count_key(address)]

    def count_key(self, address: str) -> str:
        """What the per-address cap counts `address` under: itself, or its IPv6 network."""
        if ":" not in address:
            return address  # IPv4 (or no address at all)
        try:
            ip = ipaddress.IPv6Address(address)
        except ValueError:
            return address
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, self.limits.ipv6_prefix_bits), strict=False))

    # ---- new connections, a few per turn ------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def may_start(self, guard: HttpGuard) -> bool:
        """True: `guard` may be read at once; False: it waits for a later turn."""
        self._schedule_turn()
        if not self._waiting and self._started_this_turn < self.limits.connections_per_turn:
            self._started_this_turn += 1
            return True
        self._waiting.append(guard)
        limits_module.hit("connections_per_turn")
        return False

    def _schedule_turn(self) -> None:
        if self._turn is None:
            self._turn = self.reactor.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._turn = None
        self._started_this_turn = 0
        while self._waiting and self._started_this_turn < self.limits.connections_per_turn:
            guard = self._waiting.popleft()
            if not guard.gone:
                self._started_this_turn += 1
                guard.start()
        if self._waiting:
            self._schedule_turn()

    def stop(self) -> None:
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None

    # ---- accounting (continued) ----------------------------------------------------------

    def registerProtocol(self, guard: HttpGuard) -> None:
        self.protocols.add(guard)
        if guard.counted:
            self._per_address[self.count_key(guard.address)] += 1

    def unregisterProtocol(self, guard: HttpGuard) -> None:
        self.protocols.discard(guard)
        self._release(guard)

    def _release(self, guard: HttpGuard) -> None:
        if guard.counted:
            guard.counted = False
            key = self.count_key(guard.address)
            self._per_address[key] -= 1
            if self._per_address[key] <= 0:
                del self._per_address[key]

    def _refusal(self, status: int, reason: str) -> Protocol:
        self._refused(reason=reason, open=len(self.protocols))
        return _Refusal(error_answer(status, self.server_header))

    def build(self, channel: Any, addr: Any) -> Protocol:
        """The protocol of a new connection: a guard around `channel`, or a refusal."""
        host = str(getattr(addr, "host", ""))
        if len(self.protocols) >= self.limits.max_connections:
            limits_module.hit("max_connections")
            return self._refusal(503, f"{self.limits.max_connections} connections open")
        counted = not self.is_trusted_proxy(host)
        if counted and self._per_address[self.count_key(host)] >= self.limits.max_connections_per_address:
            limits_module.hit("max_connections_per_address")
            return self._refusal(429, "too many connections from one address")
        return HttpGuard(self, channel, host, counted)

    def admit_forwarded(self, guard: Any, forwarded_for: list[bytes] | None) -> bool:
        """Behind a trusted proxy, count the request under its client; False: over the cap."""
        if not isinstance(guard, HttpGuard) or guard.counted or not self.is_trusted_proxy(guard.address):
            return True
        client = self._client_of(forwarded_for)
        if client is None:
            return True
        key = self.count_key(client)
        if self._per_address[key] >= self.limits.max_connections_per_address:
            limits_module.hit("max_connections_per_address")
            self._refused(reason="too many connections from one forwarded address", open=len(self.protocols))
            return False
        guard.address = client
        guard.counted = True
        self._per_address[key] += 1
        return True

    def _client_of(self, forwarded_for: list[bytes] | None) -> str | None:
        if not forwarded_for:
            return None
        hops = [hop.strip().decode("latin1") for value in forwarded_for for hop in value.split(b",")]
        for hop in reversed(hops):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return None  # garbage: believe nothing further
            if not self.is_trusted_proxy(hop):
                return hop
        return None
