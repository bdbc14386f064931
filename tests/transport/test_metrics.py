"""Prometheus metrics (parsec/metrics.py) of an in-process server, scraped over HTTP.

The server is started with a metrics endpoint (`--metrics-listen`), driven through the wire,
then `GET /metrics` is parsed with prometheus-client's own text parser. The format as served
by a real twistd is checked in tests/ops/test_metrics_twistd.py.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task
from twisted.web import resource
from twisted.web import server as web_server

from parsec import limits
from parsec.backend.block_cache import ENTRY_OVERHEAD
from parsec.config import BackendAddr, BackendConfig, ListenConfig
from parsec.metrics import NO_METRICS
from tests import httpclient
from tests.orgs import bootstrap_organization
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred

METRICS = ListenConfig(host="127.0.0.1", port=0, metrics="tcp:0:interface=127.0.0.1")


class Scrape:
    """One scrape: `value(name, **labels)` of a sample (0 when absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.append((sample.name, sample.labels, sample.value))

    def value(self, name: str, **labels: str) -> float:
        found = [
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        ]
        return sum(found)

    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}


async def scrape(server: Any) -> Scrape:
    listener = server.service.metrics_listener
    assert listener is not None and listener.port is not None
    port = listener.port.getHost().port
    answer = await httpclient.request(port, "GET", "/metrics", version="HTTP/1.0")
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(answer.body.decode())


async def settle() -> None:
    """Let the connections just closed be accounted (the server sees the close a turn later)."""
    for _ in range(5):
        await task.deferLater(reactor, 0.01, lambda: None)


@ok
async def test_metrics_of_commands_connections_and_handshakes(server_factory) -> None:
    server = await server_factory(listen=METRICS)
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    listening = await org.connect("alice@dev1")
    assert await listening.cmd("events_subscribe") == {"status": "ok"}
    listening.send({"cmd": "events_listen", "wait": True})
    for _ in range(3):
        assert (await alice.cmd("ping", ping="x"))["status"] == "ok"
    assert (await alice.cmd("no_such_command"))["status"] == "unknown_command"
    assert (await alice.cmd("vlob_read", vlob_id=uuid.uuid4()))["status"] == "bad_message"
    await alice.close()
    refused = await WsClient.connect(server.port)
    result = await refused.handshake_authenticated("NoSuchOrg", "x@y", org.devices["alice@dev1"].signing_key, org.root_verify_key)
    assert result["result"] == "bad_identity"
    await refused.wait_closed()
    await settle()

    scraped = await scrape(server)
    assert scraped.value("parsec_commands_total", command="ping", status="ok") == 3
    assert scraped.value("parsec_command_duration_seconds_count", command="ping") == 3
    assert scraped.value("parsec_command_duration_seconds_bucket", command="ping", le="+Inf") == 3
    assert scraped.value("parsec_commands_total", command="-", status="unknown_command") == 1
    assert scraped.value("parsec_commands_total", command="vlob_read", status="bad_message") == 1
    assert scraped.value("parsec_commands_total", command="events_subscribe", status="ok") == 1
    assert scraped.value("parsec_handshakes_total", result="ok") == 2
    assert scraped.value("parsec_handshakes_total", result="bad_identity") == 1
    assert scraped.value("parsec_events_received_total", event="pinged") == 3
    assert scraped.value("parsec_events_delivered_total", event="pinged") == 0  # alice's own pings
    assert scraped.value("parsec_connections_total", kind="authenticated") == 1
    assert scraped.value("parsec_connections_total", kind="websocket") == 1  # refused handshake
    assert scraped.value("parsec_connections_total", kind="http") >= 2  # creation + bootstrap
    assert scraped.value("parsec_websockets_open", kind="authenticated") == 1
    assert scraped.value("parsec_connections_open") >= 1
    assert "process_resident_memory_bytes" in scraped.names()
    await listening.close()  # its events_listen is abandoned
    await settle()
    scraped = await scrape(server)
    assert scraped.value("parsec_commands_total", command="events_listen", status="cancelled") == 1
    # The commands that wait for someone else have no latency histogram.
    assert scraped.value("parsec_command_duration_seconds_count", command="events_listen") == 0


