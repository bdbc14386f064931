"""A small Parsec websocket client for wire-level tests (real TCP, optionally TLS)."""

from __future__ import annotations

from collections import deque
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from nacl.signing import SigningKey
from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint

from parsec.api.codec import packb, unpackb

TIMEOUT = 10.0


class ClosedError(Exception):
    def __init__(self, code: int | None, was_clean: bool) -> None:
        super().__init__(f"closed code={code} clean={was_clean}")
        self.code = code
        self.was_clean = was_clean


class _Protocol(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.inbox: deque[Any] = deque()
        self.waiters: deque[defer.Deferred[Any]] = deque()
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[tuple[int | None, bool]] = defer.Deferred()
        self.close_reason: str | None = None  # of the peer's Close frame
        # How the TCP connection ended: ConnectionDone (FIN) or ConnectionLost (a reset).
        self.lost_reason: Any = None

    def connectionLost(self, reason: Any) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        item = ("binary" if isBinary else "text", payload)
        if self.waiters:
            self.waiters.popleft().callback(item)
        else:
            self.inbox.append(item)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Autobahn leaves its close-handshake timer pending when the server drops the connection
        # instead of answering our Close (a killed server).
        pending: Any = self.closeHandshakeTimeoutCall
        if pending is not None:
            pending.cancel()
            self.closeHandshakeTimeoutCall = None
        self.close_reason = reason
        if not self.opened.called:
            self.opened.errback(ClosedError(code, wasClean))
        while self.waiters:
            self.waiters.popleft().errback(ClosedError(code, wasClean))
        self.closed.callback((code, wasClean))


class WsClient:
    def __init__(self, proto: _Protocol) -> None:
        self.proto = proto

    @classmethod
    async def connect(cls, port: int, *, host: str = "127.0.0.1", tls_options: Any = None) -> WsClient:
        scheme = "wss" if tls_options is not None else "ws"
        factory = WebSocketClientFactory(f"{scheme}://{host}:{port}/ws")
        factory.protocol = _Protocol
        if tls_options is not None:
            endpoint = SSL4ClientEndpoint(reactor, host, port, tls_options)
        else:
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=TIMEOUT)
        proto = await endpoint.connect(factory)
        opened = proto.opened
        opened.addTimeout(TIMEOUT, reactor)
        await opened
        return cls(proto)

    async def recv_raw(self) -> tuple[str, bytes]:
        if self.proto.inbox:
            return self.proto.inbox.popleft()
        if self.proto.closed.called:
            raise ClosedError(None, False)
        d: defer.Deferred[Any] = defer.Deferred()
        self.proto.waiters.append(d)
        d.addTimeout(TIMEOUT, reactor)
        return await d

    async def recv(self) -> dict[str, Any]:
        kind, payload = await self.recv_raw()
        assert kind == "binary", payload
        return unpackb(payload)

    def send_raw(self, payload: bytes, *, binary: bool = True) -> None:
        self.proto.sendMessage(payload, isBinary=binary)

    def send(self, msg: dict[str, Any]) -> None:
        self.send_raw(packb(msg))

    async def cmd(self, cmd: str, **fields: Any) -> dict[str, Any]:
        self.send({"cmd": cmd, **fields})
        return await self.recv()

    async def wait_closed(self) -> tuple[int | None, bool]:
        closed = self.proto.closed
        if not closed.called:
            closed.addTimeout(TIMEOUT, reactor)
        return await closed

    async def close(self) -> None:
        if not self.proto.closed.called:
            self.proto.sendClose(1000)
            await self.wait_closed()

    # ---- handshakes ---------------------------------------------------------------------

    async def challenge(self) -> dict[str, Any]:
        return await self.recv()

    async def handshake_authenticated(
        self,
        organization_id: str,
        device_id: str,
        signing_key: SigningKey,
        root_verify_key: bytes,
        *,
        api_version: tuple[int, int] = (2, 7),
    ) -> dict[str, Any]:
        challenge = (await self.challenge())["challenge"]
        if api_version < (2, 5):
            answer = signing_key.sign(challenge)
        else:
            answer = signing_key.sign(packb({"type": "signed_answer", "answer": challenge}))
        self.send(
            {
                "handshake": "answer",
                "type": "AUTHENTICATED",
                "client_api_version": list(api_version),
                "organization_id": organization_id,
                "device_id": device_id,
                "rvk": root_verify_key,
                "answer": bytes(answer),
            }
        )
        return await self.recv()

    async def handshake_invited(
        self,
        organization_id: str,
        invitation_type: str,
        token: Any,
        *,
        api_version: tuple[int, int] = (2, 7),
    ) -> dict[str, Any]:
        await self.challenge()
        self.send(
            {
                "handshake": "answer",
                "type": "INVITED",
                "client_api_version": list(api_version),
                "organization_id": organization_id,
                "invitation_type": invitation_type,
                "token": token,
            }
        )
        return await self.recv()

    async def handshake_anonymous_v1(
        self, organization_id: str, rvk: bytes | None = None, *, api_version: tuple[int, int] = (1, 3)
    ) -> dict[str, Any]:
        await self.challenge()
        answer: dict[str, Any] = {
            "handshake": "answer",
            "type": "anonymous",
            "client_api_version": list(api_version),
            "organization_id": organization_id,
        }
        if rvk is not None:
            answer["rvk"] = rvk
        self.send(answer)
        return await self.recv()
