"""S3/Swift stores against servers that hang or refuse connections (no object store needed)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol

from parsec.blockstore.base import BlockStoreError
from parsec.blockstore.config import S3BlockStoreConfig, SwiftBlockStoreConfig
from parsec.blockstore.s3 import S3BlockStore
from parsec.blockstore.swift import SwiftBlockStore

SHORT_TIMEOUT = 0.5


def s3_store(endpoint: str, timeout: float = SHORT_TIMEOUT) -> S3BlockStore:
    config = S3BlockStoreConfig(
        endpoint_url=endpoint, region="us-east-1", bucket="b", key="k", secret="TOPSECRET"
    )
    return S3BlockStore(config, timeout=timeout)


def swift_store(endpoint: str, timeout: float = SHORT_TIMEOUT) -> SwiftBlockStore:
    config = SwiftBlockStoreConfig(
        auth_url=f"{endpoint}/auth/v1.0", tenant="t", container="c", user="u", password="TOPSECRET"
    )
    return SwiftBlockStore(config, timeout=timeout)


@pytest.mark.parametrize("make_store", [s3_store, swift_store], ids=["s3", "swift"])
@pytest_twisted.ensureDeferred
async def test_hung_server_gives_a_timeout_error(
    hung_server: str, make_store: Any, captured_logs: list[dict[str, Any]]
) -> None:
    store = make_store(hung_server)
    with pytest.raises(BlockStoreError) as excinfo:
        await store.start()
    message = str(excinfo.value)
    assert "start-up check" in message and f"no answer within {SHORT_TIMEOUT:g} s" in message
    assert hung_server in message and "\n" not in message

    block_id = uuid.uuid4()
    with pytest.raises(BlockStoreError, match="read: no answer within"):
        await store.read("org", block_id)
    with pytest.raises(BlockStoreError, match="create: no answer within"):
        await store.create("org", block_id, b"data")
    await store.stop()

    events = [e for e in captured_logs if "Block" in e.get("log_format", "")]
    assert [e["log_format"].split(" in ")[0] for e in events] == ["Block read error", "Block create error"]
    assert all(e["block_id"] == str(block_id) and e["organization_id"] == "org" for e in events)
    assert "TOPSECRET" not in repr(captured_logs)


@pytest.mark.parametrize("make_store", [s3_store, swift_store], ids=["s3", "swift"])
@pytest_twisted.ensureDeferred
async def test_unreachable_store(closed_port_url: str, make_store: Any) -> None:
    store = make_store(closed_port_url, timeout=10)
    with pytest.raises(BlockStoreError) as excinfo:
        await store.start()
    message = str(excinfo.value)
    assert "ConnectionRefusedError" in message and closed_port_url in message and "\n" not in message
    with pytest.raises(BlockStoreError, match="ConnectionRefusedError"):
        await store.read("org", uuid.uuid4())
    await store.stop()


def test_secret_not_in_repr() -> None:
    for store in (s3_store("http://127.0.0.1:1"), swift_store("http://127.0.0.1:1")):
        assert "TOPSECRET" not in repr(store) and "TOPSECRET" not in store.description


class _DropFirstConnections(protocol.Protocol):
    """Closes the first `factory.drops` connections without answering; answers 200 on the others."""

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        if self.factory.connections <= self.factory.drops:  # type: ignore[attr-defined]
            self.transport.loseConnection()
        elif not self.answered and b"\r\n\r\n" in data:
            self.answered = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.loseConnection()


@pytest.mark.parametrize("drops, succeeds", [(1, True), (2, False)])
@pytest_twisted.ensureDeferred
async def test_connection_closed_without_answer_is_retried_once(drops: int, succeeds: bool) -> None:
    # An idle keep-alive connection closed by the server as it is reused looks like this.
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(_DropFirstConnections)
    factory.connections = 0  # type: ignore[attr-defined]
    factory.drops = drops  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    store = s3_store(f"http://127.0.0.1:{port.getHost().port}", timeout=10)
    try:
        if succeeds:
            await store.create("org", uuid.uuid4(), b"data")
        else:
            with pytest.raises(BlockStoreError, match="PUT failed: ResponseNeverReceived: ConnectionDone"):
                await store.create("org", uuid.uuid4(), b"data")
        assert factory.connections == 2  # type: ignore[attr-defined]
    finally:
        await store.stop()
        await port.stopListening()
