"""PostgreSQLPool under a stalled database (README.rst, Limits): statement_timeout,
lock_timeout, acquire timeout and the bound on waiters each end a request with
DatabaseTimeout, the session stays usable, and the pool serves again once the database does.

Timeouts are small so that the tests end quickly; nothing asserts on a duration (SAFETY only
turns a hang into a failure).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from parsec.storage.postgresql.connection import DatabaseTimeout, DatabaseUnavailable
from parsec.storage.postgresql.pool import PostgreSQLPool

SAFETY = 20  # seconds: only to turn a hang into a failure, never asserted on


async def _bounded(d: Any) -> Any:
    d = defer.ensureDeferred(d) if not isinstance(d, defer.Deferred) else d
    d.addTimeout(SAFETY, reactor)
    return await d


class TableLock:
    """An ACCESS EXCLUSIVE lock on a table, held by a connection of the test (outside the pool)."""

    def __init__(self, dsn: str, table: str) -> None:
        self._conn = psycopg2.connect(dsn)
        with self._conn.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # opens a transaction

    def release(self) -> None:
        if not self._conn.closed:
            self._conn.rollback()
            self._conn.close()


@pytest.fixture
def locks(pg_dsn: str) -> Iterator[Any]:
    held: list[TableLock] = []

    def lock(table: str) -> TableLock:
        held.append(TableLock(pg_dsn, table))
        return held[-1]

    yield lock
    for table_lock in held:
        table_lock.release()


@pytest_twisted.async_yield_fixture
async def limited(pg_dsn: str) -> Any:
    pools: list[PostgreSQLPool] = []

    async def make(**kwargs: Any) -> PostgreSQLPool:
        pool = PostgreSQLPool(pg_dsn, min_connections=1, max_connections=kwargs.pop("max_connections", 2), **kwargs)
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_sessions_carry_the_timeouts(limited: Any) -> None:
    pool = await limited(statement_timeout=2.5, lock_timeout=0.25)
    assert await pool.fetchval("SHOW statement_timeout") == "2500ms"
    assert await pool.fetchval("SHOW lock_timeout") == "250ms"
    # 0 leaves PostgreSQL's default (no timeout).
    pool = await limited()
    assert await pool.fetchval("SHOW statement_timeout") == "0"
    assert await pool.fetchval("SHOW lock_timeout") == "0"


@pytest_twisted.ensureDeferred
async def test_statement_timeout_ends_the_request_and_keeps_the_session(limited: Any) -> None:
    pool = await limited(statement_timeout=0.2)
    with pytest.raises(DatabaseTimeout):
        await _bounded(pool.fetchval("SELECT pg_sleep(30)"))
    # The session was not lost: the same single connection serves the next request.
    assert pool.size == 1
    assert await pool.fetchval("SELECT 42") == 42
    assert pool.size == 1
    assert issubclass(DatabaseTimeout, DatabaseUnavailable)  # handled as an outage by callers


@pytest_twisted.ensureDeferred
async def test_lock_timeout_in_a_transaction(limited: Any, locks: Any, unique_table: str) -> None:
    pool = await limited(lock_timeout=0.2)
    await pool.execute(f"CREATE TABLE {unique_table} (k int PRIMARY KEY)")
    table_lock = locks(unique_table)

    async def write() -> None:
        async with pool.transaction() as tx:
            await tx.execute("SELECT 1")
            await tx.execute(f"INSERT INTO {unique_table} VALUES (1)")

    with pytest.raises(DatabaseTimeout):
        await _bounded(write())
    with pytest.raises(DatabaseTimeout):
        await _bounded(pool.fetch(f"SELECT k FROM {unique_table}"))
    # The aborted transaction was rolled back: the connection came back clean.
    for conn in pool._idle:
        assert conn.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    table_lock.release()
    await _bounded(write())
    assert await pool.fetch(f"SELECT k FROM {unique_table}") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_acquire_timeout(limited: Any) -> None:
    pool = await limited(max_connections=1, acquire_timeout=0.2)
    held = await pool.acquire()
    with pytest.raises(DatabaseTimeout):
        await _bounded(pool.acquire())
    assert pool.stats["waiting"] == 0  # the expired waiter left the queue
    pool.release(held)
    conn = await _bounded(pool.acquire())
    assert conn is held
    pool.release(conn)


@pytest_twisted.ensureDeferred
async def test_waiters_are_bounded(limited: Any) -> None:
    pool = await limited(max_connections=1, max_waiters=2)
    held = await pool.acquire()
    first = defer.ensureDeferred(pool.acquire())
    second = defer.ensureDeferred(pool.acquire())
    assert pool.stats["waiting"] == 2
    third = defer.ensureDeferred(pool.acquire())
    # Refused at once, without waiting.
    assert third.called
    with pytest.raises(DatabaseTimeout):
        await third
    assert pool.stats["waiting"] == 2
    pool.release(held)
    conn = await _bounded(first)
    pool.release(conn)
    conn = await _bounded(second)
    pool.release(conn)
    assert pool.stats["waiting"] == 0


@pytest_twisted.ensureDeferred
async def test_a_stalled_table_does_not_stall_the_others(limited: Any, locks: Any, unique_table: str) -> None:
    """Every connection waits on a locked table: the other requests are answered within the
    limits (an error), then served again once the lock is released."""
    pool = await limited(max_connections=2, lock_timeout=0.3, acquire_timeout=0.3, max_waiters=4)
    await pool.execute(f"CREATE TABLE {unique_table} (k int)")
    table_lock = locks(unique_table)
    stalled = [defer.ensureDeferred(pool.fetch(f"SELECT k FROM {unique_table}")) for _ in range(2)]
    others = [defer.ensureDeferred(pool.fetchval("SELECT 1")) for _ in range(6)]
    outcomes = []
    for d in stalled + others:
        try:
            outcomes.append(await _bounded(d))
        except DatabaseTimeout:
            outcomes.append("timeout")
    assert outcomes[:2] == ["timeout", "timeout"]
    # Two were refused at once (more than 4 waiters), the others answered one way or another.
    assert outcomes[2:].count("timeout") >= 2
    table_lock.release()
    assert await pool.fetch(f"SELECT k FROM {unique_table}") == []
    assert await pool.fetchval("SELECT 1") == 1
