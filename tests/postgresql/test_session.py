"""`Session`: the reactor-driven psycopg2 connection under the pool (socket registration,
NOTIFYs, a connection dying while idle, answers that are already there)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task

from parsec.storage.postgresql.connection import DatabaseUnavailable, PgConnection
from parsec.storage.postgresql.pool import PostgreSQLPool

SAFETY = 20  # seconds: only to turn a hang into a failure, never asserted on


def _watched(session: Any) -> tuple[bool, bool]:
    return session in reactor.getReaders(), session in reactor.getWriters()


@pytest_twisted.ensureDeferred
async def test_socket_is_watched_for_reading_only_and_is_a_duplicate(pool: PostgreSQLPool) -> None:
    conn = await pool.open_dedicated()
    try:
        session = conn._raw
        assert _watched(session) == (True, False)  # idle: reading (NOTIFYs, the end)
        assert session.fileno() != session.raw.fileno()  # the reactor's own descriptor
        same = os.fstat(session.fileno()), os.fstat(session.raw.fileno())
        assert (same[0].st_dev, same[0].st_ino) == (same[1].st_dev, same[1].st_ino)
        # A statement larger than the socket's buffers: writing is watched until it is out.
        big = "x" * (8 * 1024 * 1024)
        assert await conn.fetchval("SELECT length(%s)", (big,)) == len(big)
        assert _watched(session) == (True, False)
    finally:
        conn.close()
    assert _watched(session) == (False, False)
    assert session.fileno() == -1


@pytest_twisted.ensureDeferred
async def test_notifies_come_in_order_with_and_without_statements(pool: PostgreSQLPool) -> None:
    conn = await pool.open_dedicated()
    got: list[str] = []
    conn.notify_handler = lambda notify: got.append(notify.payload)
    try:
        await conn.execute("LISTEN parsec_session_test")
        # Its own NOTIFY comes back with the statement's answer.
        await conn.execute("SELECT pg_notify('parsec_session_test', 'self')")
        assert got == ["self"]
        # Another session's, while this one is idle.
        await pool.execute("SELECT pg_notify('parsec_session_test', 'other')")
        for _ in range(SAFETY * 100):
            if len(got) == 2:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert got == ["self", "other"]

        # A NOTIFY handler may send the next statement on the session at once: the session
        # is at rest before any handler runs.
        sent: list[defer.Deferred[Any]] = []

        def handler(notify: Any) -> None:
            got.append(notify.payload)
            if notify.payload == "again":
                sent.append(defer.ensureDeferred(conn.fetchval("SELECT 42")))

        conn.notify_handler = handler
        await conn.execute("SELECT pg_notify('parsec_session_test', 'again')")
        assert got[-1] == "again" and len(sent) == 1
        assert await sent[0] == 42
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_backend_terminated_while_idle_is_reported_once(pool: PostgreSQLPool) -> None:
    conn = await pool.open_dedicated()
    losses: list[Any] = []
    lost = defer.Deferred[None]()

    def on_lost(which: PgConnection, reason: Any) -> None:
        losses.append(reason)
        if not lost.called:
            lost.callback(None)

    conn.on_lost = on_lost
    session = conn._raw
    try:
        assert await pool.fetchval("SELECT pg_terminate_backend(%s)", (conn.backend_pid,)) is True
        await lost.addTimeout(SAFETY, reactor)
        await task.deferLater(reactor, 0.05, lambda: None)  # no second report, no busy loop
        assert len(losses) == 1
        assert conn.broken
        assert _watched(session) == (False, False) and session.fileno() == -1
        try:
            await conn.fetchval("SELECT 1")
        except DatabaseUnavailable:
            pass
        else:
            raise AssertionError("a dead session answered")
    finally:
        conn.close()


class _AnswerAlreadyThere:
    """A psycopg2 connection whose poll() gives the database time to answer first, as happens
    under load (the database takes the CPU from the server between sending and polling)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def poll(self) -> int:
        time.sleep(0.001)
        return int(self._raw.poll())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


@pytest_twisted.ensureDeferred
async def test_answers_already_there_are_delivered_from_the_reactor(pg_dsn: str) -> None:
    pool = PostgreSQLPool(pg_dsn, min_connections=1, max_connections=1)
    await pool.start()
    try:
        conn = await pool.open_dedicated()  # psycopg2's session (the pool's: test_binary.py)
        try:
            session = conn._raw
            session.raw = _AnswerAlreadyThere(session.raw)
            answered = session.execute(session.raw.cursor(), "SELECT 1", None)
            assert not answered.called  # not within execute: from the next reactor turn
            await answered
        finally:
            conn.close()
        # Requests queued on the only connection, each answered at once: each is delivered
        # from the reactor, none within the previous one's release (a stack growing by one
        # request per statement, RecursionError before).
        results = await defer.gatherResults(
            [defer.ensureDeferred(pool.fetchval("SELECT %s", (i,))) for i in range(400)], consumeErrors=True
        )
        assert results == list(range(400))
    finally:
        await pool.close()
