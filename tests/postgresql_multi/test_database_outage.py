"""The database goes away while the server runs (docs/protocol/server-config.md §4, docs/protocol/events.md §6).

* Restart of the database: the LISTEN connection is lost, so the server closes its websockets
  (events may have been missed) and answers 503 while it cannot listen; requests fail cleanly
  (no crash, no traceback sent or logged); once the database is back the server serves again
  by itself.
* Only the LISTEN backend is terminated: the clients are dropped, a new LISTEN connection
  (new backend) is opened and the server serves again; with no retry allowed
  (`--maximum-database-connection-attempts 0`) the server exits with status 1 and one line.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest_twisted

from tests import httpclient
from tests.orgs import bootstrap_organization, now
from tests.postgresql_multi.conftest import connect, wait_until
from tests.wsclient import ClosedError, WsClient

ok = pytest_twisted.ensureDeferred

RETRY = ("--maximum-database-connection-attempts", "200", "--pause-before-retry-database-connection", "0.1")

_LISTENER = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %%'"


def assert_clean_output(server: Any) -> None:
    output = server.output()
    assert "Traceback" not in output, output
    assert "Unhandled" not in output, output


async def listener_pid(pool: Any) -> int | None:
    return await pool.fetchval(_LISTENER)  # type: ignore[no-any-return]


async def works(server: Any, org: Any) -> None:
    """A write and a read through a new connection."""
    client = await connect(org, server, "alice@dev1")
    realm_id = uuid4()
    cert = org.devices["alice@dev1"].realm_role_certificate(
        realm_id=realm_id, user_id="alice", role="OWNER", timestamp=now()
    )
    assert await client.cmd("realm_create", role_certificate=cert) == {"status": "ok"}
    rep = await client.cmd("realm_status", realm_id=realm_id)
    assert rep["status"] == "ok", rep
    await client.close()


@ok
async def test_database_restart_while_serving(servers, database, multi_cluster):
    server = await servers.start(database, *RETRY)
    org = await bootstrap_organization(server)
    client = await connect(org, server, "alice@dev1")
    assert await client.cmd("ping", ping="before") == {"status": "ok", "pong": "before"}

    multi_cluster.stop()
    # The connected client is dropped (its events could be lost)...
    code, _ = await client.wait_closed()
    assert code in (1001, 1006)
    # ... and, while the database is down, every request fails cleanly.
    for _ in range(3):
        rep = await httpclient.request(server.port, "GET", "/")
        assert rep.status == 503, rep
        rep = await httpclient.anonymous(server.port, "CoolOrg", {"cmd": "pki_enrollment_info", "enrollment_id": uuid4()})
        assert rep.status == 503, rep
        assert b"Traceback" not in rep.body
        try:
            refused = await WsClient.connect(server.port)
        except ClosedError:
            pass  # upgrade refused with 503
        else:
            await refused.close()
            raise AssertionError("websocket accepted while the database is down")
    assert server.alive()

    multi_cluster.start()
    await server.wait_serving()
    await works(server, org)
    assert server.alive()
    assert_clean_output(server)


@ok
async def test_listen_connection_terminated(servers, database, pg_pool):
    server = await servers.start(database, *RETRY)
    org = await bootstrap_organization(server)
    pool = await pg_pool(database)
    client = await connect(org, server, "alice@dev1")
    first = await listener_pid(pool)
    assert first is not None

    assert await pool.fetchval("SELECT pg_terminate_backend(%s)", (first,)) is True
    code, _ = await client.wait_closed()
    assert code in (1001, 1006)

    async def new_listener() -> bool:
        pid = await listener_pid(pool)
        return pid is not None and pid != first

    await wait_until(new_listener, "a new LISTEN connection")
    await server.wait_serving()
    await works(server, org)
    # Events flow again: a ping reaches a subscribed connection of another device.
    await org.new_device("alice@dev1", "dev2")
    listening = await connect(org, server, "alice@dev2")
    assert await listening.cmd("events_subscribe") == {"status": "ok"}
    pinger = await connect(org, server, "alice@dev1")
    assert await pinger.cmd("ping", ping="after") == {"status": "ok", "pong": "after"}
    assert await listening.cmd("events_listen", wait=True) == {"status": "ok", "event": "pinged", "ping": "after"}
    for c in (listening, pinger):
        await c.close()
    assert_clean_output(server)


@ok
async def test_listen_connection_lost_without_retry_exits(servers, database, pg_pool):
    server = await servers.start(database, "--maximum-database-connection-attempts", "0")
    pool = await pg_pool(database)
    pid = await listener_pid(pool)
    assert pid is not None
    await pool.fetchval("SELECT pg_terminate_backend(%s)", (pid,))
    assert await server.wait_exit() == 1
    # One `Error: ...` line (twistd logs what the process writes to stderr), no traceback.
    output = server.output()
    errors = [line for line in output.splitlines() if "Error: " in line]
    assert len(errors) == 1, output
    assert "Error: Database connection lost for good (LISTEN connection lost" in errors[0], output
    assert "Traceback" not in output