@ok
async def test_events_delivered_and_blockstore(server_factory) -> None:
    server = await server_factory(listen=METRICS)
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    bob = await org.connect("bob@dev1")
    assert await bob.cmd("events_subscribe") == {"status": "ok"}
    alice = await org.connect("alice@dev1")
    assert (await alice.cmd("ping", ping="hello"))["status"] == "ok"
    assert (await bob.cmd("events_listen", wait=True))["event"] == "pinged"
    realm_id = uuid.uuid4()
    cert = org.devices["alice@dev1"].realm_role_certificate(
        realm_id=realm_id, user_id="alice", role="OWNER", timestamp=datetime.now(tz=UTC)
    )
    assert await alice.cmd("realm_create", role_certificate=cert) == {"status": "ok"}
    block_id = uuid.uuid4()
    block = os.urandom(1000)
    assert (await alice.cmd("block_create", block_id=block_id, realm_id=realm_id, block=block))["status"] == "ok"
    assert (await alice.cmd("block_read", block_id=block_id)) == {"status": "ok", "block": block}
    scraped = await scrape(server)
    assert scraped.value("parsec_events_delivered_total", event="pinged") == 1
    backend = "postgresql" if server.service.config.backend.db_type == "POSTGRESQL" else "memory"
    for operation in ("create", "read"):
        assert scraped.value(
            "parsec_blockstore_operations_total", backend=backend, node="", operation=operation, result="ok"
        ) == 1
        assert scraped.value(
            "parsec_blockstore_operation_duration_seconds_count", backend=backend, operation=operation
        ) == 1
    if backend == "postgresql":
        # The block cache: the first read missed and kept the block; a second read is a hit
        # and no blockstore read.
        assert scraped.value("parsec_block_cache_reads_total", result="miss") == 1
        assert scraped.value("parsec_block_cache_blocks") == 1
        assert scraped.value("parsec_block_cache_bytes") == len(block) + ENTRY_OVERHEAD
        assert (await alice.cmd("block_read", block_id=block_id)) == {"status": "ok", "block": block}
        again = await scrape(server)
        assert again.value("parsec_block_cache_reads_total", result="hit") == 1
        assert again.value(
            "parsec_blockstore_operations_total", backend=backend, node="", operation="read", result="ok"
        ) == 1
        assert again.value("parsec_block_cache_evictions_total") == 0
    else:
        assert "parsec_block_cache_reads_total" not in scraped.names()  # the memory blockstore
    if backend == "postgresql":
        assert scraped.value("parsec_db_pool_connections", state="idle") + scraped.value(
            "parsec_db_pool_connections", state="in_use"
        ) >= 1
        assert scraped.value("parsec_db_pool_waiting") == 0
        assert "parsec_db_pool_errors_total" in scraped.names()
        # The POSTGRESQL blockstore's own pool: the block's create and read used it.
        assert scraped.value("parsec_db_block_pool_connections", state="idle") + scraped.value(
            "parsec_db_block_pool_connections", state="in_use"
        ) >= 1
        assert scraped.value("parsec_db_block_pool_waiting") == 0
        assert scraped.value("parsec_db_block_pool_errors_total", error="lost") == 0
    await alice.close()
    await bob.close()


@ok
async def test_limits_hit_are_counted(server_factory) -> None:
    server = await server_factory(listen=METRICS)
    before = await scrape(server)
    client = await WsClient.connect(server.port)
    await client.challenge()
    client.send_raw(b"\x00" * (server.service.config.backend.limits.handshake_bytes + 1))
    code, _ = await client.wait_closed()
    assert code in (1009, 1006)
    answer = await httpclient.raw_request(server.port, b"GET / HTTP/1.1\r\nHost: " + b"h" * 9000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    after = await scrape(server)
    for limit in ("handshake_bytes", "http_head_bytes"):
        hits = after.value("parsec_limits_hit_total", limit=limit) - before.value("parsec_limits_hit_total", limit=limit)
        assert hits == 1, limit
    # Every limit has its series, hit or not.
    assert 'parsec_limits_hit_total{limit="msgpack_depth"}' in after.text


@ok
async def test_one_registry_per_server(server_factory) -> None:
    first = await server_factory(listen=METRICS)
    second = await server_factory(listen=METRICS)
    org = await bootstrap_organization(first)
    client = await org.connect("alice@dev1")
    assert (await client.cmd("ping", ping="x"))["status"] == "ok"
    await client.close()
    assert (await scrape(first)).value("parsec_commands_total", command="ping") == 1
    assert (await scrape(second)).value("parsec_commands_total", command="ping") == 0


@ok
async def test_metrics_off_by_default(server) -> None:
    assert server.service.metrics is NO_METRICS
    assert server.service.metrics_listener is None
    assert server.service.app.metrics is NO_METRICS



class _Hook(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.codes = [200, 500]

    def render_POST(self, request: Any) -> bytes:
        request.setResponseCode(self.codes.pop(0))
        return b"ok"


@ok
async def test_emails_and_webhooks(server_factory) -> None:
    port = reactor.listenTCP(0, web_server.Site(_Hook()), interface="127.0.0.1")
    try:
        backend = BackendConfig(
            backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False),
            organization_bootstrap_webhook=f"http://127.0.0.1:{port.getHost().port}/webhook",
        )
        server = await server_factory(backend=backend, listen=METRICS)
        org = await bootstrap_organization(server, "First")  # the webhook answers 200
        await bootstrap_organization(server, "Second")  # then 500
        alice = await org.connect("alice@dev1")
        rep = await alice.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=True)
        assert (rep["status"], rep["email_sent"]) == ("ok", "SUCCESS")  # --email-host MOCKED
        await alice.close()
    finally:
        await port.stopListening()
    scraped = await scrape(server)
    assert scraped.value("parsec_webhooks_total", result="sent") == 1
    assert scraped.value("parsec_webhooks_total", result="failed") == 1
    assert scraped.value("parsec_emails_total", result="sent") == 1


def test_every_limit_counted_is_a_limit() -> None:
    """`parsec.limits.hit(name)`: every name used in parsec/ is a row of the limits table."""
    root = Path(__file__).resolve().parents[2] / "parsec"
    used = set()
    for path in root.rglob("*.py"):
        used.update(re.findall(r"""\bhit\(\s*"(\w+)"\s*\)""", path.read_text(encoding="utf-8")))
        for first, second in re.findall(r"""\bhit\(\s*"(\w+)"\s+if\b.*?\belse\s+"(\w+)"\s*\)""", path.read_text(encoding="utf-8")):
            used.update((first, second))
    assert len(used) >= 20
    assert used - set(limits.BY_NAME) == set()
