"""The Autobahn internals parsec.web.websocket relies on to skip per-message work.

`ParsecServerProtocol.dataReceived` and `onMessageEnd` replace Autobahn's own with what remains
of them once its debug formatting and its "message" observer event are left out. These tests
fail when Autobahn changes what those methods do or the attributes they use, so that the
shortcuts are re-checked against the new version rather than silently diverging. The same
for the unmasking, which the server does itself (`applyMask=False`).
"""

from __future__ import annotations

import inspect
from collections import deque

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
