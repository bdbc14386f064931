"""The Autobahn internals parsec.web.websocket relies on to skip per-message work.

`ParsecServerProtocol.dataReceived` and `onMessageEnd` replace Autobahn's own with what remains
of them once its debug formatting and its "message" observer event are left out; `sendData` (a
plain write) and `connectionLost` (a clean close) do the same, and a plain upgrade request is
opened without Autobahn parsing it again (`ParsecWebSocketFactory.upgrade`, `open_plain`). These tests
fail when Autobahn changes what those methods do or the attributes they use, so that the
shortcuts are re-checked against the new version rather than silently diverging. The same
for the unmasking, which the server does itself (`applyMask=False`).
"""

from __future__ import annotations

import inspect
from collections import deque

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketAdapterProtocol, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats, WebSocketProtocol

from parsec.web.websocket import ParsecServerProtocol, ParsecWebSocketFactory


def _body(function: object) -> str:
    """The statements of a function, without its docstring and comments."""
    source = inspect.getsource(function)  # type: ignore[arg-type]
    lines = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lines.append(stripped)
    text = "\n".join(lines)
    if '"""' in text:
        head, _, rest = text.partition('"""')
        _, _, tail = rest.partition('"""')
        text = head + tail
    return text


def test_data_received_only_logs_then_hands_over() -> None:
    body = _body(WebSocketAdapterProtocol.dataReceived)
    calls = [line for line in body.splitlines() if line.startswith("self.") and "(" in line]
    assert calls == ["self.log.debug(", "self._dataReceived(data)"], body


def test_message_end_joins_calls_on_message_and_fires_the_observer_event() -> None:
    body = _body(WebSocketProtocol.onMessageEnd)
    assert "if not self.failedByMe:" in body
    assert 'payload = b"".join(self.message_data)' in body
    assert "self._onMessage(payload, self.message_is_binary)" in body
    assert 'self.fire("message"' in body
    assert "self.message_data = None" in body
    # What the Twisted adapter's _onMessage does: call onMessage.
    assert _body(WebSocketAdapterProtocol._onMessage).splitlines()[-1] == "self.onMessage(payload, isBinary)"


def test_the_shortcuts_are_in_use() -> None:
    assert ParsecServerProtocol.dataReceived is not WebSocketServerProtocol.dataReceived
    assert ParsecServerProtocol.onMessageEnd is not WebSocketServerProtocol.onMessageEnd
    assert ParsecServerProtocol.sendData is not WebSocketServerProtocol.sendData
    assert ParsecServerProtocol.connectionLost is not WebSocketServerProtocol.connectionLost
    # message_is_binary and message_data are set when a message begins.
    begin = _body(WebSocketProtocol.onMessageBegin)
    assert "self.message_is_binary = isBinary" in begin
    assert "self.message_data" in begin


def test_connection_made_copies_only_the_listed_options() -> None:
    body = _body(WebSocketProtocol._connectionMade)
    assert "for configAttr in self.CONFIG_ATTRS:" in body
    assert "if not hasattr(self, configAttr):" in body
    assert "setattr(self, configAttr, getattr(self.factory, configAttr))" in body


def test_the_factory_protocol_holds_the_options() -> None:
    factory = ParsecWebSocketFactory(app=None)  # type: ignore[arg-type]  # never connected
    protocol_class = factory.protocol
    assert issubclass(protocol_class, ParsecServerProtocol)
    assert protocol_class.CONFIG_ATTRS == ()
    for name in WebSocketServerProtocol.CONFIG_ATTRS:
        assert getattr(protocol_class(), name) == getattr(factory, name), name
    # A function option stays a plain function, as it is on the factory.
    assert protocol_class().perMessageCompressionAccept([]) is None


def test_send_queue_is_only_used_by_chopped_or_synchronous_sends() -> None:
    # `onOpen` swaps Autobahn's empty send queue for an empty tuple (624 bytes less per idle
    # connection); only `sendData` appends to it, and only for a chopped or synchronous send,
    # where our `sendData` brings a deque back. Elsewhere Autobahn only reads its length.
    source = inspect.getsource(WebSocketProtocol)
    appends = [line.strip() for line in source.splitlines() if "self.send_queue.append" in line]
    assert appends == ["self.send_queue.append((data[i:j], True))", "self.send_queue.append((data, sync))"]
    send_data = _body(WebSocketProtocol.sendData)
    assert "if chopsize and chopsize > 0:" in send_data
    assert "if sync or len(self.send_queue) > 0:" in send_data
    assert "e = self.send_queue.popleft()" in _body(WebSocketProtocol._send)
    assert "if len(self.send_queue) > 0:" in _body(WebSocketProtocol._send)


def test_a_synchronous_send_gets_a_real_queue_back() -> None:
    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            written.append(data)

    factory = ParsecWebSocketFactory(app=None)  # type: ignore[arg-type]  # never connected
    protocol = factory.protocol()
    protocol.state = protocol.STATE_OPEN
    protocol.transport = Transport()
    protocol.trafficStats = TrafficStats()
    protocol.send_queue = ()
    protocol.sendData(b"plain")
    assert written == [b"plain"] and protocol.send_queue == ()
    protocol._trigger = lambda: None  # Autobahn's writer of the queue, which uses the reactor
    protocol.sendData(b"synchronous", sync=True)
    assert protocol.send_queue == deque([(b"synchronous", True)])


