"""GET /ready of a real `twistd parsec` when PostgreSQL goes away or stops answering (curl).

* the database stops: /ready turns 503 naming the database while /health stays 200, and
  turns 200 again by itself once the database is back;
* the database is up but does not answer the server within the probe timeout (its only pool
  connection waits behind a lock the test holds): 503 naming PostgreSQL, 200 once released.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from parsec.readiness import READY_PROBE_TIMEOUT
from tests import httpclient
from tests.tools import curl, ready_becomes

ok = pytest_twisted.ensureDeferred

RETRY = ("--maximum-database-connection-attempts", "200", "--pause-before-retry-database-connection", "0.1")


@ok
async def test_ready_follows_the_database(servers, database, multi_cluster) -> None:
    server = await servers.start(database, *RETRY)
    assert (await curl(f"{server.url}/ready")).status == 200

    multi_cluster.stop()
    result = await ready_becomes(server.url, 503)
    assert result.body == "not ready: database unavailable\n"
    assert (await curl(f"{server.url}/health")).status == 200  # the process still answers

    multi_cluster.start()
    await ready_becomes(server.url, 200)
    assert server.alive()
    assert "Traceback" not in server.output()


@ok
async def test_ready_when_postgresql_does_not_answer_in_time(servers, database, pg_pool) -> None:
    server = await servers.start(database, "--db-min-connections", "1", "--db-max-connections", "1")
    assert (await curl(f"{server.url}/ready")).status == 200
    pool = await pg_pool(database)
    async with pool.transaction() as tx:
        await tx.execute("LOCK TABLE organization IN ACCESS EXCLUSIVE MODE")
        # An administration request takes the server's only pool connection and waits for the lock.
        blocked = defer.ensureDeferred(httpclient.admin(server.port, "GET", "/administration/organizations/Org"))
        result = await ready_becomes(server.url, 503)
        assert result.body.startswith(f"not ready: PostgreSQL: no answer within {READY_PROBE_TIMEOUT:g} s"), result
        assert (await curl(f"{server.url}/health")).status == 200
    assert (await blocked).status == 404  # the lock released, the request got its answer
    await ready_becomes(server.url, 200)
