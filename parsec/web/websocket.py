"""The Parsec websocket: handshake, then one request at a time (docs/protocol/transport.md §3, §6).

The protocol object is a thin shell: frames in, `BackendApp.handshake` /
`BackendApp.dispatch` in the middle, frames out. Rules it enforces itself:

* only binary messages; a text message or an undecodable one gets
  `invalid_msg_format` and a Close(1000);
* after a failed handshake the result is sent and TCP is dropped without a
  Close frame;
* requests are processed strictly in order; while a *cancellable* command
  (`events_listen` wait, `invite_1_claimer_wait_peer`) waits, a new message
  abandons it without any reply;
* a connection closed by the server (revocation, expiration, invitation
  deleted, shutdown) never gets a reply for its in-flight request.

Bounds (parsec.limits), whatever the peer does:

* until the handshake result `ok`, frames and messages are limited to
  `handshake_bytes` (Autobahn closes 1009 above it), and the whole handshake must end
  within `handshake_timeout` (close 1008); afterwards `ws_message_bytes` applies to
  authenticated connections and `unauthenticated_message_bytes` to anonymous and invited
  ones (what they may send is small; the large limit would let each hold 16 MiB unfinished),
  and together these hold at most `unauthenticated_pending_bytes` of unfinished messages
  (the connection that would go over it is closed, 1013);
* a message in more than `ws_message_frames` pieces is refused (close 1009): each piece
  costs Autobahn a hundred bytes and more, one-byte fragments would turn 13 MiB on the wire
  into 275 MiB held;
* at most `ws_frames_per_turn` frame steps of one connection are parsed per turn of the
  event loop; the rest of what was read waits (reading paused) for the next turn. Autobahn
  copies its buffer's remainder for every frame: a read full of tiny frames (pings, one-byte
  fragments) is quadratic and would stall every other connection;
* back-pressure the Twisted way: while a request is processed, at most
  `pipeline_requests` / `pipeline_bytes` further requests are read, then the transport
  stops reading (`pauseProducing`) until the queue drains; the protocol registers a push
  producer on the transport, and while the peer does not read its replies (write buffer
  above `outgoing_buffer_bytes`) no further request is processed and nothing is read;
* a reply larger than `ws_message_bytes` is never handed to Autobahn (it would refuse
  it): the client gets `bad_message` "Reply too large" instead (docs/protocol/DECISIONS.md).

Closing cleanly (no TCP reset in any normal case; a reverse proxy logs a reset as an error):

* a Close the server starts (shutdown 1001, revocation or expiration 1000, protocol error,
  handshake timeout) is followed at once by a TCP half-close (FIN) where the transport can
  (plain TCP; our own TLS cannot): Parsec 2.x clients leave their pooled connections unread
  for hours and never answer a Close there, while a proxy in between (nginx) takes the FIN as
  the end of the upgraded connection and closes both sides at once. A peer that reads answers
  our Close as usual;
* once the peer has answered, the socket is closed in order (Autobahn, as a server, aborts
  it, which sends a reset); a peer that does not answer within `closeHandshakeTimeout` (at
  shutdown: `SHUTDOWN_CLOSE_WAIT`) gets an orderly close too, without Autobahn's warning: for
  those clients it is the normal case (over our own TLS, which waits for the peer's
  close_notify, the socket beneath is closed after one more wait);
* Autobahn still aborts a connection it fails itself (a protocol violation, a frame over the
  limit) or whose keep-alive pong never came: those are not normal cases.
"""

from __future__ import annotations

import contextvars
import importlib
import re
import struct
from array import array
from collections import deque
from time import perf_counter
from types import FunctionType
from typing import TYPE_CHECKING, Any

from autobahn.twisted.util import create_transport_details
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import abstract, defer, interfaces
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from parsec import limits as limits_module
from parsec.api.codec import (
    DecodeError,
    MessageTooLarge,
    has_large_bytes,
    pack_pieces,
    pack_prefixed,
    packb,
    unpackb,
)
from parsec.api.handshake import HandshakeFailed, ServerHandshake
from parsec.backend.command import AuthenticatedContext, ClientContext, InvitedContext, Resumed, SharedReply
from parsec.limits import DEFAULT as DEFAULT_LIMITS
from parsec.limits import Limits
from parsec.logging import debug_enabled
from parsec.metrics import UNKNOWN_COMMAND as UNKNOWN_COMMAND_LABEL
from parsec.web.access import Access
from parsec.web.listener import HttpGuard, half_close, lowest_transport

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

_log = Logger()

INVALID_MSG_FORMAT = packb({"status": "invalid_msg_format", "reason": "Invalid message format"})
UNKNOWN_COMMAND = {"status": "unknown_command", "reason": "Unknown command"}
# Reasons of a close 1011 (fixed texts: never an error message, which may name internals).
UNAVAILABLE_REASON = b"Service temporarily unavailable"
INTERNAL_ERROR_REASON = b"Internal server error"
REPLY_TOO_LARGE = {"status": "bad_message", "reason": "Reply too large"}
CLOSE_POLICY_VIOLATION = 1008
# Shutdown: how long the peers get to answer our Close(1001) before their sockets are closed
# anyway (in order, after our FIN). A peer that reads its connection answers within a round
# trip; a pooled connection its client does not read never answers (see the module docstring).
SHUTDOWN_CLOSE_WAIT = 1.0

_HANDSHAKE, _HANDSHAKE_BUSY, _READY, _DRAINING, _CLOSED = range(5)
# Stands for Autobahn's empty send queue (see `onOpen`): only its length is read.
_NO_SEND_QUEUE: tuple[()] = ()


_SHORT_FRAME = struct.Struct("!BBH")
_LONG_FRAME = struct.Struct("!BBQ")


