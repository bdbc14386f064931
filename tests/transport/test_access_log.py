"""The access log (parsec/web/access.py): one INFO event per connection, when it closes.

The line formats themselves (CONSOLE and JSON, through a real twistd and curl, behind nginx)
are checked in tests/ops/test_access_log.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import globalLogPublisher

from parsec.config import BackendAddr, BackendConfig
from parsec.web.access import PATH_CHARS, printable
from tests import httpclient
from tests.orgs import bootstrap_organization
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred
DEADLINE = 10.0


class AccessLog:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "parsec.access":
            self.events.append(event)

    async def next(self, **match: Any) -> dict[str, Any]:
        """The first line (not taken yet) whose fields match, once the connection is closed."""
        deadline = reactor.seconds() + DEADLINE
        while True:
            for event in self.events:
                if all(event.get(name) == value for name, value in match.items()):
                    self.events.remove(event)
                    return event
            assert reactor.seconds() < deadline, f"no access line {match} in {self.events}"
            await task.deferLater(reactor, 0.01, lambda: None)


@pytest.fixture
def access_log() -> Iterator[AccessLog]:
    log = AccessLog()
    globalLogPublisher.addObserver(log)
    yield log
    globalLogPublisher.removeObserver(log)


@ok
async def test_http_request_line(server, access_log) -> None:
    request = b"GET /health?probe=1 HTTP/1.1\r\nHost: lb\r\n\r\n"
    answer = await httpclient.raw_request(server.port, request)
    assert answer.startswith(b"HTTP/1.1 200 ")
    event = await access_log.next(path="/health")  # the query string is never logged
    assert event["log_level"].name == "info"
    assert (event["client"], event["method"], event["status"]) == ("127.0.0.1", "GET", 200)
    assert (event["bytes_in"], event["bytes_out"]) == (len(request), len(answer))
    assert 0 <= event["duration"] < DEADLINE
    assert "kind" not in event


@ok
async def test_refusals_of_the_guard_are_logged(server, access_log) -> None:
    answer = await httpclient.raw_request(server.port, b"\x16\x03\x01 not http\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    event = await access_log.next(status=400)
    assert (event["method"], event["path"], event["bytes_out"]) == ("-", "-", len(answer))
    answer = await httpclient.raw_request(server.port, b"GET /x HTTP/1.1\r\nHost: " + b"h" * 9000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    event = await access_log.next(status=431)
    assert (event["path"], event["bytes_in"] > 9000) == ("-", True)


def test_wire_bytes_are_printable_and_short() -> None:
    assert printable(b"/caf\xc3\xa9\x1b[31m") == "/caf\\xc3\\xa9\\x1b[31m"
    assert printable(b"/" + b"a" * 500) == "/" + "a" * (PATH_CHARS - 1)
    assert printable(b"\n" * 500) == "\\n" * (PATH_CHARS // 2)


@ok
async def test_websocket_line(server, access_log) -> None:
    org = await bootstrap_organization(server)
    await access_log.next(method="POST")  # the organization creation
    await access_log.next(method="POST")  # its bootstrap
    client = await org.connect("alice@dev1")
    assert await client.cmd("ping", ping="hello") == {"status": "ok", "pong": "hello"}
    await client.close()
    event = await access_log.next(path="/ws")
    assert event["status"] == 101
    assert (event["kind"], event["handshake"]) == ("authenticated", "ok")
    assert (event["organization_id"], event["device_id"]) == ("CoolOrg", "alice@dev1")
    assert (event["close_code"], event["closed_by"]) == (1000, "client")
    assert event["bytes_in"] > 0 and event["bytes_out"] > 0

    # Closed by the server (revocation); a refused handshake.
    await org.new_user("alice@dev1", "bob@dev1")
    await access_log.next(device_id="alice@dev1")
    bob = await org.connect("bob@dev1")
    alice = await org.connect("alice@dev1")
    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=datetime.now(tz=UTC))
    assert await alice.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    await bob.wait_closed()
    event = await access_log.next(device_id="bob@dev1")
    assert (event["close_code"], event["closed_by"]) == (1000, "server")
    again = await WsClient.connect(server.port)
    bob_local = org.devices["bob@dev1"]
    result = await again.handshake_authenticated("CoolOrg", "bob@dev1", bob_local.signing_key, org.root_verify_key)
    assert result["result"] == "revoked_device"
    await again.wait_closed()
    event = await access_log.next(handshake="revoked_device")
    assert (event["kind"], event["device_id"], event["close_code"], event["closed_by"]) == ("-", "-", "-", "server")
    await alice.close()


@ok
async def test_client_behind_a_trusted_proxy(server_factory, access_log) -> None:
    base = BackendConfig(backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False))
    server = await server_factory(attrs.evolve(base, trusted_proxies=("127.0.0.0/8",)))
    headers = {"X-Forwarded-For": "198.51.100.20, 203.0.113.7, 127.0.0.2"}
    assert (await httpclient.request(server.port, "GET", "/health", headers=headers)).status == 200
    assert (await access_log.next(path="/health"))["client"] == "203.0.113.7"
    assert (await httpclient.request(server.port, "GET", "/nowhere", headers=headers)).status == 404
    assert (await access_log.next(path="/nowhere"))["client"] == "203.0.113.7"


@ok
async def test_forwarded_for_ignored_without_trusted_proxy(server, access_log) -> None:
    headers = {"X-Forwarded-For": "203.0.113.7"}
    assert (await httpclient.request(server.port, "GET", "/health", headers=headers)).status == 200
    assert (await access_log.next(path="/health"))["client"] == "127.0.0.1"
