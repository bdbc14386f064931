"""Fixtures of the blockstore tests.

* `objectstore`: a real Swift (+ S3 API) on loopback for the whole session (tests/objectstore.py,
  started and stopped by the repository's own tests/objectstore_swift.py under the session's
  tmp directory; Debian packages: swift swift-proxy swift-account swift-container swift-object
  memcached), containers "blocks" and "node0".."node3". Tests using it are marked
  `objectstore`; deselect them with `-m "not objectstore"`.
* `swift_admin`: raw Swift requests (to look at objects behind the stores' back).
* `hung_server`: a loopback TCP server that accepts and never answers.
* `captured_logs`: twisted.logger events emitted during the test.
* fake stores for the RAID fault tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, protocol
from twisted.web.client import Agent, HTTPConnectionPool

from parsec.blockstore.base import BlockStoreError
from parsec.blockstore.memory import MemoryBlockStore
from tests.objectstore import ObjectStore, shared_objectstore
from tests.support import free_port

# --- real object store --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def objectstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """The session's real object store (tests/objectstore.py; one per session, shared with
    the interop tests)."""
    with shared_objectstore(tmp_path_factory) as store:
        yield store


class SwiftAdmin:
    """Plain Swift v1 calls, independent from the code under test."""

    def __init__(self, store: ObjectStore) -> None:
        from twisted.internet import reactor

        self._store = store
        self._pool = HTTPConnectionPool(reactor)
        self._http = HTTPClient(Agent(reactor, pool=self._pool))
        self._token: str | None = None
        self._storage_url: str | None = None

    async def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self._token is None:
            response = await self._http.get(
                self._store.auth_url,
                headers={
                    "X-Auth-User": self._store.env["SWIFT_USER"],
                    "X-Auth-Key": self._store.env["SWIFT_KEY"],
                },
            )
            await response.content()
            self._token = response.headers.getRawHeaders("X-Auth-Token")[0]
            self._storage_url = response.headers.getRawHeaders("X-Storage-Url")[0]
        response = await self._http.request(
            method, f"{self._storage_url}/{path}", headers={"X-Auth-Token": self._token}, data=body
        )
        return response.code, await response.content()

    async def put_container(self, container: str) -> None:
        code, _ = await self._request("PUT", quote(container, safe=""))
        assert code in (201, 202), code

    async def delete_container(self, container: str) -> None:
        """Delete a container and everything in it."""
        code, listing = await self._request("GET", quote(container, safe=""))
        assert code in (200, 204), code
        for name in listing.decode().splitlines():
            code, _ = await self._request("DELETE", f"{quote(container, safe='')}/{quote(name, safe='/')}")
            assert code == 204, code
        code, _ = await self._request("DELETE", quote(container, safe=""))
        assert code == 204, code

    async def list(self, container: str) -> list[str]:
        code, listing = await self._request("GET", quote(container, safe=""))
        assert code in (200, 204), code
        return listing.decode().splitlines()

    async def get(self, container: str, name: str) -> bytes | None:
        code, body = await self._request("GET", f"{quote(container, safe='')}/{quote(name, safe='/')}")
        if code == 404:
            return None
        assert code == 200, code
        return body

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def swift_admin(objectstore: ObjectStore) -> Any:
    admin = SwiftAdmin(objectstore)
    yield admin
    await admin.close()


# --- misbehaving servers ------------------------------------------------------------------------


class _Silent(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connections.add(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)  # type: ignore[attr-defined]


@pytest_twisted.async_yield_fixture
async def hung_server() -> Any:
    """`http://127.0.0.1:<port>`: accepts connections, reads requests, never answers."""
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(_Silent)
    factory.connections = set()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    for connection in list(factory.connections):  # type: ignore[attr-defined]
        connection.transport.abortConnection()
    await port.stopListening()


@pytest.fixture
def closed_port_url() -> str:
    """`http://127.0.0.1:<port>` where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


# --- fake stores for fault tests ------------------------------------------------------------------


class FakeStore(MemoryBlockStore):
    """A memory store that can be told to fail or to hang (cancellably) on read or create."""

    def __init__(self, name: str = "fake") -> None:
        super().__init__()
        self.description = name
        self.fail_read = False
        self.fail_create = False
        self.hang_read = False
        self.hang_create = False
        self.fail_start = False
        self.fail_check = False
        self.stopped = 0
        self.cancelled = 0
        self.reads = 0
        self.creates = 0

    @property
    def blocks(self) -> dict[tuple[str, uuid.UUID], bytes]:
        return self._blocks

    async def _hang(self) -> None:
        def count_cancel(_: defer.Deferred[None]) -> None:
            self.cancelled += 1

        await defer.Deferred(count_cancel)

    async def start(self) -> None:
        if self.fail_start:
            raise BlockStoreError(self.description, "start refused by the test")

    async def stop(self) -> None:
        self.stopped += 1

    async def check(self) -> None:
        if self.fail_check:
            raise BlockStoreError(self.description, "check refused by the test")

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        self.reads += 1
        if self.hang_read:
            await self._hang()
        if self.fail_read:
            raise BlockStoreError(self.description, "read refused by the test")
        return await super().read(organization_id, block_id)

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        self.creates += 1
        if self.hang_create:
            await self._hang()
        if self.fail_create:
            raise BlockStoreError(self.description, "create refused by the test")
        await super().create(organization_id, block_id, block)


@pytest.fixture
def fake_stores() -> list[FakeStore]:
    return [FakeStore(f"fake{i}") for i in range(16)]
