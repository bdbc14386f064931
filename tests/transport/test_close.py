"""Websockets close cleanly: an orderly TCP close (FIN), never a reset, in every normal case.

A reset is what a reverse proxy logs as an error (nginx: `recv() failed (104: Connection reset
by peer) while proxying upgraded connection`, see tests/ops/test_nginx.py). Autobahn, as a
server, resets the connection after a Close it started, even when the peer answered, and
when the peer does not answer in time; Parsec 2.x clients never read their pooled
connections, so they never answer. The server half-closes after its Close and closes in
order (parsec/web/websocket.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error
from twisted.logger import LogLevel, globalLogPublisher

from parsec.config import ListenConfig
from tests.orgs import bootstrap_organization
from tests.tlsutil import client_options, make_self_signed
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """Warnings (and worse) logged during the test."""
    events: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            events.append(str(event.get("log_format")))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def ended_with_fin(client: WsClient) -> bool:
    reason = client.proto.lost_reason
    assert reason is not None, "the TCP connection is still open"
    return bool(reason.check(error.ConnectionDone)) and not reason.check(error.ConnectionLost)


@ok
async def test_shutdown_close_answered_ends_with_fin(server_factory, warnings) -> None:
    server = await server_factory()
    org = await bootstrap_organization(server)
    listening = await org.connect("alice@dev1")
    assert await listening.cmd("events_subscribe") == {"status": "ok"}
    listening.send({"cmd": "events_listen", "wait": True})
    await server.service.stopService()
    assert await listening.wait_closed() == (1001, True)
    assert ended_with_fin(listening)
    assert warnings == []


@ok
async def test_shutdown_close_unanswered_ends_with_fin(server_factory, warnings) -> None:
    """A connection its client does not read (a pooled one): Close, FIN, orderly close."""
    server = await server_factory()
    org = await bootstrap_organization(server)
    pooled = await org.connect("alice@dev1")
    assert await pooled.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}
    pooled.proto.transport.pauseProducing()  # the client stops reading this connection
    await server.service.stopService()
    assert server.service.ws_factory.connections == set()
    pooled.proto.transport.resumeProducing()  # it reads, much later: Close(1001), then EOF
    code, _ = await pooled.wait_closed()
    assert code == 1001
    assert ended_with_fin(pooled)
    assert warnings == []


@ok
async def test_server_close_on_revocation_ends_with_fin(server, warnings) -> None:
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    alice = org.devices["alice@dev1"]
    bob = await org.connect("bob@dev1")
    admin = await org.connect(alice)
    cert = alice.revoked_user_certificate(user_id="bob", timestamp=datetime.now(tz=UTC))
    assert await admin.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    assert await bob.wait_closed() == (1000, True)
    assert ended_with_fin(bob)
    await admin.close()
    assert ended_with_fin(admin)
    assert warnings == []


@ok
async def test_shutdown_over_our_tls_unanswered_ends_with_fin(server_factory, tmp_path, warnings) -> None:
    """Over the server's own TLS (no half-close there; closing waits for the peer's close_notify)."""
    key, cert = make_self_signed(tmp_path)
    listen = ListenConfig(host="127.0.0.1", port=0, ssl_keyfile=str(key), ssl_certfile=str(cert))
    server = await server_factory(listen=listen)
    pooled = await WsClient.connect(server.port, host="127.0.0.1", tls_options=client_options(cert))
    assert (await pooled.challenge())["handshake"] == "challenge"
    pooled.proto.transport.pauseProducing()
    await server.service.stopService()
    assert server.service.ws_factory.connections == set()
    pooled.proto.transport.resumeProducing()
    code, _ = await pooled.wait_closed()
    assert code == 1001
    assert ended_with_fin(pooled)
    assert warnings == []
