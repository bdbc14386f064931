"""What a storage call costs PostgreSQL must not grow with the data of other realms, users and
organizations. Every statement a call sends is first run under EXPLAIN ANALYZE (undone
afterwards; a prepared statement with its generic plan, the one a pool session ends up using)
and the rows its plan reads are counted. The same calls on the same kind of data, before and
after the database is filled with thousands of other organizations, users, realms, vlobs,
blocks, messages, invitations and PKI enrollments (and planner statistics are taken), must not
read more rows.

Found this way: `user_get`'s recursive trustchain query, joined by hash joins over every device
of the database (16,033 rows instead of 6), and the creation of a user, which counted every
user of its organization, limit or not (4,010 rows instead of 15).
"""

from __future__ import annotations

import json
import os
from typing import Any

import psycopg2
import pytest
import pytest_twisted

from parsec.storage.postgresql.binary import BinaryConnection, BinaryPool, PqConnection
from parsec.storage.postgresql.block import PgBlockBytes
from parsec.storage.postgresql.connection import PgConnection, PreparedStatement, render_statement
from tests.storage_contract.client_day import client_day
from tests.storage_contract.conftest import (
    World,
    make_world,
    new_organization,
    running_postgresql_backend,
)
from tests.support import CountingPool

ok = pytest_twisted.ensureDeferred
pytestmark = pytest.mark.postgresql

NOISE_USERS = 2_000  # other users of the organization (and of another one)
NOISE_REALMS = 5_000  # their realms, each with 2 vlobs of 2 versions and 2 blocks


def rows_read(plan: dict[str, Any]) -> int:
    """Rows the plan's scans returned or discarded, and rows its joins discarded, all loops."""
    loops = plan.get("Actual Loops", 1) or 0
    total = 0
    if "Relation Name" in plan and plan.get("Node Type") not in ("ModifyTable",):
        total += round(
            (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
             + plan.get("Rows Removed by Index Recheck", 0)) * loops
        )
    total += round(plan.get("Rows Removed by Join Filter", 0) * loops)
    for child in plan.get("Plans", ()):
        total += rows_read(child)
    return total


_EXPLAINABLE = ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "EXECUTE")


