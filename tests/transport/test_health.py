"""GET /health and GET /ready, asked with curl as a load balancer or an orchestrator would.

`/health` answers as long as the process does (no dependency touched); `/ready` is 200 only
while the server serves and its dependencies answer: 503 with the reason while starting,
once the shutdown began (here) and when PostgreSQL or the blockstore do not answer
(tests/postgresql_multi/test_ready.py, tests/blockstore/test_ready.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint

from parsec.config import ListenConfig, ServerConfig
from parsec.service import ParsecService
from tests import httpclient
from tests.tools import curl

ok = pytest_twisted.ensureDeferred


@ok
async def test_health_and_ready(server) -> None:
    url = server.url
    assert (await curl(f"{url}/health")).status == 200
    result = await curl(f"{url}/health", "--include")
    assert "content-type: text/plain;charset=utf-8" in result.body.lower()
    ready = await curl(f"{url}/ready")
    assert (ready.status, ready.body) == (200, "ready\n")
    # HEAD (HAProxy's default check) works too; other methods are refused.
    assert (await curl(f"{url}/ready", "--head")).status == 200
    assert (await curl(f"{url}/health", "-X", "POST")).status == 405
    # Unauthenticated: no token needed, and the query string does not matter.
    assert (await curl(f"{url}/health?probe=1")).status == 200


@ok
async def test_ready_says_starting_until_the_tree_has_started(server_storage) -> None:
    backend = server_storage.backend_config()
    service = ParsecService(
        ServerConfig(backend=backend, listen=ListenConfig(host="127.0.0.1", port=0)),
        reactor=reactor,
        on_fatal=lambda message: pytest.fail(message),
    )
    service.privilegedStartService()  # bound, not started
    try:
        url = f"http://127.0.0.1:{service.listeners[0].port.getHost().port}"
        assert (await curl(f"{url}/health")).status == 200
        ready = await curl(f"{url}/ready")
        assert (ready.status, ready.body) == (503, "not ready: starting\n")
        assert (await curl(f"{url}/")).status == 503
        await service.startService()
        assert (await curl(f"{url}/ready")).status == 200
        assert (await curl(f"{url}/")).status == 200
    finally:
        await service.stopService()


class _Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


async def _open_connection(port: int) -> _Collector:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    collector: _Collector = await endpoint.connect(protocol.Factory.forProtocol(_Collector))
    return collector


@ok
async def test_shutdown_drains_http_and_ready_says_shutting_down(server_factory, monkeypatch) -> None:
    server = await server_factory()
    organizations = type(server.app.storage.organization)
    create = organizations.create
    gate: defer.Deferred[None] = defer.Deferred()

    async def slow_create(self: Any, *args: Any, **kwargs: Any) -> Any:
        await gate
        return await create(self, *args, **kwargs)

    monkeypatch.setattr(organizations, "create", slow_create)
    in_flight = defer.ensureDeferred(
        httpclient.admin(server.port, "POST", "/administration/organizations", {"organization_id": "Slow"})
    )
    while len(server.service.http_requests) == 0:
        await _tick()
    early = await _open_connection(server.port)  # accepted before the stop, request sent after

    stopping = defer.ensureDeferred(server.service.stopService())
    assert (await curl(f"{server.url}/health")).status == 0  # the listener is closed
    early.transport.write(b"GET /ready HTTP/1.1\r\nHost: lb\r\n\r\n")
    answer = httpclient.parse_response(await early.done)
    assert (answer.status, answer.body) == (503, b"not ready: shutting down\n")
    assert not stopping.called  # the stop waits for the HTTP request in flight
    gate.callback(None)
    rep = await in_flight
    assert rep.status == 200, rep  # answered, not cut off
    await stopping


@ok
async def test_http_drain_is_bounded(server_factory, monkeypatch) -> None:
    server = await server_factory(shutdown_grace=0.2)
    organizations = type(server.app.storage.organization)
    create = organizations.create
    gate: defer.Deferred[None] = defer.Deferred()

    async def stuck_create(self: Any, *args: Any, **kwargs: Any) -> Any:
        await gate
        return await create(self, *args, **kwargs)

    monkeypatch.setattr(organizations, "create", stuck_create)
    in_flight = defer.ensureDeferred(
        httpclient.raw_request(
            server.port,
            b"POST /administration/organizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t\r\n"
            b'Content-Length: 27\r\n\r\n{"organization_id": "Slow"}',
        )
    )
    while len(server.service.http_requests) == 0:
        await _tick()
    await server.service.stopService()  # returns although the request is still stuck
    assert await in_flight == b""  # its connection was closed, without an answer
    assert len(server.service.http_requests) == 0
    gate.callback(None)  # the handler ends; its answer has nowhere to go


async def _tick() -> None:
    await task.deferLater(reactor, 0.01, lambda: None)