# Autobahn's compiled XOR masker (its optional "NVX" extension, built with cffi), whose
# function unmasks a buffer in place; None when Autobahn was installed without it.
_nvx: Any = None
_nvx_ffi: Any = None
try:
    from autobahn.websocket import USES_NVX

    if USES_NVX:
        _nvx_module = importlib.import_module("_nvx_xormasker")
        _nvx, _nvx_ffi = _nvx_module.lib, _nvx_module.ffi
except ImportError:  # pragma: no cover - depends on how Autobahn was installed
    _nvx = None


def _unmasked(data: bytes, mask: bytes) -> bytes:
    """`data` XORed with the 4-byte frame `mask` (RFC 6455 §5.3), with Python integers: for
    short payloads (control frames, 125 bytes at most) and where Autobahn has no compiled
    masker."""
    size = len(data)
    pad = (mask * ((size >> 2) + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(size, "little")


def unmask_into(buffer: bytearray, start: int, size: int, mask: bytes) -> None:
    """Unmask `size` bytes of `buffer` from `start` in place: one frame of a message, `mask`
    being the frame's key. With Autobahn's compiled masker when there is one (SSE2, about
    30 us for 512 KiB), else with Python integers (several times slower)."""
    if size <= 0:
        return
    if _nvx is not None:
        masker = _nvx.nvx_xormask_new(mask)
        if masker == _nvx_ffi.NULL:
            raise MemoryError()
        try:
            _nvx.nvx_xormask_process(masker, _nvx_ffi.from_buffer("uint8_t[]", buffer) + start, size)
        finally:
            _nvx.nvx_xormask_free(masker)
        return
    buffer[start : start + size] = _unmasked(bytes(buffer[start : start + size]), mask)


def binary_header(size: int) -> bytes:
    """The header of one final, unmasked binary frame of `size` bytes (RFC 6455 §5.2)."""
    if size < 126:
        return bytes((0x82, size))
    if size < 65536:
        return _SHORT_FRAME.pack(0x82, 126, size)
    return _LONG_FRAME.pack(0x82, 127, size)


def binary_frame(message: dict[str, Any], limit: int) -> bytes | list[bytes] | None:
    """One final binary websocket frame carrying `message` in msgpack (RFC 6455 §5.2; a
    server's frames are not masked): its bytes, or the pieces to write in order when the
    message holds a large bytes value; None if the message is over `limit` bytes.

    Built here rather than by Autobahn's `sendMessage`, which checks options we never use
    (compression, fragmentation, masking) and joins header and payload into a further copy:
    this costs one copy of the message (`pack_prefixed`), none of a large bytes value in it
    (`pack_pieces`: a block), and one transport write. Other replies stay on the one-piece
    path: pieces for every reply cost a `ping` 6k more instructions (callgrind: 214k -> 220k),
    the check alone 1-2k.
    """

    def header(size: int) -> bytes:
        if size > limit:
            raise MessageTooLarge()
        return binary_header(size)

    try:
        if has_large_bytes(message):
            return pack_pieces(message, header)
        return pack_prefixed(message, header)
    except MessageTooLarge:
        return None


@implementer(interfaces.IPushProducer)
class _OutputWatch:
    """Registered on the transport: told when the peer stops (and resumes) reading."""

    def __init__(self, proto: ParsecServerProtocol) -> None:
        self._proto = proto

    def pauseProducing(self) -> None:
        self._proto._set_output_blocked(True)

    def resumeProducing(self) -> None:
        self._proto._set_output_blocked(False)

    def stopProducing(self) -> None:
        pass


class ParsecServerProtocol(WebSocketServerProtocol):
    factory: ParsecWebSocketFactory

    # Our own state in slots, out of the instance dict that Autobahn fills with some seventy
    # attributes: a dict grows its table by doubling, and three attributes more (86 -> 87
    # keys) took an idle connection from 7.7 to 10.8 KiB (the table from 1.6 to 3.3 KB;
    # benchmarks/server_bench.py, idle). Autobahn's own attributes stay in the dict.
    __slots__ = (
        "_access",
        "_backlog",
        "_close_when_idle",
        "_ctx",
        "_current",
        "_current_cancellable",
        "_current_long_poll",
        "_deadline",
        "_gone_waiters",
        "_hs",
        "_idle_waiters",
        "_incoming",
        "_incoming_bytes",
        "_masks",
        "_output_blocked",
        "_pending",
        "_reading_paused",
        "_running",
        "_state",
        "_unparsed",
        "gone",
    )

    def __init__(self) -> None:
        super().__init__()
        self._state = _HANDSHAKE
        self._hs: ServerHandshake | None = None
        self._ctx: ClientContext | None = None
        # A list, not a deque: it holds at most `pipeline_requests` (8) messages, and an idle
        # connection's empty deque would take 624 bytes against 56.
        self._incoming: list[bytearray] = []
        self._incoming_bytes = 0
        # The key and size of each frame of the message being received, two integers a frame
        # (16 bytes: a message may come in `ws_message_frames` pieces), for the unmasking once
        # it is complete (`onMessageEnd`); None between messages.
        self._masks: array[int] | None = None
        self._current: defer.Deferred[Any] | None = None
        self._current_cancellable = False
        self._current_long_poll = False
        self._running = False
        self._idle_waiters: list[defer.Deferred[None]] = []
        self._close_when_idle = False
        self._output_blocked = False
        self._reading_paused = False
        self._deadline: Any = None
        self._backlog: Any = None  # the call that parses the rest of the buffer, next turn
        self._unparsed = False  # parsing stopped by `ws_frames_per_turn`, to go on later
        self._pending: int | None = None  # anonymous, invited: bytes of the unfinished message
        self.gone = False  # the TCP connection is gone
        self._access: Access | None = None  # the connection's access log line, when served by our site
        self._gone_waiters: list[defer.Deferred[None]] = []

    @property
    def limits(self) -> Limits:
        return self.factory.limits

    # ---- transport -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        # What Autobahn's Twisted and server layers do before its `_connectionMade`, without
        # their debug lines, whose arguments (qualified names, colours) are formatted before
        # the logger drops them: 31k instructions of a `connect` (callgrind).
        # (Autobahn also sets TCP_NODELAY, which twisted.web's channel has already set on the
        # connection: a websocket comes after an HTTP request, and we never turn it off.)
        details = create_transport_details(self.transport, self.is_server)  # type: ignore[arg-type]  # connected
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        self._transport_details = details
        self.peer = details.peer
        WebSocketProtocol._connectionMade(self)
        self.factory.countConnections += 1
        # Until the handshake succeeds, a few KiB at most (docs/protocol/handshake.md).
        self.maxFramePayloadSize = self.maxMessagePayloadSize = self.limits.handshake_bytes
        transport: Any = self.transport  # a TCP/TLS transport: also a consumer and a producer
        assert transport is not None
        if isinstance(transport, HttpGuard):
            self._access = transport.access
            self._access.websocket = True
        # The HTTP channel that answered the upgrade was the transport's producer: we are now.
        transport.unregisterProducer()
        transport.registerProducer(_OutputWatch(self), True)
        lowest = lowest_transport(transport)
        if isinstance(lowest, abstract.FileDescriptor):
            lowest.bufferSize = self.limits.outgoing_buffer_bytes
        self._deadline = self.factory.reactor.callLater(self.limits.handshake_timeout, self._handshake_expired)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        self._cancel_backlog()
        if isinstance(reason.value, ConnectionDone):
            # A clean close (the usual end, after the close handshake): what Autobahn's Twisted
            # and server layers add to its `_connectionLost` is debug lines, one of which formats
            # the reason's traceback before its logger drops it (55k instructions of a `connect`,
            # callgrind); anything else (a reset, a TLS error, which it logs) goes through them.
            WebSocketProtocol._connectionLost(self, reason)  # type: ignore[arg-type]  # a Failure
            self.factory.countConnections -= 1
        else:
            super().connectionLost(reason)
        self.gone = True
        waiters, self._gone_waiters = self._gone_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_gone(self) -> defer.Deferred[None]:
        """Fires once the TCP connection is gone (cancelling it changes nothing else)."""
        if self.gone:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._gone_waiters.append(waiter)
        return waiter

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self._state in (_HANDSHAKE, _HANDSHAKE_BUSY):
            _log.info("Connection closed: no handshake within {timeout} s", timeout=self.limits.handshake_timeout)
            limits_module.hit("handshake_timeout")
            self.factory.app.metrics.handshake("timeout")
            self._state = _CLOSED
            # Policy violation; Autobahn drops the TCP connection if the peer does not answer
            # the close within closeHandshakeTimeout.
            self.sendCloseFrame(code=CLOSE_POLICY_VIOLATION, reasonUtf8=b"Handshake timeout", isReply=False)
            self._update_reading()

    def _set_output_blocked(self, blocked: bool) -> None:
        self._output_blocked = blocked
        self._update_reading()
        if not blocked:
            self._pump()
            if self._unparsed and self._backlog is None:
                self._schedule_backlog()

    # ---- parsing, a bounded number of frame steps per turn ------------------------------

    def consumeData(self) -> None:
        if self.state != self.STATE_OPEN and self.state != self.STATE_CLOSING:
            super().consumeData()  # the opening handshake, or nothing once closed
            return
        if self._backlog is not None:
            return  # the rest is parsed in its turn (the buffer keeps the order)
        self._unparsed = False
        budget = self.limits.ws_frames_per_turn
        while self.processData() and self.state != self.STATE_CLOSED:
            budget -= 1
            if budget <= 0:
                # More to parse: in a later turn, once the peer reads what we wrote.
                limits_module.hit("ws_frames_per_turn")
                self._unparsed = True
                if not self._output_blocked:
                    self._schedule_backlog()
                self._update_reading()
                return

    def _schedule_backlog(self) -> None:
        self._backlog = self.factory.reactor.callLater(0, self._parse_backlog)

    def _parse_backlog(self) -> None:
        self._backlog = None
        self.consumeData()
        self._update_reading()

    def _cancel_backlog(self) -> None:
        if self._backlog is not None and self._backlog.active():
            self._backlog.cancel()
        self._backlog = None

    def _update_reading(self) -> None:
        """Read from the peer only while the pipeline has room and the peer reads replies."""
        limits = self.limits
        busy = self._current is not None or self._running
        full = busy and (
            len(self._incoming) >= limits.pipeline_requests or self._incoming_bytes >= limits.pipeline_bytes
        )
        pause = (full or self._output_blocked or self._unparsed) and self._state != _CLOSED
        transport: Any = self.transport  # a TCP/TLS transport: also a producer
        if pause == self._reading_paused or transport is None:
            return
        self._reading_paused = pause
        if pause:
            # (Paused only to parse what was read over the next turns: counted in consumeData.)
            if self._output_blocked:
                limits_module.hit("outgoing_buffer_bytes")
            elif full:
                over_count = len(self._incoming) >= limits.pipeline_requests
                limits_module.hit("pipeline_requests" if over_count else "pipeline_bytes")
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    @property
    def queued_requests(self) -> tuple[int, int]:
        """(requests, bytes) read ahead and waiting (tests, benchmarks)."""
        return len(self._incoming), self._incoming_bytes

    # ---- closing cleanly (see the module docstring) -------------------------------------

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False) -> None:
        starting = not isReply and self.state == self.STATE_OPEN
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)
        if starting:
            # Nothing follows our Close: half-close (FIN once it is sent), keep reading the answer.
            half_close(self.transport)

    def dropConnection(self, abort: bool = False) -> None:
        if abort and self.wasClean:
            # Autobahn aborts (TCP reset) a server connection whose peer has just answered the
            # Close we sent: the closing handshake is complete, close in order.
            abort = False
        super().dropConnection(abort=abort)

    def onCloseHandshakeTimeout(self) -> None:
        """The peer did not answer our Close in time: close in order, quietly (Autobahn would
        abort the connection and log a warning; for a pooled connection of a Parsec 2.x client
        it is the normal case)."""
        self.closeHandshakeTimeoutCall = None
        self.close_unanswered()

    def close_unanswered(self) -> None:
        if self.state == self.STATE_CLOSED:
            return
        # Clean for Autobahn's log line only: onClose (when the socket is gone) sees the truth.
        self.wasClean = True
        super().dropConnection(abort=False)
        self.wasClean = False
        self.wasNotCleanReason = "the peer did not answer the Close frame"
        self.wasCloseHandshakeTimeout = True

    @property
    def kind(self) -> str:
        """The connection's kind (`authenticated`, ...), `handshake` until the handshake is done."""
        return self._ctx.kind if self._ctx is not None else "handshake"

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        # Autobahn's hook for a frame or message over maxFramePayloadSize/maxMessagePayloadSize.
        if self._ctx is None:
            limits_module.hit("handshake_bytes")
        elif isinstance(self._ctx, AuthenticatedContext):
            limits_module.hit("ws_message_bytes")
        else:
            limits_module.hit("unauthenticated_message_bytes")
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def onMessageFrameData(self, payload: bytes) -> None:
        if self._pending is not None and not self.failedByMe:
            # Anonymous or invited: the bytes held count against the shared budget.
            factory = self.factory
            self._pending += len(payload)
            factory.unauthenticated_pending += len(payload)
            if factory.unauthenticated_pending > self.limits.unauthenticated_pending_bytes:
                limits_module.hit("unauthenticated_pending_bytes")
                self._release_pending()
                self._fail_connection(1013, "Try again later")
                return
        super().onMessageFrameData(payload)

    def _release_pending(self) -> None:
        if self._pending:
            self.factory.unauthenticated_pending -= self._pending
            self._pending = 0

    def onMessageFrameBegin(self, length: int) -> None:
        # `message_data` holds a piece per frame (per read of a frame read in several).
        if len(self.message_data) >= self.limits.ws_message_frames and not self.failedByMe:
            limits_module.hit("ws_message_frames")
            self._fail_connection(self.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG, "Message in too many frames")
            return
        super().onMessageFrameBegin(length)  # the size limits, before anything is held
        if length and not self.failedByMe:
            mask: bytes | None = self.current_frame.mask  # type: ignore[assignment]  # bytes, annotated str
            if self._masks is None:
                self._masks = array("Q")
            # (Autobahn refuses an unmasked client frame; key 0 would leave it as it is.)
            self._masks.append(int.from_bytes(mask, "big") if mask is not None else 0)
            self._masks.append(length)

    # ---- unmasking (see `onMessageEnd`) ---------------------------------------------------

    def processControlFrame(self) -> bool:
        # Autobahn unmasks nothing (`applyMask=False`): a control frame (125 bytes at most) is
        # unmasked here, once complete, data frames once their message is (`onMessageEnd`).
        mask: bytes | None = self.current_frame.mask  # type: ignore[assignment]  # bytes, annotated str
        if mask is not None and self.control_frame_data:
            self.control_frame_data = [_unmasked(b"".join(self.control_frame_data), mask)]
        result: bool = super().processControlFrame()
        return result

    # ---- autobahn callbacks --------------------------------------------------------------
    #
    # Two of Autobahn's per-message steps do work nobody here uses: its `dataReceived` formats
    # a debug line (qualified names, colours) on every read before its logger drops it, and its
    # `onMessageEnd` fires the "message" observer event (a txaio future per message; we
    # register no observer). Both are replaced by what remains of them: 10 % of a `ping`
    # (benchmarks/server_bench.py, ping). They rely on Autobahn's `_dataReceived`,
    # `failedByMe`, `message_data` and `message_is_binary`:
    # tests/transport/test_autobahn_shortcuts.py fails if Autobahn changes them.

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def onMessageEnd(self) -> None:
        if self._pending:
            self._release_pending()
        masks, self._masks = self._masks, None
        if not self.failedByMe:
            # The message assembled in one buffer and unmasked there, frame by frame: one copy
            # of what was read. Autobahn's masker copied each piece of a frame three times (a
            # zeroed buffer, the masked bytes, the unmasked result) before its join made a
            # fourth copy, and cost some 6 us per frame in cffi objects
            # (benchmarks/server_bench.py, block_create_4k and block_create_512k).
            payload = bytearray().join(self.message_data)
            if masks is not None:
                start = 0
                for index in range(0, len(masks), 2):
                    key, size = masks[index], masks[index + 1]
                    if key:
                        unmask_into(payload, start, size, key.to_bytes(4, "big"))
                    start += size
            self.onMessage(payload, self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]  # as Autobahn does

    def open_plain(self, key: str, host: str) -> None:
        """The opening handshake of a plain upgrade request (`ParsecWebSocketFactory.upgrade`):
        what Autobahn's `processHandshake` records of such a request, then its
        `succeedHandshake` (no subprotocol, as our `onConnect` says), which answers 101 and
        opens the websocket (`onOpen`)."""
        self.http_request_uri = self.http_request_path = "/ws"
        self.http_request_params = {}
        self.http_request_host = host
        self.websocket_version = 13
        self.websocket_protocols = []
        self.websocket_origin = ""
        self.websocket_extensions = []
        self._wskey = key
        self.succeedHandshake(None)

    def onOpen(self) -> None:
        if self._access is not None:
            self._access.status = 101
        # The upgrade request is done with: what Autobahn parsed of it, and the HTTP channel and
        # request the listener's guard still holds (over 2 KiB per idle connection).
        self.http_request_data = b""
        self.http_headers = {}
        self.http_response_data = None  # type: ignore[assignment]  # our 101 answer, sent
        # Autobahn's queue of chopped or synchronous sends, which we never make: an empty
        # deque is 624 bytes per connection; `sendData` brings one back if ever needed
        # (benchmarks/server_bench.py, idle).
        self.send_queue = _NO_SEND_QUEUE  # type: ignore[assignment]
        guard: Any = self.transport
        if isinstance(guard, HttpGuard):
            guard.upgraded()
        try:
            self.factory.connections.add(self)
            self._hs = ServerHandshake()
            self._send_packed(self._hs.build_challenge(self.factory.app.now()))
        except Exception:
            _log.failure("Cannot start the handshake")
            self.sendCloseFrame(code=1011, isReply=False)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        queue: Any = self.send_queue  # Autobahn annotates it a deque
        if not (sync or chopsize or queue or self.logOctets):  # type: ignore[attr-defined]  # an option
            # Autobahn's plain write without its debug line, whose arguments (qualified name,
            # colours) it formats before its logger drops them: the 101 and the Close of a
            # `connect`, 41k of its instructions (callgrind).
            self.transport.write(data)  # type: ignore[union-attr]  # connected
            stats = self.trafficStats
            if self.state == self.STATE_OPEN:
                stats.outgoingOctetsWireLevel += len(data)
            elif self.state == self.STATE_CONNECTING:
                stats.preopenOutgoingOctetsWireLevel += len(data)
            return
        if (sync or chopsize) and queue is _NO_SEND_QUEUE:
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    def onConnect(self, request: Any) -> None:
        """No subprotocol (docs/protocol/transport.md §2.2); Autobahn's own formats a debug line."""
        return None

    def onMessage(self, payload: bytearray, isBinary: bool) -> None:  # type: ignore[override]  # ours: always a bytearray
        if self._state in (_CLOSED, _DRAINING):
            return
        if not isBinary:
            self._protocol_error()
            return
        if self._state == _HANDSHAKE:
            self._state = _HANDSHAKE_BUSY
            self._run(self._handshake(payload))
        elif self._state == _HANDSHAKE_BUSY:
            # The client must wait for the result; anything else is a protocol violation.
            self._protocol_error()
        else:
            self._incoming.append(payload)
            self._incoming_bytes += len(payload)
            if self._current is not None and self._current_cancellable:
                self._current.cancel()
            if not self._pump():
                self._update_reading()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._access is not None:
            self._note_close(self._access)
        self._state = _CLOSED
        self._cancel_deadline()
        # Autobahn cancels its close-handshake timer only when the peer answers our Close: a
        # peer that just drops the connection would leave it pending for seconds, holding
        # this protocol (found by the reactor-clean check of the tests).
        pending: Any = self.closeHandshakeTimeoutCall  # Autobahn annotates it None
        if pending is not None:
            pending.cancel()
            self.closeHandshakeTimeoutCall = None
        self.factory.connections.discard(self)
        self._release_pending()
        self._incoming.clear()
        self._incoming_bytes = 0
        if self._current is not None:
            self._current.cancel()
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            self.factory.app.unregister(ctx)

    def _note_close(self, access: Access) -> None:
        """Who closed, with which code (the first Close frame), for the access log."""
        local: Any = self.localCloseCode  # Autobahn annotates both None
        remote: Any = self.remoteCloseCode
        if self.closedByMe and local is not None:
            access.closed_by, access.close_code = "server", local
        elif remote is not None:
            access.closed_by, access.close_code = "client", remote
        else:  # the TCP connection ended without a Close frame
            access.closed_by = "server" if self.droppedByMe else "client"

    # ---- handshake -----------------------------------------------------------------------

    def _run(self, coro: Any) -> None:
        """Run the handshake's coroutine as `_start` runs a command's: stepped once here, in a
        context of its own; only one that waits (a database lookup) gets a driver for the rest
        (`Resumed`). On the memory storage nothing waits: no Deferred, no driver."""
        context = contextvars.copy_context()
        try:
            awaited = context.run(coro.send, None)
        except StopIteration:
            return
        except Exception:
            self._internal_error(Failure())
            return
        Resumed(coro, context, awaited).deferred.addErrback(self._internal_error)

    def _internal_error(self, failure: Any) -> None:
        if failure.check(ConnectionError):
            # A backing service is unreachable or too slow (the database restarts, or a
            # statement, lock or pool wait ran past its limit): one line, the client
            # reconnects later.
            _log.warn("Websocket connection closed: {error}", error=failure.getErrorMessage())
            reason = UNAVAILABLE_REASON
        else:
            _log.failure("Unexpected error on a websocket connection", failure=failure)
            reason = INTERNAL_ERROR_REASON
        if self._state != _CLOSED:
            self._state = _CLOSED
            self.sendCloseFrame(code=1011, reasonUtf8=reason, isReply=False)

    async def _handshake(self, payload: bytes | bytearray) -> None:
        assert self._hs is not None
        app = self.factory.app
        try:
            ctx = await app.handshake(self._hs, payload)
        except HandshakeFailed as exc:
            app.metrics.handshake(exc.result)
            if self._access is not None:
                self._access.handshake = exc.result
            help = exc.help[: self.limits.handshake_help_chars]
            _log.info("Connection dropped: bad handshake ({result}: {help})", result=exc.result, help=help)
            if self._state != _CLOSED:
                self._state = _CLOSED
                if self.state == self.STATE_OPEN:
                    self._send_packed(ServerHandshake.build_failure(exc))
                self.dropConnection(abort=False)
            return
        if self._state == _CLOSED or self.state != self.STATE_OPEN:
            return
        self._cancel_deadline()
        self._hs = None  # its challenge is answered
        app.metrics.handshake("ok")
        if self._access is not None:
            access = self._access
            access.handshake = "ok"
            access.kind = ctx.kind
            access.organization_id = ctx.organization_id
            if isinstance(ctx, AuthenticatedContext):
                access.device_id = ctx.device_id
        ctx.close = self._server_close
        if isinstance(ctx, InvitedContext):
            ctx.close_when_idle = self._server_close_when_idle
        app.register(ctx)
        self._ctx = ctx
        self._state = _READY
        if isinstance(ctx, AuthenticatedContext):
            self.maxFramePayloadSize = self.maxMessagePayloadSize = self.limits.ws_message_bytes
        else:
            limit = min(self.limits.unauthenticated_message_bytes, self.limits.ws_message_bytes)
            self.maxFramePayloadSize = self.maxMessagePayloadSize = limit
            self._pending = 0
        self._send_packed(ServerHandshake.build_result("ok"))
        app.on_handshake_done(ctx)
        self._pump()

    # ---- command loop --------------------------------------------------------------------
    #
    # Requests run one at a time, in order. Most commands finish without waiting for anything
    # (every command on the memory storage, anything answered from memory): `_start` steps the
    # command's coroutine once, and when it is already done, the reply is sent at once, without
    # any Deferred. Only a command that awaits something gets a driver (`Resumed`, for the
    # rest of it), and the pump resumes once its reply is sent. Saves two Deferreds and two
    # coroutine drivers per request: about 12 % of a `ping` (callgrind; benchmarks/server_bench.py,
    # ping). The first step runs in a context of its own, as Twisted would run it (the pool marks
    # the connection a task holds in a context variable).

    def _pump(self) -> bool:
        """Process what is queued, in order; False if nothing could start (then the caller
        updates the reading state itself: when it ran, the pump did)."""
        if self._running or self._state != _READY or not self._incoming or self._output_blocked:
            return False
        self._running = True
        while self._incoming and self._state == _READY and not self._output_blocked:
            payload = self._incoming.pop(0)
            self._incoming_bytes -= len(payload)
            try:
                waiting = self._start(payload)
            except Exception:
                self._internal_error(Failure())
                break
            if waiting:
                self._update_reading()
                return True
        self._running = False
        self._update_reading()
        return True

    def _resume(self) -> None:
        self._running = False
        if not self._pump():
            self._update_reading()

    def _start(self, payload: bytearray) -> bool:
        """Process one request; True if it has to wait (`_settled` resumes the pump)."""
        app = self.factory.app
        ctx = self._ctx
        assert ctx is not None
        try:
            msg = unpackb(payload)
        except DecodeError:
            self._protocol_error()
            return False
        cmd = msg.get("cmd")
        route = app.route(ctx.kind, cmd)
        if route is None:
            app.metrics.command(UNKNOWN_COMMAND_LABEL).done("unknown_command", 0.0)
            self._send_reply(UNKNOWN_COMMAND)
            return False
        metrics = app.metrics.command(route.meta.name, route.meta.long_poll)
        started = perf_counter()
        coro = app.dispatch(ctx, route, msg)
        context = contextvars.copy_context()
        d: defer.Deferred[Any]
        try:
            awaited = context.run(coro.send, None)
        except StopIteration as done:
            answer = done.value
            if not isinstance(answer, defer.Deferred):
                metrics.done(str(answer.get("status")), perf_counter() - started)
                self._answered(cmd, answer)
                return False
            # The command returned the Deferred of its reply (parsec.backend.command.Answer):
            # nothing to drive.
            d = answer
        except BaseException:
            metrics.done("crashed", perf_counter() - started)
            raise
        else:
            d = Resumed(coro, context, awaited).deferred
        self._current = d
        self._current_cancellable = route.meta.cancellable
        self._current_long_poll = route.meta.long_poll
        if self._current_cancellable and self._incoming:
            d.cancel()
        # One callback does everything once the command ends (answer, errors, resuming the
        # pump): each further one would stay allocated on every waiting connection.
        d.addBoth(self._settled, cmd, metrics, started)
        return True

    def _settled(self, result: Any, cmd: object, metrics: Any, started: float) -> None:
        self._current = None
        self._current_cancellable = False
        self._current_long_poll = False
        try:
            if isinstance(result, Failure):
                if result.check(defer.CancelledError):
                    metrics.done("cancelled", perf_counter() - started)
                    self._answered(cmd, None)  # abandoned: no reply
                else:
                    metrics.done("crashed", perf_counter() - started)
                    self._internal_error(result)
            else:
                metrics.done(str(result.get("status")), perf_counter() - started)
                self._answered(cmd, result)
        except Exception:
            self._internal_error(Failure())
        self._resume()

    def _answered(self, cmd: object, reply: dict[str, Any] | None) -> None:
        if reply is not None:
            if debug_enabled():
                _log.debug("Request {cmd} -> {status}", cmd=cmd, status=reply.get("status"))
            self._send_reply(reply)
        if self._close_when_idle:
            self._server_close()
        # After the reply: a draining shutdown waits for it before closing.
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _send_reply(self, reply: dict[str, Any]) -> None:
        # While draining for shutdown, the in-flight request still gets its reply.
        if self._state not in (_READY, _DRAINING) or self.state != self.STATE_OPEN:
            return
        limit = self.limits.ws_message_bytes
        framed = reply.framed if type(reply) is SharedReply else None
        if framed is not None and framed[0] == limit:
            frame: bytes | list[bytes] | None = framed[1]
        else:
            frame = binary_frame(reply, limit)
            if frame is not None and type(reply) is SharedReply:
                reply.framed = (limit, frame)
        if frame is None:
            # Autobahn would refuse it (and the feeds are bounded so that honest use never
            # gets here): the protocol's own error status instead, one warning.
            limits_module.hit("ws_message_bytes")
            _log.warn(
                "Reply over the {limit}-byte message limit: answered bad_message",
                limit=self.limits.ws_message_bytes,
            )
            frame = binary_frame(REPLY_TOO_LARGE, self.limits.ws_message_bytes)
            assert frame is not None
        transport: Any = self.transport  # through the listener's guard, which counts the bytes
        if type(frame) is bytes:
            transport.write(frame)
        else:
            transport.writeSequence(frame)

    def _send_packed(self, payload: bytes) -> None:
        """A handshake message (challenge, result: a few hundred bytes, already packed) in one
        frame written as `_send_reply` writes replies, not through Autobahn's `sendMessage`
        (22k instructions of a `connect`, callgrind); the caller has checked the websocket is
        open."""
        transport: Any = self.transport  # through the listener's guard, which counts the bytes
        transport.write(binary_header(len(payload)) + payload)

    def _protocol_error(self) -> None:
        self._state = _CLOSED
        if self.state == self.STATE_OPEN:
            self.sendMessage(INVALID_MSG_FORMAT, isBinary=True)
            self.sendClose(code=1000)
        self._update_reading()  # read the peer's close answer

    def _server_close_when_idle(self) -> None:
        """Server-side termination once the in-flight request is answered (invitation deleted:
        the claimer's exchange may already have its answer, docs/protocol/DECISIONS.md); its
        exchange is woken by the same event and ends either way."""
        if self._current is None:
            self._server_close()
        else:
            self._close_when_idle = True

    def _server_close(self) -> None:
        """Server-side termination (revocation, expiration, invitation deleted)."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        if self._current is not None:
            self._current.cancel()
        self.sendClose(code=1000)
        self._update_reading()  # read the peer's close answer

    async def shutdown(self, grace: float, reactor: Any) -> None:
        """Stop reading requests, let the in-flight one finish (bounded), close with 1001."""
        if self._state == _CLOSED:
            return
        self._state = _DRAINING
        self._incoming.clear()
        self._incoming_bytes = 0
        if self._current is not None:
            if self._current_long_poll:
                # Waiting for a peer or an event: nothing to finish.
                self._current.cancel()
            else:
                idle: defer.Deferred[None] = defer.Deferred()
                self._idle_waiters.append(idle)
                idle.addTimeout(grace, reactor)
                try:
                    await idle
                except defer.TimeoutError:
                    if self._current is not None:
                        self._current.cancel()
        self._state = _CLOSED
        # Autobahn's sendClose() only accepts 1000 and 3000-4999 from applications;
        # 1001 "going away" is the right code for a server shutting down.
        self.sendCloseFrame(code=1001, isReply=False)
        self._update_reading()  # read the peer's close answer


# A plain upgrade request (`plain_upgrade`): header names are tokens, values visible ASCII,
# Latin-1, spaces and tabs (what Autobahn's parser accepts); the key is 16 bytes in base64.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_WEBSOCKET_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")
# Headers that ask for something to negotiate or check: such requests go to Autobahn.
_NEGOTIATED = (b"origin", b"sec-websocket-extensions", b"sec-websocket-protocol")


def plain_upgrade(request: Any) -> tuple[str, str] | None:
    """The key and host of an upgrade request (already routed as one: `GET /ws HTTP/1.1`,
    docs/protocol/transport.md §2.2) that Autobahn's opening handshake would accept as it
    is, with nothing to negotiate; None for any other, which Autobahn's WebSocketResource
    then handles as before (it parses the request again from twisted.web's headers, and
    checks and answers everything itself).

    Plain: a GET without a body, well-formed headers, one `Host` (its port, if any, a
    number), one `Sec-WebSocket-Version: 13`, one well-formed `Sec-WebSocket-Key`, and no
    `Origin`, `Sec-WebSocket-Extensions` or `Sec-WebSocket-Protocol` (the Parsec client sends
    none of them).
    """
    if request.method != b"GET":
        return None
    content = request.content
    if content is not None:
        pending = content.read(1)
        content.seek(0)
        if pending:
            return None
    headers = request.requestHeaders
    for name, values in headers.getAllRawHeaders():
        if name.lower() in _NEGOTIATED or _TOKEN.fullmatch(name) is None:
            return None
        for value in values:
            if _FIELD_VALUE.fullmatch(value) is None:
                return None
    keys = headers.getRawHeaders(b"sec-websocket-key")
    hosts = headers.getRawHeaders(b"host")
    if (
        headers.getRawHeaders(b"sec-websocket-version") != [b"13"]
        or keys is None
        or len(keys) != 1
        or _WEBSOCKET_KEY.fullmatch(keys[0]) is None
        or hosts is None
        or len(hosts) != 1
    ):
        return None
    host = hosts[0].strip().decode("latin-1")
    if ":" in host and not host.endswith("]"):
        host, port = host.rsplit(":", 1)
        if not (port.isascii() and port.isdigit()):
            return None
    return keys[0].decode("ascii"), host


class ParsecWebSocketFactory(WebSocketServerFactory):
    protocol = ParsecServerProtocol  # type: ignore[assignment]  # Factory's annotation is too narrow

    def __init__(self, app: BackendApp, limits: Limits = DEFAULT_LIMITS, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.app = app
        self.limits = limits
        self.reactor = reactor
        self.connections: set[ParsecServerProtocol] = set()
        # Bytes of unfinished messages held by anonymous and invited connections.
        self.unauthenticated_pending = 0
        self.server = None  # no Server header on the 101 answer
        self.setProtocolOptions(
            # Lowered to `handshake_bytes` on each connection until its handshake succeeds.
            maxMessagePayloadSize=limits.ws_message_bytes,
            maxFramePayloadSize=limits.ws_message_bytes,
            # Keep-alive: a ping after this much silence; with a timeout, a close when the
            # pong does not come (parsec.limits explains why the default has none).
            autoPingInterval=limits.ws_keepalive_interval,
            autoPingTimeout=limits.ws_keepalive_timeout,
            perMessageCompressionAccept=lambda offers: None,
            # None: the upgrade request reaches the protocol whole, as it is created (by
            # twisted.web, then `upgrade` or Autobahn's WebSocketResource), and is answered at
            # once; the listener bounds the time to receive it (`http_request_timeout`). A
            # timer per connection, set and cancelled in the same call, was 31k instructions of a
            # `connect` (callgrind).
            openHandshakeTimeout=0,
            closeHandshakeTimeout=5,
            # Any text message is refused with `invalid_msg_format` + Close(1000) (docs/protocol/transport.md
            # §3); validating its UTF-8 first would make Autobahn drop the connection instead.
            utf8validateIncoming=False,
            # The client's frames are unmasked by us, once per message, into the buffer that
            # holds the message (ParsecServerProtocol.onMessageEnd).
            applyMask=False,
        )
        self.protocol = _with_options(ParsecServerProtocol, self)

    def upgrade(self, request: Any) -> bool:
        """Take the connection of a plain upgrade request (`plain_upgrade`) over from
        twisted.web and open the websocket at once; False (nothing done) for any other
        request, which the caller hands to Autobahn's WebSocketResource.

        What WebSocketResource does, minus what it does again: it rebuilds the request's
        bytes from twisted.web's headers and feeds them to the new protocol, whose opening
        handshake parses and checks them all again, then goes through a Deferred to the
        application's `onConnect` before its `succeedHandshake` answers 101. A plain request
        has nothing left to check: its fields are recorded as that parsing would, and
        `succeedHandshake` answers. 162k instructions of a `connect` (callgrind; benchmarks/server_bench.py,
        connect). tests/transport/test_autobahn_shortcuts.py checks what it relies on.
        """
        channel = request.channel
        transport = channel.transport
        if not isinstance(transport, ProtocolWrapper):  # the listener's guard, in this server
            return False
        plain = plain_upgrade(request)
        if plain is None:
            return False
        proto: Any = self.buildProtocol(transport.getPeer())
        if proto is None:
            return False
        channel.transport = None  # the HTTP channel is done with this connection
        transport.wrappedProtocol = proto
        proto.makeConnection(transport)
        # twisted.web stopped reading while it processed the request: the websocket reads.
        transport.resumeProducing()
        key, host = plain
        proto.open_plain(key, host)
        return True

    async def close_all(self, grace: float = 5.0, timeout: float = SHUTDOWN_CLOSE_WAIT) -> None:
        """Shutdown: drain every connection (requests get `grace` seconds), then wait for the
        close handshakes (`timeout` seconds) before closing whatever is left (in order)."""
        # The global reactor, as the connections use it; not imported at the top, where
        # importing it would install the default reactor.
        from twisted.internet import reactor

        protocols = list(self.connections)
        if not protocols:
            return
        await defer.DeferredList(
            [defer.ensureDeferred(p.shutdown(grace, reactor)) for p in protocols], consumeErrors=True
        )
        left = await self._wait_gone(protocols, timeout, reactor)
        for proto in left:
            proto.close_unanswered()
        # Over our own TLS, closing waits for the peer's close_notify, which a client that does
        # not read never sends: close the socket beneath (in order, our close_notify is out).
        left = await self._wait_gone(left, timeout, reactor)
        for proto in left:
            socket = lowest_transport(proto.transport)
            if socket is not None:
                socket.loseConnection()
        # A peer that reads nothing at all (its window full, our FIN stuck behind the data):
        # only an abort frees the socket.
        left = await self._wait_gone(left, timeout, reactor)
        for proto in left:
            transport: Any = proto.transport  # TCP, TLS or the listener's guard: all can abort
            if transport is not None:
                transport.abortConnection()
        await self._wait_gone(left, timeout, reactor)  # gone at the next turn

    @staticmethod
    async def _wait_gone(
        protocols: list[ParsecServerProtocol], timeout: float, reactor: Any
    ) -> list[ParsecServerProtocol]:
        """Wait (at most `timeout` seconds) until the connections are gone; those left."""
        waiting = [proto for proto in protocols if not proto.gone]
        if waiting:
            done = defer.DeferredList([proto.when_gone() for proto in waiting], consumeErrors=True)
            done.addTimeout(timeout, reactor)
            try:
                await done
            except defer.TimeoutError:
                pass
        return [proto for proto in waiting if not proto.gone]


def _with_options(protocol: type[ParsecServerProtocol], factory: WebSocketServerFactory) -> Any:
    """`protocol` with the factory's options as class attributes, and none to copy.

    On every connection Autobahn copies each of its options (`CONFIG_ATTRS`, ~40) from the
    factory into the new protocol's `__dict__`, then pretty-prints them all (`pformat`) for a
    debug line its logger drops: a third of the CPU of a `connect` (cProfile) and about 1.5 KiB
    per connection. Options held once by the class, with nothing listed to copy, read the
    same. tests/transport/test_autobahn_shortcuts.py fails if Autobahn changes how it copies.
    """
    options: dict[str, Any] = {}
    for name in protocol.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A function as a class attribute would become a method: keep it a plain function.
        options[name] = staticmethod(value) if isinstance(value, FunctionType) else value
    options["CONFIG_ATTRS"] = ()
    return type(protocol.__name__, (protocol,), options)