class Explainer:
    """Runs a round trip of a session a first time under EXPLAIN ANALYZE, undone (rolled back,
    or back to a savepoint inside a transaction): each statement of it that reads or writes
    rows is explained, the others (locks, settings) run as they are. Records (statement, rows
    read by all its statements) in `explained`; PLAN_DUMP=<file> also writes the plans there,
    one JSON document per line."""

    def __init__(self) -> None:
        self.explained: list[tuple[str, int]] = []
        self.enabled = True

    async def prepared(self, conn: Any, statement: PreparedStatement, params: Any) -> None:
        await conn._ensure_prepared(statement)
        await self.explain(conn, render_statement(statement.execute_sql, statement.bind(params) or None), statement.sql)

    async def explain(self, conn: Any, text: str, label: str) -> None:
        if not self.enabled:
            return

        async def trip(sql: str) -> list[tuple[Any, ...]]:
            query = sql.encode("utf-8")
            return conn._rows_of(await conn._exchange(lambda pgconn: pgconn.send_query(query)))  # type: ignore[no-any-return]

        nested = conn.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE
        await trip("SAVEPOINT explained" if nested else "BEGIN")
        plans = []
        try:
            # The plans a session uses: generic ones for its prepared statements.
            await trip("SET LOCAL plan_cache_mode = force_generic_plan")
            for statement in text.strip().rstrip(";").split(";"):
                if statement.strip().upper().startswith(_EXPLAINABLE):
                    document = (await trip(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"))[0][0]
                    plans.append((json.loads(document) if isinstance(document, str) else document)[0])
                elif statement.strip().upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
                    await trip(statement)
        finally:
            await trip("ROLLBACK TO SAVEPOINT explained; RELEASE SAVEPOINT explained" if nested else "ROLLBACK")
        if not plans:
            return
        rows = sum(rows_read(plan["Plan"]) for plan in plans)
        self.explained.append((label, rows))
        if os.environ.get("PLAN_DUMP"):
            with open(os.environ["PLAN_DUMP"], "a", encoding="utf-8") as dump:
                dump.write(json.dumps({"sql": label, "rows": rows, "plans": plans}) + "\n")


class ExplainingPool(CountingPool):
    """Every round trip of its sessions explained first (`Explainer`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.explainer = Explainer()

    async def acquire(self, *, nested_ok: bool = False) -> PgConnection:
        conn = await super().acquire(nested_ok=nested_ok)
        if isinstance(conn, PqConnection) and not getattr(conn, "_explaining", False):
            execute, send, explainer = conn._execute, conn._send, self.explainer

            async def explaining_execute(query: Any, params: Any, prefix: str = "") -> Any:
                if isinstance(query, PreparedStatement):
                    await explainer.prepared(conn, query, params)
                else:
                    await explainer.explain(conn, render_statement(query, params), query)
                return await execute(query, params, prefix)

            async def explaining_send(sql: str, params: Any) -> Any:
                await explainer.explain(conn, render_statement(sql, params), sql)
                return await send(sql, params)

            conn._execute = explaining_execute  # type: ignore[method-assign]
            conn._send = explaining_send  # type: ignore[method-assign]
            conn._explaining = True  # type: ignore[attr-defined]
        return conn


class ExplainingBinaryPool(BinaryPool):
    """The POSTGRESQL blockstore's sessions, every statement explained first (`Explainer`)."""

    explainer: Explainer

    async def acquire(self, *, nested_ok: bool = False) -> BinaryConnection:
        conn = await super().acquire(nested_ok=nested_ok)
        if not getattr(conn, "_explaining", False):
            run, explainer = conn._run, self.explainer

            async def explaining_run(statement: PreparedStatement, params: Any) -> Any:
                await explainer.prepared(conn, statement, params)
                return await run(statement, params)

            conn._run = explaining_run  # type: ignore[method-assign]
            conn._explaining = True  # type: ignore[attr-defined]
        return conn


async def scenario(world: World, pool: ExplainingPool, blocks: PgBlockBytes) -> dict[str, list[int]]:
    """`client_day`: (call -> rows read by each of its statements)."""
    costs: dict[str, list[int]] = {}

    async def call(name: str, coro: Any) -> Any:
        start = len(pool.explainer.explained)
        result = await coro
        costs[name] = [rows for _, rows in pool.explainer.explained[start:]]
        assert costs[name], f"{name}: no statement explained"
        return result

    await client_day(world, call, blocks)
    return costs


# Other organizations (not bootstrapped) and users (certified by alice@dev1) with a device, a
# message, an invitation and a (rejected) PKI enrollment each, and realms of
# theirs, bob reading them, each with vlobs of two versions, their changes and blocks.
_FILL = """
INSERT INTO user_ (organization_id, user_id, profile, public_key, user_certificate, redacted_user_certificate,
                   user_certifier, created_on)
SELECT %(org)s, 'n' || i, 'STANDARD', '\\x00', '\\x00', '\\x00', 'alice@dev1', now()
FROM generate_series(1, %(users)s) AS i;
INSERT INTO device (organization_id, device_id, user_id, verify_key, device_certificate, redacted_device_certificate,
                    device_certifier, created_on)
SELECT %(org)s, 'n' || i || '@dev1', 'n' || i, '\\x00', '\\x00', '\\x00', 'alice@dev1', now()
FROM generate_series(1, %(users)s) AS i;
INSERT INTO message (organization_id, recipient, message_index, sender, sent_on, body)
SELECT %(org)s, 'n' || i, 1, 'alice@dev1', now(), '\\x00' FROM generate_series(1, %(users)s) AS i;
UPDATE user_ SET message_count = 1 WHERE organization_id = %(org)s AND user_id LIKE 'n%%';
INSERT INTO invitation (organization_id, token, type, greeter_user_id, created_on)
SELECT %(org)s, gen_random_uuid(), 'DEVICE', 'n' || i, now() FROM generate_series(1, %(users)s) AS i;
INSERT INTO pki_enrollment (organization_id, enrollment_id, submitter_der_x509_certificate, submit_payload_signature,
                            submit_payload, submitted_on, state, rejected_on)
SELECT %(org)s, gen_random_uuid(), convert_to('noise' || i, 'UTF8'), '\\x00', '\\x00', now(), 'REJECTED', now()
FROM generate_series(1, %(users)s) AS i;
INSERT INTO organization (organization_id, bootstrap_token, created_on)
SELECT %(org)s || '_' || i, 'token', now() FROM generate_series(1, %(users)s) AS i;
CREATE TEMPORARY TABLE noise AS
SELECT i, gen_random_uuid() AS realm_id, 'n' || (i %% %(users)s + 1) AS owner FROM generate_series(1, %(realms)s) AS i;
INSERT INTO realm (organization_id, realm_id, checkpoint, created_on)
SELECT %(org)s, realm_id, 4, now() FROM noise;
INSERT INTO vlob_encryption_revision (organization_id, realm_id, encryption_revision, started_on, started_by)
SELECT %(org)s, realm_id, 1, now(), owner || '@dev1' FROM noise;
INSERT INTO realm_role (organization_id, realm_id, user_id, role, certificate, certified_by, certified_on)
SELECT %(org)s, realm_id, u, r, '\\x00', owner || '@dev1', now()
FROM noise, LATERAL (VALUES (owner, 'OWNER'), ('bob', 'READER')) AS m(u, r);
INSERT INTO realm_user (organization_id, realm_id, user_id, role, role_certified_on)
SELECT %(org)s, realm_id, u, r, now()
FROM noise, LATERAL (VALUES (owner, 'OWNER'), ('bob', 'READER')) AS m(u, r);
CREATE TEMPORARY TABLE noise_vlob AS
SELECT realm_id, owner, gen_random_uuid() AS vlob_id, v FROM noise, generate_series(1, 2) AS v;
INSERT INTO vlob (organization_id, vlob_id, realm_id, latest_version, latest_timestamp, created_on)
SELECT %(org)s, vlob_id, realm_id, 2, now(), now() FROM noise_vlob;
INSERT INTO vlob_atom (organization_id, vlob_id, encryption_revision, version, realm_id, blob, author, created_on)
SELECT %(org)s, vlob_id, 1, version, realm_id, '\\x00', owner || '@dev1', now()
FROM noise_vlob, generate_series(1, 2) AS version;
INSERT INTO realm_vlob_update (organization_id, realm_id, checkpoint, vlob_id, version)
SELECT %(org)s, realm_id, (v - 1) * 2 + version, vlob_id, version FROM noise_vlob, generate_series(1, 2) AS version;
INSERT INTO block (organization_id, block_id, realm_id, author, size, created_on)
SELECT %(org)s, gen_random_uuid(), realm_id, owner || '@dev1', 1, now() FROM noise_vlob;
INSERT INTO block_data (organization_id, block_id, data)
SELECT organization_id, block_id, '\\x00' FROM block WHERE organization_id = %(org)s ON CONFLICT DO NOTHING;
DROP TABLE noise_vlob;
DROP TABLE noise
"""


async def fill(pool: ExplainingPool, org: str) -> None:
    pool.explainer.enabled = False
    try:
        async with pool.connection() as conn:
            for statement in _FILL.split(";\n"):
                await conn.execute(statement, {"org": org, "users": NOISE_USERS, "realms": NOISE_REALMS})
    finally:
        pool.explainer.enabled = True


@pytest_twisted.async_yield_fixture
async def explaining_backend(fresh_pg_dsn: str) -> Any:
    async with running_postgresql_backend(ExplainingPool(fresh_pg_dsn, min_connections=1, max_connections=1)) as backend:
        yield backend


@ok
async def test_calls_read_no_more_rows_as_other_data_grows(explaining_backend):
    backend = explaining_backend
    pool = backend.pool
    bytes_pool = ExplainingBinaryPool.like(pool, max_connections=1)
    bytes_pool.explainer = pool.explainer
    await bytes_pool.start()
    blocks = PgBlockBytes(bytes_pool)
    try:
        world = await make_world(backend)
        # Warm up (every statement prepared, the generic plans built), then measure.
        await scenario(world, pool, blocks)
        before = await scenario(world, pool, blocks)

        await fill(pool, world.org)
        other = World(backend, await new_organization(backend, "Noise"))
        await other.add_user("bob@dev1")
        await fill(pool, other.org)
        async with pool.connection() as conn:
            await conn.execute("ANALYZE")
        after = await scenario(world, pool, blocks)
    finally:
        await bytes_pool.close()

    grown = {
        name: (before[name], after[name])
        for name in before
        if len(before[name]) != len(after[name]) or any(a > b for a, b in zip(after[name], before[name], strict=True))
    }
    assert not grown, grown


def test_rows_read_counts_discarded_rows() -> None:
    plan = {
        "Node Type": "Nested Loop", "Actual Rows": 1, "Actual Loops": 1, "Rows Removed by Join Filter": 9,
        "Plans": [
            {"Node Type": "Bitmap Heap Scan", "Relation Name": "realm", "Actual Rows": 10, "Actual Loops": 1},
            {"Node Type": "Index Scan", "Relation Name": "vlob", "Actual Rows": 1, "Actual Loops": 2,
             "Rows Removed by Filter": 0.5},
        ],
    }
    assert rows_read(plan) == 9 + 10 + 3

