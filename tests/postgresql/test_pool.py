"""PostgreSQLPool: sizing, FIFO hand-out, round trips, transactions, retries, failures."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from parsec.storage.postgresql.connection import (
    DatabaseUnavailable,
    PgConnection,
    PreparedStatement,
    Transaction,
)
from parsec.storage.postgresql.pool import PoolClosedError, PoolReentryError, PostgreSQLPool, run_detached
from tests.pg_cluster import PgCluster

SAFETY = 20  # seconds: only to turn a hang into a failure, never asserted on


async def _backend_count(pool: PostgreSQLPool, application_name: str) -> int:
    async with pool.connection() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
                (application_name,),
            )
        )


def _retry_warnings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_format", "").startswith("Database connection lost")]


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port nobody listens on (kept bound, not listening, during the test)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


# --- sizing and hand-out ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_opens_min_then_grows_up_to_max(pg_dsn: str) -> None:
    name = f"sizing-{uuid.uuid4().hex[:8]}"
    pool = PostgreSQLPool(pg_dsn, min_connections=2, max_connections=4, application_name=name)
    await pool.start()
    try:
        assert pool.stats == {"idle": 2, "in_use": 0, "opening": 0, "waiting": 0}
        assert await _backend_count(pool, name) == 2

        held = [await pool.acquire() for _ in range(4)]  # two idle + two new
        assert pool.size == 4 and pool.stats["in_use"] == 4
        fifth = defer.ensureDeferred(pool.acquire())
        assert not fifth.called and pool.stats["waiting"] == 1  # max reached: it waits
        pool.release(held[0])
        conn = await fifth
        assert conn is held[0]  # handed over directly, no new connection
        for c in [conn, *held[1:]]:
            pool.release(c)
        assert pool.stats == {"idle": 4, "in_use": 0, "opening": 0, "waiting": 0}
        assert await _backend_count(pool, name) == 4
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_waiters_are_served_fifo(pool: PostgreSQLPool) -> None:
    held = [await pool.acquire() for _ in range(pool.max_connections)]
    order: list[int] = []

    async def wait(index: int) -> None:
        conn = await pool.acquire()
        order.append(index)
        pool.release(conn)

    waiters = [defer.ensureDeferred(wait(i)) for i in range(6)]
    assert pool.stats["waiting"] == 6
    for conn in held:
        pool.release(conn)
    await defer.gatherResults(waiters)
    assert order == list(range(6))


@pytest_twisted.ensureDeferred
async def test_cancelled_waiter_leaves_the_queue(pool: PostgreSQLPool) -> None:
    held = [await pool.acquire() for _ in range(pool.max_connections)]
    first = defer.ensureDeferred(pool.acquire())
    second = defer.ensureDeferred(pool.acquire())
    first.cancel()
    with pytest.raises(defer.CancelledError):
        await first
    assert pool.stats["waiting"] == 1
    pool.release(held[0])
    conn = await second
    for c in [conn, *held[1:]]:
        pool.release(c)


@pytest_twisted.ensureDeferred
async def test_concurrent_load_never_exceeds_max(pool: PostgreSQLPool) -> None:
    peak = 0

    async def one(i: int) -> int:
        nonlocal peak
        async with pool.connection() as conn:
            peak = max(peak, pool.stats["in_use"])
            return int(await conn.fetchval("SELECT %s::int + 1", (i,)))

    results = await defer.gatherResults([defer.ensureDeferred(one(i)) for i in range(50)])
    assert results == [i + 1 for i in range(50)]
    assert peak <= pool.max_connections and pool.size <= pool.max_connections


# --- statements and round trips ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_single_statement_helpers_cost_one_round_trip(pool: PostgreSQLPool, unique_table: str) -> None:
    await pool.execute(f"CREATE TABLE {unique_table} (k text PRIMARY KEY, v bytea, u uuid, t timestamptz)")
    conn = await pool.acquire()  # the helpers below will use this (only idle) warm connection
    pool.release(conn)
    for other in list(pool._idle):
        if other is not conn:
            pool._idle.remove(other)
            other.close()
    before = conn.round_trips

    an_id, when = uuid.uuid4(), datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    count = await pool.execute(
        f"INSERT INTO {unique_table} VALUES ('a', %s, %s, %s), ('b', NULL, NULL, NULL)", (b"\x00\xff", an_id, when)
    )
    assert (count, conn.round_trips - before) == (2, 1)

    row = await pool.fetchrow(f"SELECT v, u, t FROM {unique_table} WHERE k = %s", ("a",))
    assert row == (b"\x00\xff", an_id, when)
    assert type(row[0]) is bytes
    assert conn.round_trips - before == 2

    assert await pool.fetch(f"SELECT k FROM {unique_table} ORDER BY k") == [("a",), ("b",)]
    assert await pool.fetchval(f"SELECT count(*) FROM {unique_table}") == 2
    assert await pool.fetchrow(f"SELECT k FROM {unique_table} WHERE k = 'zz'") is None
    assert await pool.fetchval(f"SELECT k FROM {unique_table} WHERE k = 'zz'") is None
    assert conn.round_trips - before == 6  # one per call


@pytest_twisted.ensureDeferred
async def test_sql_errors_pass_through_and_connection_is_reused(pool: PostgreSQLPool, unique_table: str) -> None:
    await pool.execute(f"CREATE TABLE {unique_table} (k int PRIMARY KEY)")
    await pool.execute(f"INSERT INTO {unique_table} VALUES (1)")
    with pytest.raises(psycopg2.errors.UniqueViolation):
        await pool.execute(f"INSERT INTO {unique_table} VALUES (1)")
    with pytest.raises(psycopg2.errors.SyntaxError):
        await pool.fetch("SELEC 1")
    assert pool.size == 2  # nothing was dropped
    assert await pool.fetchval("SELECT 1") == 1


@pytest_twisted.ensureDeferred
async def test_prepared_statements(pool: PostgreSQLPool, unique_table: str) -> None:
    await pool.execute(f"CREATE TABLE {unique_table} (k text PRIMARY KEY, n int, u uuid)")
    insert = PreparedStatement(
        f"INSERT INTO {unique_table} VALUES (%(k)s, %(n)s, %(u)s) RETURNING k || '%%' || %(k)s"
    )
    assert insert.param_names == ("k", "n", "u")
    assert insert.prepare_sql.endswith("VALUES ($1, $2, $3) RETURNING k || '%' || $1")
    with pytest.raises(ValueError):
        PreparedStatement("SELECT %s")

    async with pool.connection() as conn:
        before = conn.round_trips
        an_id = uuid.uuid4()
        assert await conn.fetchval(insert, {"k": "a", "n": 1, "u": an_id}) == "a%a"
        assert conn.round_trips - before == 2  # PREPARE, then EXECUTE
        assert await conn.fetchval(insert, {"k": "b", "n": None, "u": None}) == "b%b"
        assert conn.round_trips - before == 3  # prepared once per connection
        with pytest.raises(psycopg2.errors.UniqueViolation):
            await conn.fetchval(insert, {"k": "b", "n": 2, "u": None})
        assert await conn.fetchval(insert, {"k": "c", "n": 3, "u": None}) == "c%c"  # still prepared
        assert conn.round_trips - before == 5

    count = PreparedStatement(f"SELECT count(*) FROM {unique_table} WHERE n IS NOT NULL")
    async with pool.transaction() as tx:  # BEGIN goes with the EXECUTE, not with the PREPARE
        assert await tx.fetchval(count) == 2
        await tx.execute(insert, {"k": "d", "n": 4, "u": None})
    assert await pool.fetchval(count) == 3
    with pytest.raises(psycopg2.errors.UndefinedColumn):  # a bad statement fails at PREPARE
        await pool.fetchval(PreparedStatement(f"SELECT nope FROM {unique_table}"))
    assert await pool.fetchval(count) == 3


# --- transactions -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_transaction_commits_in_n_plus_one_round_trips(pool: PostgreSQLPool, unique_table: str) -> None:
    await pool.execute(f"CREATE TABLE {unique_table} (k int PRIMARY KEY)")
    committed: list[bool] = []
    async with pool.transaction() as tx:
        before = tx.connection.round_trips
        await tx.execute(f"INSERT INTO {unique_table} VALUES (1)")  # carries the BEGIN
        assert await tx.fetchval(f"SELECT count(*) FROM {unique_table}") == 1
        tx.call_after_commit(lambda: committed.append(True))
        assert committed == []
        conn = tx.connection
    assert conn.round_trips - before == 3  # 2 statements + COMMIT
    assert committed == [True]
    assert await pool.fetch(f"SELECT k FROM {unique_table}") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_transaction_rolls_back_on_error(pool: PostgreSQLPool, unique_table: str) -> None:
    await pool.execute(f"CREATE TABLE {unique_table} (k int PRIMARY KEY)")
    committed: list[bool] = []

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with pool.transaction() as tx:
            await tx.execute(f"INSERT INTO {unique_table} VALUES (1)")
            tx.call_after_commit(lambda: committed.append(True))
            raise Boom()
    # An SQL error inside also rolls back everything before it.
    with pytest.raises(psycopg2.errors.UniqueViolation):
        async with pool.transaction() as tx:
            await tx.execute(f"INSERT INTO {unique_table} VALUES (2)")
            await tx.execute(f"INSERT INTO {unique_table} VALUES (2)")
    assert committed == []
    assert await pool.fetchval(f"SELECT count(*) FROM {unique_table}") == 0
    assert pool.size == 2  # connections came back clean
    for conn in pool._idle:
        assert conn.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE


@pytest_twisted.ensureDeferred
async def test_run_transaction_returns_value(pool: PostgreSQLPool) -> None:
    async def body(tx: Transaction) -> Any:
        return await tx.fetchval("SELECT current_setting('transaction_isolation')")

    assert await pool.run_transaction(body, name="iso") == "read committed"
    assert await pool.run_transaction(body, name="iso", isolation="SERIALIZABLE") == "serializable"
    with pytest.raises(ValueError):
        await pool.run_transaction(body, isolation="CHAOS")  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_serializable_conflict_is_retried(pool: PostgreSQLPool, unique_table: str) -> None:
    """Write skew between two SERIALIZABLE transactions: the loser is run again and succeeds."""
    await pool.execute(f"CREATE TABLE {unique_table} (who text, v int)")
    both_read = defer.Deferred()
    reads = 0
    attempts = {"a": 0, "b": 0}

    def make(who: str) -> Any:
        async def body(tx: Transaction) -> int:
            nonlocal reads
            attempts[who] += 1
            total = int(await tx.fetchval(f"SELECT coalesce(sum(v), 0) FROM {unique_table}"))
            if attempts[who] == 1:  # first attempts: make both read before either writes
                reads += 1
                if reads == 2:
                    both_read.callback(None)
                await both_read
            await tx.execute(f"INSERT INTO {unique_table} VALUES (%s, %s)", (who, total + 1))
            return total

        return body

    results = await defer.gatherResults(
        [
            defer.ensureDeferred(pool.run_transaction(make(who), name=who, isolation="SERIALIZABLE"))
            for who in "ab"
        ]
    )
    assert sorted(attempts.values()) == [1, 2]
    assert sorted(results) == [0, 1]  # the retried one saw the other's row
    assert sorted(await pool.fetch(f"SELECT v FROM {unique_table}")) == [(1,), (2,)]


@pytest_twisted.ensureDeferred
async def test_retries_are_bounded(pool: PostgreSQLPool) -> None:
    calls = 0

    async def always_conflicts(tx: Transaction) -> None:
        nonlocal calls
        calls += 1
        code = "40001" if calls % 2 else "40P01"  # serialization failure, deadlock
        await tx.execute(f"DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{code}'; END $$")

    with pytest.raises((psycopg2.errors.SerializationFailure, psycopg2.errors.DeadlockDetected)):
        await pool.run_transaction(always_conflicts, name="doomed", max_attempts=3)
    assert calls == 3

    calls = 0

    async def other_error(tx: Transaction) -> None:
        nonlocal calls
        calls += 1
        await tx.execute("SELECT 1/0")

    with pytest.raises(psycopg2.errors.DivisionByZero):
        await pool.run_transaction(other_error, max_attempts=3)
    assert calls == 1  # not retryable


@pytest_twisted.ensureDeferred
async def test_waiting_on_the_pool_while_holding_a_connection_is_refused(pool: PostgreSQLPool) -> None:
    async with pool.transaction() as tx:
        await tx.fetchval("SELECT 1")
        with pytest.raises(PoolReentryError):
            await pool.fetchval("SELECT 2")
        with pytest.raises(PoolReentryError):
            async with pool.connection():
                pass
        # Fire-and-forget work may use the pool: nobody waits for it while holding.
        detached = run_detached(lambda: pool.fetchval("SELECT 3"))
    assert await detached == 3
    assert await pool.fetchval("SELECT 4") == 4  # the mark is gone after release


@pytest_twisted.ensureDeferred
async def test_cancelling_a_query_drops_its_connection(pool: PostgreSQLPool) -> None:
    d = defer.ensureDeferred(pool.fetchval("SELECT pg_sleep(30)"))
    await task.deferLater(reactor, 0.05, lambda: None)
    d.cancel()
    with pytest.raises(defer.CancelledError):
        await d
    assert pool.stats["in_use"] == 0
    assert await pool.fetchval("SELECT 1") == 1


# --- start-up retry policy --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_start_with_zero_attempts_fails_at_once(dead_port: int, captured_logs: list[Any]) -> None:
    pool = PostgreSQLPool(
        f"postgresql://parsec@127.0.0.1:{dead_port}/parsec",
        min_connections=1, max_connections=1, max_connection_attempts=0, pause_before_retry=0.01,
    )
    with pytest.raises(DatabaseUnavailable) as info:
        await pool.start()
    assert f"127.0.0.1:{dead_port}/parsec" in str(info.value)
    assert "\n" not in str(info.value)
    assert _retry_warnings(captured_logs) == []
    await pool.close()


@pytest_twisted.ensureDeferred
async def test_start_gives_up_after_n_attempts(dead_port: int, captured_logs: list[Any]) -> None:
    pool = PostgreSQLPool(
        f"postgresql://parsec:secret-password@127.0.0.1:{dead_port}/parsec",
        min_connections=2, max_connections=3, max_connection_attempts=3, pause_before_retry=0.01,
    )
    with pytest.raises(DatabaseUnavailable) as info:
        await pool.start()
    warnings = _retry_warnings(captured_logs)
    assert len(warnings) == 2  # 3 attempts, 2 pauses
    assert all(w["pause"] == 0.01 for w in warnings)
    texts = [str(info.value)] + [str(e.get("error")) for e in captured_logs]
    assert not any("secret-password" in text for text in texts)
    await pool.close()


@pytest_twisted.ensureDeferred
async def test_start_waits_for_a_late_database(restartable_pg_cluster: PgCluster, captured_logs: list[Any]) -> None:
    restartable_pg_cluster.stop()
    pool = PostgreSQLPool(
        restartable_pg_cluster.dsn, min_connections=2, max_connections=2, max_connection_attempts=1000,
        pause_before_retry=0.02,
    )
    started = defer.ensureDeferred(pool.start())
    first_retry = defer.Deferred()

    def watch(event: dict[str, Any]) -> None:
        if _retry_warnings([event]) and not first_retry.called:
            first_retry.callback(None)

    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(watch)
    try:
        await first_retry.addTimeout(SAFETY, reactor)
    finally:
        globalLogPublisher.removeObserver(watch)
    assert not started.called
    restartable_pg_cluster.start()  # blocks the reactor meanwhile: the next attempt finds it up
    await started.addTimeout(SAFETY, reactor)
    assert pool.stats["idle"] == 2
    assert await pool.fetchval("SELECT 1") == 1
    await pool.close()


@pytest_twisted.ensureDeferred
async def test_connect_timeout(silent_port: int) -> None:
    pool = PostgreSQLPool(
        f"postgresql://parsec@127.0.0.1:{silent_port}/parsec",
        min_connections=1, max_connections=1, max_connection_attempts=1, connect_timeout=0.2,
    )
    with pytest.raises(DatabaseUnavailable, match="timed out"):
        await pool.start()
    await pool.close()


def test_invalid_dsn_is_rejected_without_echo() -> None:
    with pytest.raises(ValueError) as info:
        PostgreSQLPool("postgresql://u:hunter2@127.0.0.1:notaport/x?bogus=1")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError):
        PostgreSQLPool("postgresql:///x", min_connections=3, max_connections=2)


# --- failures while running -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_database_restart_while_running(restartable_pg_cluster: PgCluster) -> None:
    pool = PostgreSQLPool(restartable_pg_cluster.dsn, min_connections=2, max_connections=3, max_connection_attempts=1)
    await pool.start()
    try:
        assert await pool.fetchval("SELECT 1") == 1
        busy = defer.ensureDeferred(pool.fetchval("SELECT pg_sleep(30)"))
        await task.deferLater(reactor, 0.05, lambda: None)

        restartable_pg_cluster.stop()
        with pytest.raises(DatabaseUnavailable):
            await busy  # in flight when the server went down
        with pytest.raises(DatabaseUnavailable):
            await pool.fetchval("SELECT 1")  # nothing to connect to
        with pytest.raises(DatabaseUnavailable):
            async with pool.transaction() as tx:
                await tx.execute("SELECT 1")

        restartable_pg_cluster.start()
        for _ in range(2 * pool.max_connections):  # no stale connection is ever handed out
            assert await pool.fetchval("SELECT 1") == 1
        results = await defer.gatherResults(
            [defer.ensureDeferred(pool.fetchval("SELECT %s::int", (i,))) for i in range(10)]
        )
        assert results == list(range(10))
        assert pool.size <= pool.max_connections
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_database_crash_while_running(restartable_pg_cluster: PgCluster) -> None:
    pool = PostgreSQLPool(restartable_pg_cluster.dsn, min_connections=2, max_connections=2, max_connection_attempts=1)
    await pool.start()
    try:
        assert await pool.fetchval("SELECT 1") == 1
        restartable_pg_cluster.kill()
        with pytest.raises(DatabaseUnavailable):
            await pool.fetchval("SELECT 1")
        restartable_pg_cluster.start()
        assert await pool.fetchval("SELECT 1") == 1
        assert await pool.fetchval("SELECT 2") == 2
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_terminated_connection_is_replaced(pool: PostgreSQLPool) -> None:
    victim = await pool.acquire()
    pid = victim.backend_pid
    killer = await pool.acquire()
    assert await killer.fetchval("SELECT pg_terminate_backend(%s)", (pid,)) is True
    pool.release(killer)
    pool.release(victim)  # on top of the idle stack: the next request gets it if not yet noticed
    # Whether the pool noticed (idle socket closed) or not yet, no request fails for long:
    # at most the one that meets the dead connection.
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(await pool.fetchval("SELECT pg_backend_pid()"))
        except DatabaseUnavailable:
            outcomes.append(None)
    assert outcomes.count(None) <= 1 and outcomes[-1] is not None
    assert pid not in outcomes


@pytest_twisted.ensureDeferred
async def test_waiters_get_a_new_connection_when_one_dies(pool: PostgreSQLPool) -> None:
    held = [await pool.acquire() for _ in range(pool.max_connections)]
    waiter = defer.ensureDeferred(pool.acquire())
    held[0].close()  # dies in the hands of its user
    pool.release(held[0])
    conn: PgConnection = await waiter.addTimeout(SAFETY, reactor)
    assert conn not in held and await conn.fetchval("SELECT 1") == 1
    for c in [conn, *held[1:]]:
        pool.release(c)


@pytest_twisted.ensureDeferred
async def test_close_fails_waiters_and_waits_for_users(pool: PostgreSQLPool) -> None:
    held = [await pool.acquire() for _ in range(pool.max_connections)]
    waiter = defer.ensureDeferred(pool.acquire())
    closing = defer.ensureDeferred(pool.close())
    with pytest.raises(PoolClosedError):
        await waiter
    assert not closing.called  # connections still in use
    for conn in held:
        assert await conn.fetchval("SELECT 1") == 1  # still usable until given back
        pool.release(conn)
    await closing
    with pytest.raises(PoolClosedError):
        await pool.fetchval("SELECT 1")