def test_frames_are_left_masked_with_their_key_when_apply_mask_is_off() -> None:
    # `applyMask=False` (ParsecWebSocketFactory): Autobahn hands over the frames' pieces as
    # read, the key in the frame header, and we unmask them (`processControlFrame` for control frames,
    # `onMessageEnd` for messages).
    body = _body(WebSocketProtocol.processData)
    assert "if frame_masked and frame_payload_len > 0 and self.applyMask:" in body
    assert "self.current_frame_masker = XorMaskerNull()" in body
    assert "frame_mask = self.data[i : i + 4]" in body
    assert "payload = self.current_frame_masker.process(data)" in body
    assert "self.control_frame_data.append(payload)" in _body(WebSocketProtocol.onFrameData)
    # The first statement of processControlFrame reads the pieces, which ours has unmasked.
    control = [line for line in _body(WebSocketProtocol.processControlFrame).splitlines() if line]
    assert control[1] == 'payload = b"".join(self.control_frame_data)'
    assert ParsecWebSocketFactory(app=None).applyMask is False  # type: ignore[arg-type]  # never connected


def test_the_opening_handshake_records_what_open_plain_records() -> None:
    # `ParsecWebSocketFactory.upgrade` and `ParsecServerProtocol.open_plain` stand for Autobahn's
    # WebSocketResource.render and processHandshake on a plain request: they record the same
    # fields, then call succeedHandshake as processHandshake's Deferred does.
    body = _body(WebSocketServerProtocol.processHandshake)
    for line in [
        "self.http_request_uri = rl[1].strip()",
        "self.http_request_path = path",
        "self.http_request_params = parse.parse_qs(query)",
        "self.http_request_host = h",
        "self.websocket_version = version",
        "self.websocket_protocols = []",
        'self.websocket_origin = ""',
        "self.websocket_extensions = []",
        "self._wskey = key",
        "f = txaio.as_future(self.onConnect, request)",
        "txaio.add_callbacks(f, self.succeedHandshake, forward_error)",
    ]:
        assert line in body, line
    succeed = _body(WebSocketServerProtocol.succeedHandshake)
    assert "key = self._wskey" in succeed
    assert "self._onOpen()" in succeed
    render = _body(WebSocketResource.render)
    assert "transport, request.channel.transport = request.channel.transport, None" in render
    assert "transport.wrappedProtocol = protocol" in render
    assert "protocol.makeConnection(transport)" in render
    assert "transport.resumeProducing()" in render
    assert "protocol.dataReceived(data)" in render


def test_a_clean_close_only_logs_in_the_twisted_and_server_layers() -> None:
    # `ParsecServerProtocol.connectionLost` skips both layers on a ConnectionDone.
    server = [line for line in _body(WebSocketServerProtocol._connectionLost).splitlines() if line.startswith(("self.", "WebSocket"))]
    assert server == ["self.log.debug(", "WebSocketProtocol._connectionLost(self, reason)", "self.factory.countConnections -= 1"]
    adapter = _body(WebSocketAdapterProtocol.connectionLost)
    clean = adapter.split("if isinstance(reason.value, ConnectionDone):")[1].split("elif")[0]
    assert [line for line in clean.splitlines() if line.startswith("self.")] == ["self.log.debug("]
    calls = [line for line in adapter.splitlines() if line.startswith("self.") and "log" not in line]
    assert calls == ["self._connectionLost(reason)"], adapter


def test_a_plain_write_is_a_transport_write_and_two_counters() -> None:
    # `ParsecServerProtocol.sendData` writes itself when nothing is queued or chopped.
    body = _body(WebSocketProtocol.sendData)
    plain = body.split("if sync or len(self.send_queue) > 0:")[1].split("else:", 1)[1]
    statements = [line for line in plain.splitlines() if line and not line.startswith(("func=", "peer=", "data_len=", ")", '"'))]
    assert statements == [
        "self.transport.write(data)",
        "self.log.debug(",
        "if self.state == WebSocketProtocol.STATE_OPEN:",
        "self.trafficStats.outgoingOctetsWireLevel += len(data)",
        "elif (",
        "self.state == WebSocketProtocol.STATE_CONNECTING",
        "or self.state == WebSocketProtocol.STATE_PROXY_CONNECTING",
        "self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)",
        "if self.logOctets:",
        "self.logTxOctets(data, False)",
    ], plain


def test_connection_made_of_the_twisted_and_server_layers_is_what_ours_does() -> None:
    # `ParsecServerProtocol.connectionMade` does the same minus the debug lines.
    adapter = [
        line
        for line in _body(WebSocketAdapterProtocol.connectionMade).splitlines()
        if line.startswith(("self.", "TransportDetails", "try", "except", "pass"))
    ]
    assert adapter == [
        "self._transport_details = create_transport_details(",
        "self.transport, self.is_server",
        "self._transport_details.channel_framing = (",
        "TransportDetails.CHANNEL_FRAMING_WEBSOCKET",
        "self.peer = self._transport_details.peer",
        "try:",
        "self.transport.setTcpNoDelay(self.tcpNoDelay)",
        "except:  # don't touch this! does not work: AttributeError, OSError",
        "pass",
        "self._connectionMade()",
        "self.log.debug(",
    ], adapter
    server = [line for line in _body(WebSocketServerProtocol._connectionMade).splitlines() if line.startswith(("self.", "WebSocket"))]
    assert server == ["self.log.debug(", "WebSocketProtocol._connectionMade(self)", "self.factory.countConnections += 1"]
    assert ParsecServerProtocol.connectionMade is not WebSocketServerProtocol.connectionMade
