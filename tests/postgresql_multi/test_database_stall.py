"""The database stalls, the server does not (README.rst, Limits; issue: a locked table froze
every request and nothing recovered).

A connection of the test holds an ACCESS EXCLUSIVE lock on `organization`, which every
handshake and every anonymous HTTP request reads. Meanwhile, with small limits (a lock or
statement timeout, a pool-acquire timeout, a bound on the pool's waiters):

* new handshakes get an answer: a close 1011 with its fixed reason;
* an open connection's `realm_status` (other tables) gets an answer: its reply or that close;
* anonymous HTTP requests get 503;
* once the lock is released, new connections and requests are served again by themselves;
* no traceback, nothing at CRITICAL.

No duration is measured: the waits are bounded only to turn a hang into a failure.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer

from tests import httpclient
from tests.orgs import bootstrap_organization, now
from tests.postgresql_multi.conftest import connect
from tests.wsclient import ClosedError, WsClient

ok = pytest_twisted.ensureDeferred

LIMITS = ("--db-max-connections", "2", "--db-acquire-timeout", "0.5", "--db-max-waiters", "3")
STALLS = {
    # PostgreSQL's lock_timeout ends the wait on the lock...
    "lock_timeout": ("--db-lock-timeout", "0.5", "--db-statement-timeout", "0"),
    # ... or, without one, statement_timeout does.
    "statement_timeout": ("--db-lock-timeout", "0", "--db-statement-timeout", "0.5"),
}


def assert_clean_output(server: Any) -> None:
    output = server.output()
    assert "Traceback" not in output, output
    assert "Unhandled" not in output, output
    assert "CRITICAL" not in output and "[critical]" not in output.lower(), output


async def handshake_outcome(org: Any, server: Any, device_id: str) -> tuple[str, Any]:
    """("ok", client) or ("closed", (code, reason)): what a new connection gets."""
    device = org.devices[device_id]
    client = await WsClient.connect(server.port)
    try:
        result = await client.handshake_authenticated(
            org.organization_id, device.device_id, device.signing_key, org.root_verify_key
        )
    except ClosedError:
        code, _ = await client.wait_closed()
        return "closed", (code, client.proto.close_reason)
    assert result == {"handshake": "result", "result": "ok"}, result
    return "ok", client


async def command_outcome(client: WsClient, cmd: str, **fields: Any) -> tuple[str, Any]:
    try:
        return "reply", await client.cmd(cmd, **fields)
    except ClosedError:
        code, _ = await client.wait_closed()
        return "closed", (code, client.proto.close_reason)


@pytest.mark.parametrize("stall", sorted(STALLS))
@ok
async def test_locked_table_gets_answers_then_recovers(servers, database, stall):
    server = await servers.start(database, *LIMITS, *STALLS[stall])
    org = await bootstrap_organization(server)
    alice = await connect(org, server, "alice@dev1")
    realm_id = uuid4()
    cert = org.devices["alice@dev1"].realm_role_certificate(
        realm_id=realm_id, user_id="alice", role="OWNER", timestamp=now()
    )
    assert await alice.cmd("realm_create", role_certificate=cert) == {"status": "ok"}

    locker = psycopg2.connect(database)
    try:
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE organization IN ACCESS EXCLUSIVE MODE")

        # More handshakes than connections and waiters: some wait on the lock, some for a
        # connection, some are refused at once; each gets its answer.
        handshakes = [
            defer.ensureDeferred(handshake_outcome(org, server, "alice@dev1")) for _ in range(6)
        ]
        status = defer.ensureDeferred(command_outcome(alice, "realm_status", realm_id=realm_id))
        http = [
            defer.ensureDeferred(
                httpclient.anonymous(server.port, org.organization_id, {"cmd": "pki_enrollment_info", "enrollment_id": uuid4()})
            )
            for _ in range(2)
        ]
        for outcome, detail in [await d for d in handshakes]:
            assert (outcome, detail) == ("closed", (1011, "Service temporarily unavailable"))
        outcome, detail = await status
        if outcome == "reply":
            assert detail["status"] == "ok", detail
        else:
            assert detail == (1011, "Service temporarily unavailable")
        for d in http:
            rep = await d
            assert rep.status == 503, rep
            assert b"Traceback" not in rep.body
        assert server.alive()
    finally:
        locker.rollback()
        locker.close()

    # Service resumes by itself.
    outcome, again = await handshake_outcome(org, server, "alice@dev1")
    assert outcome == "ok", again
    assert await again.cmd("realm_status", realm_id=realm_id) == {
        "status": "ok",
        "encryption_revision": 1,
        "in_maintenance": False,
        "maintenance_started_by": None,
        "maintenance_started_on": None,
        "maintenance_type": None,
    }
    rep = await httpclient.anonymous(
        server.port, org.organization_id, {"cmd": "pki_enrollment_info", "enrollment_id": uuid4()}
    )
    assert rep.status == 200 and rep.msgpack() == {"status": "not_found", "reason": ""}, rep
    await again.close()
    if not alice.proto.closed.called:
        await alice.close()
    assert_clean_output(server)
