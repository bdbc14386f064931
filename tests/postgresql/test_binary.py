"""`BinaryPool`: the binary sessions of the POSTGRESQL blockstore (values both ways, SQL
errors as psycopg2's classes, timeouts, a session dying while idle, bytes as they are)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg2.errors
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from parsec.storage.postgresql.binary import BinaryPool
from parsec.storage.postgresql.connection import DatabaseTimeout, PreparedStatement
from parsec.storage.postgresql.pool import PostgreSQLPool

SAFETY = 20  # seconds: only to turn a hang into a failure, never asserted on

_VALUES = PreparedStatement(
    "SELECT %(text)s::text, %(number)s::integer, %(big)s::bigint, %(yes)s::boolean, %(id)s::uuid,"
    " %(when)s::timestamptz, %(data)s::bytea, %(role)s::text = ANY(%(roles)s::text[]),"
    " array_length(%(roles)s::text[], 1), %(missing)s::text"
)
_DIVIDE = PreparedStatement("SELECT 1 / %(zero)s::integer")
_SLEEP = PreparedStatement("SELECT pg_sleep(%(seconds)s::float8)")
_PID = PreparedStatement("SELECT pg_backend_pid()")


@pytest_twisted.async_yield_fixture
async def binary(pool: PostgreSQLPool) -> Any:
    bytes_pool = BinaryPool.like(pool, max_connections=2)
    await bytes_pool.start()
    yield bytes_pool
    await bytes_pool.close()


@pytest_twisted.ensureDeferred
async def test_values_both_ways(binary: BinaryPool) -> None:
    block = os.urandom(512 * 1024) + b"\x00'\\"  # any byte, sent and received as it is
    when = datetime(2026, 12, 6, 17, 30, 1, 234567, tzinfo=UTC)
    ident = uuid.uuid4()
    roles = ['OWNER', 'a "quoted" \\ role', "MANAGER"]
    for _ in range(2):  # prepared, then executed again
        row = await binary.fetchrow(_VALUES, {
            "text": "é'x", "number": -7, "big": 2**40, "yes": True, "id": ident, "when": when,
            "data": block, "role": 'a "quoted" \\ role', "roles": roles, "missing": None,
        })
        assert row == ("é'x", -7, 2**40, True, ident, when, block, True, 3, None)
    row = await binary.fetchrow(_VALUES, {
        "text": "", "number": 0, "big": 0, "yes": False, "id": ident, "when": when,
        "data": memoryview(b""), "role": "READER", "roles": [], "missing": None,
    })
    assert row == ("", 0, 0, False, ident, when, b"", False, None, None)


@pytest_twisted.ensureDeferred
async def test_sql_errors_are_psycopg2_classes_and_the_session_lives_on(binary: BinaryPool) -> None:
    with pytest.raises(psycopg2.errors.DivisionByZero, match="division by zero"):
        await binary.fetchrow(_DIVIDE, {"zero": 0})
    assert await binary.fetchrow(_DIVIDE, {"zero": 1}) == (1,)
    assert binary.errors["lost"] == 0


@pytest_twisted.ensureDeferred
async def test_statement_timeout(pg_dsn: str) -> None:
    metadata = PostgreSQLPool(pg_dsn, min_connections=1, max_connections=1, statement_timeout=0.2)
    await metadata.start()
    bytes_pool = BinaryPool.like(metadata, max_connections=1)
    try:
        await bytes_pool.start()
        with pytest.raises(DatabaseTimeout):
            await bytes_pool.fetchrow(_SLEEP, {"seconds": 5})
        assert await bytes_pool.fetchrow(_DIVIDE, {"zero": 1}) == (1,)  # the same session
        assert bytes_pool.size == 1 and bytes_pool.errors["lost"] == 0
    finally:
        await bytes_pool.close()
        await metadata.close()


@pytest_twisted.ensureDeferred
async def test_session_killed_while_idle_is_dropped_and_replaced(pool: PostgreSQLPool, binary: BinaryPool) -> None:
    row = await binary.fetchrow(_PID)
    assert row is not None
    assert await pool.fetchval("SELECT pg_terminate_backend(%s)", (row[0],)) is True
    for _ in range(SAFETY * 100):  # noticed while idle: the reactor reads the end
        if binary.errors["lost"]:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert binary.errors["lost"] == 1 and binary.size == 0
    again = await binary.fetchrow(_PID)
    assert again is not None and again[0] != row[0]


@pytest_twisted.ensureDeferred
async def test_unreachable_database() -> None:
    dead = PostgreSQLPool("postgresql://nobody@127.0.0.1:1/none", max_connection_attempts=1)
    bytes_pool = BinaryPool.like(dead, max_connections=1)
    with pytest.raises(Exception, match="cannot connect to 127.0.0.1:1/none"):
        await bytes_pool.start()
    await bytes_pool.close()


def _watched(session: Any) -> tuple[bool, bool]:
    return session in reactor.getReaders(), session in reactor.getWriters()


_LENGTH = PreparedStatement("SELECT length(%(data)s::bytea)")


@pytest_twisted.ensureDeferred
async def test_socket_is_a_duplicate_watched_for_writing_only_while_sending(binary: BinaryPool) -> None:
    async with binary.connection() as conn:
        session = conn._session
        assert _watched(session) == (True, False)  # idle: reading (the end of the session)
        assert session.fileno() != session.pgconn.socket  # the reactor's own descriptor
        # Far larger than the socket's buffers: with 8 MiB, a database session reading as fast
        # as we sent sometimes took it all within libpq's first flush (CI, 2026-12-06).
        big = os.urandom(32 * 1024 * 1024)
        sent = defer.ensureDeferred(conn.fetchrow(_LENGTH, {"data": big}))
        seen = set()
        for _ in range(SAFETY * 1000):
            if sent.called:
                break
            seen.add(_watched(session))
            await task.deferLater(reactor, 0.001, lambda: None)
        assert (True, True) in seen  # the rest of the parameter still to send
        assert await sent == (len(big),)
        assert _watched(session) == (True, False)
    await binary.close()
    assert _watched(session) == (False, False) and session.fileno() == -1


@pytest_twisted.ensureDeferred
async def test_a_statement_given_up_closes_its_session(binary: BinaryPool) -> None:
    async with binary.connection() as conn:
        running = defer.ensureDeferred(conn.fetchrow(_SLEEP, {"seconds": 30}))
        await task.deferLater(reactor, 0.05, lambda: None)
        running.cancel()
        with pytest.raises(defer.CancelledError):
            await running
        assert conn.broken and _watched(conn._session) == (False, False)
    assert binary.size == 0  # dropped, never reused
    assert await binary.fetchrow(_DIVIDE, {"zero": 1}) == (1,)
