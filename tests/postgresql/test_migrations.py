"""`parsec backend migrate` (migrate_command), the start-up schema check, and the schema."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2.errors
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from parsec.backend.bus import BackendEvent
from parsec.storage.postgresql import migrations
from parsec.storage.postgresql.connection import DatabaseUnavailable, PreparedStatement
from parsec.storage.postgresql.events import PostgreSQLEventBus, notify_sql
from parsec.storage.postgresql.migrations import (
    Migration,
    SchemaError,
    check_schema_up_to_date,
    list_migrations,
    migrate_command,
)
from parsec.storage.postgresql.pool import PostgreSQLPool

TABLES = {
    "migration", "organization", "user_", "device", "invitation", "pki_enrollment", "message",
    "realm", "vlob_encryption_revision", "realm_role", "realm_user", "vlob", "vlob_atom",
    "realm_vlob_update", "block", "block_data", "block_claim",
}


async def _migrate(dsn: str, dry_run: bool = False) -> tuple[bool, list[str]]:
    lines: list[str] = []
    ok = await migrate_command(dsn, dry_run, lines.append)
    return ok, lines


async def _tables(dsn: str) -> set[str]:
    pool = PostgreSQLPool(dsn, min_connections=1, max_connections=1)
    await pool.start()
    try:
        rows = await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await pool.close()
    return {name for (name,) in rows}


def test_packaged_migrations() -> None:
    found = list_migrations()
    assert found[0].file_name == "0001_initial.sql" and found[0].id == 1 and found[0].name == "initial"
    assert [m.id for m in found] == list(range(1, len(found) + 1))


@pytest_twisted.ensureDeferred
async def test_migrate_dry_run_then_apply_then_idempotent(empty_pg_dsn: str) -> None:
    names = [m.file_name for m in list_migrations()]

    assert await _migrate(empty_pg_dsn, dry_run=True) == (True, [f"{n} (dry run)" for n in names])
    assert await _tables(empty_pg_dsn) == set()  # nothing applied

    assert await _migrate(empty_pg_dsn) == (True, [f"{n} ✔" for n in names])
    assert await _tables(empty_pg_dsn) == TABLES

    assert await _migrate(empty_pg_dsn) == (True, [f"{n} (already applied)" for n in names])
    assert await _migrate(empty_pg_dsn, dry_run=True) == (True, [f"{n} (already applied)" for n in names])

    pool = PostgreSQLPool(empty_pg_dsn, min_connections=1, max_connections=1)
    await pool.start()
    try:
        rows = await pool.fetch("SELECT id, name, applied FROM migration ORDER BY id")
        assert [(i, n) for i, n, _ in rows] == [(m.id, m.name) for m in list_migrations()]
        assert all(applied.tzinfo is not None for _, _, applied in rows)
        await check_schema_up_to_date(pool)
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_failing_migration_stops_the_run(empty_pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = list_migrations()
    bad = Migration(id=len(real) + 1, name="broken", file_name=f"{len(real) + 1:04d}_broken.sql",
                    sql="CREATE TABLE fine (x int);\nCREATE TABLE oops (x nosuchtype);")
    after = Migration(id=len(real) + 2, name="after", file_name=f"{len(real) + 2:04d}_after.sql",
                      sql="CREATE TABLE after_ (x int);")
    monkeypatch.setattr(migrations, "list_migrations", lambda: [*real, bad, after])

    ok, lines = await _migrate(empty_pg_dsn)
    assert not ok
    assert lines[: len(real)] == [f"{m.file_name} ✔" for m in real]
    assert lines[len(real)].startswith(f"{bad.file_name} ✘: ") and "nosuchtype" in lines[len(real)]
    assert len(lines) == len(real) + 1  # stopped at the first failure
    tables = await _tables(empty_pg_dsn)
    assert "fine" not in tables and "after_" not in tables  # the failed file left nothing behind

    pool = PostgreSQLPool(empty_pg_dsn, min_connections=1, max_connections=1)
    await pool.start()
    try:
        with pytest.raises(SchemaError) as info:
            await check_schema_up_to_date(pool)
        assert bad.file_name in str(info.value) and after.file_name in str(info.value)
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_check_schema_up_to_date(empty_pg_dsn: str) -> None:
    pool = PostgreSQLPool(empty_pg_dsn, min_connections=1, max_connections=1)
    await pool.start()
    try:
        with pytest.raises(SchemaError) as info:
            await check_schema_up_to_date(pool)  # empty database
        message = str(info.value)
        assert "\n" not in message and "run `parsec backend migrate`" in message
        assert "0001_initial.sql" in message

        assert await _migrate(empty_pg_dsn) == (True, [f"{m.file_name} ✔" for m in list_migrations()])
        await check_schema_up_to_date(pool)

        await pool.execute("INSERT INTO migration (id, name) VALUES (9999, 'from_the_future')")
        with pytest.raises(SchemaError, match="newer than this server.*9999_from_the_future"):
            await check_schema_up_to_date(pool)
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_foreign_schema_is_refused(empty_pg_dsn: str) -> None:
    pool = PostgreSQLPool(empty_pg_dsn, min_connections=1, max_connections=1)
    await pool.start()
    try:
        await pool.execute("CREATE TABLE migration (_id serial, name text, applied timestamptz)")
        with pytest.raises(SchemaError, match="another program"):
            await check_schema_up_to_date(pool)
    finally:
        await pool.close()
    with pytest.raises(SchemaError, match="another program"):
        await _migrate(empty_pg_dsn)


@pytest_twisted.ensureDeferred
async def test_migrate_unreachable_database() -> None:
    with pytest.raises(DatabaseUnavailable):
        await _migrate("postgresql://parsec@127.0.0.1:1/parsec")


# --- the schema supports one-statement requests ------------------------------------------------


async def _seed(pool: PostgreSQLPool, org: str, realm_id: uuid.UUID, now: datetime) -> None:
    """Organization, user alice with device alice@dev1, realm with alice OWNER (one statement)."""
    await pool.execute(
        """
        WITH o AS (
            INSERT INTO organization (organization_id, bootstrap_token, root_verify_key, created_on,
                                      bootstrapped_on)
            VALUES (%(org)s, '', '\\x00', %(now)s, %(now)s) RETURNING organization_id
        ), u AS (
            INSERT INTO user_ (organization_id, user_id, profile, human_email, human_label,
                               human_email_folded, human_label_folded, human_label_lower, public_key,
                               user_certificate, redacted_user_certificate, created_on)
            SELECT organization_id, 'alice', 'ADMIN', 'alice@example.com', 'Alice', 'alice@example.com',
                   'alice', 'alice', '\\x01', '\\x02', '\\x03', %(now)s
            FROM o RETURNING organization_id
        ), d AS (
            INSERT INTO device (organization_id, device_id, user_id, verify_key, device_certificate,
                                redacted_device_certificate, created_on)
            SELECT organization_id, 'alice@dev1', 'alice', '\\x04', '\\x05', '\\x06', %(now)s
            FROM u RETURNING organization_id
        ), r AS (
            INSERT INTO realm (organization_id, realm_id, created_on)
            SELECT organization_id, %(realm)s, %(now)s FROM d RETURNING organization_id
        ), rev AS (
            INSERT INTO vlob_encryption_revision (organization_id, realm_id, encryption_revision, started_on,
                                                  started_by)
            SELECT organization_id, %(realm)s, 1, %(now)s, 'alice@dev1' FROM r RETURNING organization_id
        ), role AS (
            INSERT INTO realm_role (organization_id, realm_id, user_id, role, certificate, certified_by,
                                    certified_on)
            SELECT organization_id, %(realm)s, 'alice', 'OWNER', '\\x07', 'alice@dev1', %(now)s FROM rev
            RETURNING organization_id
        )
        INSERT INTO realm_user (organization_id, realm_id, user_id, role, role_certified_on)
        SELECT organization_id, %(realm)s, 'alice', 'OWNER', %(now)s FROM role
        """,
        {"org": org, "realm": realm_id, "now": now},
    )


# A vlob_create as a single statement: access check, per-organization uniqueness, version 1,
# checkpoint allocation, checkpoint log, author's last write, and the event with the allocated
# checkpoint. Phase 2's real query will add the distinct failure statuses.
VLOB_CREATE = """
WITH access AS (
    SELECT r.realm_id
    FROM realm r JOIN realm_user ru USING (organization_id, realm_id)
    WHERE r.organization_id = %(org)s AND r.realm_id = %(realm)s AND ru.user_id = %(user)s
      AND r.maintenance_type IS NULL AND r.encryption_revision = %(rev)s
      AND ru.role IN ('OWNER', 'MANAGER', 'CONTRIBUTOR') AND ru.role_certified_on < %(ts)s
), new_vlob AS (
    INSERT INTO vlob (organization_id, vlob_id, realm_id, latest_version, latest_timestamp, created_on)
    SELECT %(org)s, %(vlob)s, realm_id, 1, %(ts)s, %(ts)s FROM access
    ON CONFLICT DO NOTHING
    RETURNING vlob_id, realm_id
), atom AS (
    INSERT INTO vlob_atom (organization_id, vlob_id, encryption_revision, version, realm_id, blob, author,
                           created_on)
    SELECT %(org)s, vlob_id, %(rev)s, 1, realm_id, %(blob)s, %(author)s, %(ts)s FROM new_vlob
    RETURNING vlob_id
), bump AS (
    UPDATE realm SET checkpoint = checkpoint + 1
    WHERE organization_id = %(org)s AND realm_id = (SELECT realm_id FROM new_vlob)
    RETURNING checkpoint
), log AS (
    INSERT INTO realm_vlob_update (organization_id, realm_id, checkpoint, vlob_id, version)
    SELECT %(org)s, %(realm)s, checkpoint, %(vlob)s, 1 FROM bump
    RETURNING checkpoint
), author AS (
    UPDATE realm_user SET last_vlob_update = greatest(last_vlob_update, %(ts)s)
    WHERE organization_id = %(org)s AND realm_id = (SELECT realm_id FROM new_vlob) AND user_id = %(user)s
)
SELECT log.checkpoint, {notify} FROM log
"""


@pytest_twisted.ensureDeferred
async def test_one_statement_vlob_create(pool: PostgreSQLPool, unique_org: str) -> None:
    bus = PostgreSQLEventBus(pool)
    await bus.start()
    received: list[BackendEvent] = []
    all_received: defer.Deferred[None] = defer.Deferred()

    def listener(event: BackendEvent) -> None:
        if event.organization_id == unique_org:
            received.append(event)
            if len(received) == 3:
                all_received.callback(None)

    bus.connect(listener)
    try:
        realm_id = uuid.uuid4()
        now = datetime.now(UTC)
        await _seed(pool, unique_org, realm_id, now - timedelta(seconds=10))

        async def create(vlob_id: uuid.UUID, blob: bytes) -> Any:
            event = BackendEvent("realm.vlobs_updated", unique_org,
                                 {"author": "alice@dev1", "realm_id": realm_id, "src_id": vlob_id, "src_version": 1})
            notify, params = notify_sql(event, computed={"checkpoint": "log.checkpoint"})
            params.update(org=unique_org, realm=realm_id, user="alice", rev=1, vlob=vlob_id, ts=now,
                          blob=blob, author="alice@dev1")
            async with pool.connection() as conn:
                before = conn.round_trips
                row = await conn.fetchrow(VLOB_CREATE.format(notify=notify), params)
                assert conn.round_trips - before == 1
            return row[0] if row else None

        async def create_prepared(vlob_id: uuid.UUID, blob: bytes) -> Any:
            event = BackendEvent("realm.vlobs_updated", unique_org,
                                 {"author": "alice@dev1", "realm_id": realm_id, "src_id": vlob_id, "src_version": 1})
            notify, params = notify_sql(event, computed={"checkpoint": "log.checkpoint"})
            params.update(org=unique_org, realm=realm_id, user="alice", rev=1, vlob=vlob_id, ts=now,
                          blob=blob, author="alice@dev1")
            row = await pool.fetchrow(PreparedStatement(VLOB_CREATE.format(notify=notify)), params)
            return row[0] if row else None

        first, second = uuid.uuid4(), uuid.uuid4()
        assert await create(first, b"one") == 1
        assert await create(second, b"two!") == 2
        assert await create(first, b"again") is None  # vlob ids are unique in the organization
        third = uuid.uuid4()
        assert await create_prepared(third, b"") == 3  # the same statement works prepared
        assert await create_prepared(third, b"") is None

        rows = await pool.fetch(
            "SELECT checkpoint, vlob_id, version FROM realm_vlob_update WHERE organization_id = %s"
            " ORDER BY checkpoint", (unique_org,)
        )
        assert rows == [(1, first, 1), (2, second, 1), (3, third, 1)]
        assert await pool.fetchrow(
            "SELECT checkpoint FROM realm WHERE organization_id = %s", (unique_org,)
        ) == (3,)
        assert await pool.fetchval(
            "SELECT sum(size) FROM vlob_atom WHERE organization_id = %s", (unique_org,)
        ) == 7
        assert await pool.fetchval(
            "SELECT last_vlob_update FROM realm_user WHERE organization_id = %s", (unique_org,)
        ) == now

        await all_received.addTimeout(20, reactor)  # safety net only
        assert [(e["src_id"], e["checkpoint"]) for e in received] == [(first, 1), (second, 2), (third, 3)]
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_schema_constraints(pool: PostgreSQLPool, unique_org: str) -> None:
    realm_id = uuid.uuid4()
    now = datetime.now(UTC)
    await _seed(pool, unique_org, realm_id, now)
    # A second non-revoked user with the same e-mail is refused by the partial unique index.
    with pytest.raises(psycopg2.errors.UniqueViolation):
        await pool.execute(
            "INSERT INTO user_ (organization_id, user_id, profile, human_email, human_label, human_email_folded,"
            " human_label_folded, human_label_lower, public_key, user_certificate, redacted_user_certificate,"
            " user_certifier, created_on)"
            " VALUES (%s, 'alice2', 'STANDARD', 'alice@example.com', 'A', 'alice@example.com', 'a', 'a',"
            " '\\x01', '\\x02', '\\x03', 'alice@dev1', %s)",
            (unique_org, now),
        )
    # A device must belong to its user.
    with pytest.raises(psycopg2.errors.CheckViolation):
        await pool.execute(
            "INSERT INTO device (organization_id, device_id, user_id, verify_key, device_certificate,"
            " redacted_device_certificate, created_on) VALUES (%s, 'bob@dev1', 'alice', '', '', '', %s)",
            (unique_org, now),
        )
    # invite_new idempotency: one pending invitation per (greeter, type, e-mail).
    upsert = (
        "INSERT INTO invitation (organization_id, token, type, greeter_user_id, claimer_email, created_on)"
        " VALUES (%s, %s, 'USER', 'alice', 'zack@example.com', %s)"
        " ON CONFLICT (organization_id, greeter_user_id, type, (md5(coalesce(claimer_email, ''))))"
        " WHERE deleted_on IS NULL DO UPDATE SET created_on = invitation.created_on RETURNING token"
    )
    token = uuid.uuid4()
    assert await pool.fetchval(upsert, (unique_org, token, now)) == token
    assert await pool.fetchval(upsert, (unique_org, uuid.uuid4(), now)) == token
    # The SHA-256 of PKI certificates is computed by the database.
    await pool.execute(
        "INSERT INTO pki_enrollment (organization_id, enrollment_id, submitter_der_x509_certificate,"
        " submit_payload_signature, submit_payload, submitted_on) VALUES (%s, %s, 'cert', '', '', %s)",
        (unique_org, uuid.uuid4(), now),
    )
    import hashlib

    assert await pool.fetchval(
        "SELECT submitter_der_x509_certificate_sha256 FROM pki_enrollment WHERE organization_id = %s",
        (unique_org,),
    ) == hashlib.sha256(b"cert").digest()
