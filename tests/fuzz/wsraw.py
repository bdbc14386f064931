"""A raw websocket client: the upgrade request and every frame written by hand, so tests can
send what no websocket library would (unmasked frames, reserved bits and opcodes, bad
lengths, broken fragmentation, bad close frames) and read the server's frames as they are."""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import attrs
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

TIMEOUT = 10.0

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame; `length` overrides the declared payload length (lying headers)."""
    declared = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if mask else 0
    if declared < 126:
        head += bytes([mask_bit | declared])
    elif declared < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack(">H", declared)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", declared)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


@attrs.frozen
class Frame:
    fin: bool
    opcode: int
    payload: bytes


class _RawProtocol(protocol.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.upgraded = False
        self.status_line = b""
        self.frames: list[Frame] = []
        self.changed: list[defer.Deferred[None]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status_line = head.split(b"\r\n", 1)[0]
            self.upgraded = True
            self.buffer = rest
        while True:
            parsed = _parse(self.buffer)
            if parsed is None:
                break
            item, self.buffer = parsed
            self.frames.append(item)
        self._wake()

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)
        self._wake()

    def _wake(self) -> None:
        waiters, self.changed = self.changed, []
        for waiter in waiters:
            if not waiter.called:  # a timed out waiter is already called
                waiter.callback(None)


def _parse(data: bytes) -> tuple[Frame, bytes] | None:
    if len(data) < 2:
        return None
    fin, opcode = bool(data[0] & 0x80), data[0] & 0xF
    length, offset = data[1] & 0x7F, 2
    if length == 126:
        if len(data) < 4:
            return None
        length, offset = struct.unpack(">H", data[2:4])[0], 4
    elif length == 127:
        if len(data) < 10:
            return None
        length, offset = struct.unpack(">Q", data[2:10])[0], 10
    if data[1] & 0x80:  # servers never mask; tolerate it anyway
        offset += 4
    if len(data) < offset + length:
        return None
    return Frame(fin, opcode, data[offset : offset + length]), data[offset + length :]


class RawWs:
    def __init__(self, proto: _RawProtocol) -> None:
        self.proto = proto

    @classmethod
    async def connect(cls, port: int) -> RawWs:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
        proto = await endpoint.connect(protocol.Factory.forProtocol(_RawProtocol))
        key = base64.b64encode(os.urandom(16))
        proto.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self = cls(proto)
        await self._until(lambda: proto.upgraded)
        assert proto.status_line.startswith(b"HTTP/1.1 101"), proto.status_line
        return self

    @property
    def closed(self) -> bool:
        return self.proto.lost.called

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.proto.transport.write(data)

    async def _until(self, ready: Any, timeout: float = TIMEOUT) -> bool:
        """Wait until `ready()` (True) or the connection is lost / the timeout expires (False)."""
        deadline = reactor.seconds() + timeout
        while not ready():
            if self.closed or reactor.seconds() >= deadline:
                return bool(ready())
            waiter: defer.Deferred[None] = defer.Deferred()
            self.proto.changed.append(waiter)
            waiter.addTimeout(max(0.01, deadline - reactor.seconds()), reactor)
            try:
                await waiter
            except defer.TimeoutError:
                pass
        return True

    async def next_frame(self) -> Frame | None:
        """The next frame from the server, or None once the connection is lost."""
        await self._until(lambda: bool(self.proto.frames))
        return self.proto.frames.pop(0) if self.proto.frames else None

    async def wait_lost(self, timeout: float = TIMEOUT) -> bool:
        return await self._until(lambda: self.closed, timeout)

    def abort(self) -> None:
        if not self.closed:
            self.proto.transport.abortConnection()
