"""PostgreSQLEventBus: NOTIFY/LISTEN fan-out between instances, transactions, reconnection."""

from __future__ import annotations

import base64
import os
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from parsec.api import codec
from parsec.backend import bus as bus_events
from parsec.backend.bus import BackendEvent
from parsec.storage.postgresql.connection import DatabaseUnavailable, Transaction
from parsec.storage.postgresql.events import (
    CHANNEL,
    EventDecodeError,
    Notify,
    PostgreSQLEventBus,
    decode_event,
    encode_event,
    notify_sql,
    sql_bigint,
    sql_text,
    sql_uuid,
)
from parsec.storage.postgresql.pool import PostgreSQLPool
from tests.pg_cluster import PgCluster

SAFETY = 20  # seconds: only to turn a hang into a failure


class Recorder:
    """Listener collecting the events of one organization; `wait_for(n)` fires at n events."""

    def __init__(self, organization_id: str) -> None:
        self.organization_id = organization_id
        self.events: list[BackendEvent] = []
        self._waiting: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def __call__(self, event: BackendEvent) -> None:
        if event.organization_id != self.organization_id:
            return
        self.events.append(event)
        for check, d in list(self._waiting):
            if check():
                self._waiting.remove((check, d))
                d.callback(None)

    async def wait_for(self, count: int) -> list[BackendEvent]:
        if len(self.events) < count:
            d: defer.Deferred[None] = defer.Deferred()
            self._waiting.append((lambda: len(self.events) >= count, d))
            await d.addTimeout(SAFETY, reactor)
        return self.events

    @property
    def names(self) -> list[str]:
        return [event.name for event in self.events]


class Hooks:
    """Records the bus hooks; `wait(name, count)` fires once `name` was called `count` times."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lost: list[DatabaseUnavailable] = []
        self.gave_up: list[DatabaseUnavailable] = []
        self._waiting: list[tuple[str, int, defer.Deferred[None]]] = []

    @property
    def reconnected(self) -> int:
        return self.calls.count("reconnected")

    def _record(self, name: str) -> None:
        self.calls.append(name)
        for entry in list(self._waiting):
            if self.calls.count(entry[0]) >= entry[1]:
                self._waiting.remove(entry)
                entry[2].callback(None)

    def on_connection_lost(self, exc: DatabaseUnavailable) -> None:
        self.lost.append(exc)
        self._record("lost")

    def on_reconnected(self) -> None:
        self._record("reconnected")

    def on_gave_up(self, exc: DatabaseUnavailable) -> None:
        self.gave_up.append(exc)
        self._record("gave_up")

    async def wait(self, name: str, count: int = 1) -> None:
        if self.calls.count(name) < count:
            d: defer.Deferred[None] = defer.Deferred()
            self._waiting.append((name, count, d))
            await d.addTimeout(SAFETY, reactor)

    def bus(self, pool: PostgreSQLPool, **kwargs: Any) -> PostgreSQLEventBus:
        return PostgreSQLEventBus(
            pool,
            on_connection_lost=self.on_connection_lost,
            on_reconnected=self.on_reconnected,
            on_gave_up=self.on_gave_up,
            **kwargs,
        )


def _event(org: str, name: str = "pinged", **data: Any) -> BackendEvent:
    return BackendEvent(name=name, organization_id=org, data=data or {"author": "alice@dev1", "ping": "p"})


# --- payload format ---------------------------------------------------------------------------


def test_payload_round_trip() -> None:
    realm_id = uuid.uuid4()
    when = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    event = BackendEvent(
        "realm.roles_updated", "Org", {"author": "a@b", "realm_id": realm_id, "user": "bob", "role": None,
                                       "certificate": b"\x00\x01", "timestamp": when, "index": 3}
    )
    payload = encode_event(event)
    raw = codec.unpackb(base64.b64decode(payload, validate=True))
    assert raw["__signal__"] == "realm.roles_updated" and raw["organization_id"] == "Org"
    assert len(raw["__id__"]) == 32 and encode_event(event) != payload  # unique per publication
    assert decode_event(payload) == event
    for bad in ["%%%", base64.b64encode(b"\x01").decode(), base64.b64encode(codec.packb({"a": 1})).decode()]:
        with pytest.raises(EventDecodeError):
            decode_event(bad)
    with pytest.raises(ValueError):
        encode_event(BackendEvent("x", "Org", {"__signal__": "forged"}))


def test_oversized_binary_fields_are_dropped(captured_logs: list[Any]) -> None:
    event = BackendEvent("user.created", "Org", {"user_id": "bob", "user_certificate": b"x" * 10_000})
    payload = encode_event(event)
    assert len(payload) < 8000
    assert decode_event(payload).data == {"user_id": "bob", "user_certificate": None}
    assert any("too large" in e.get("log_format", "") for e in captured_logs)


# --- fan-out ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_instances_hear_each_other(pg_dsn: str, unique_org: str) -> None:
    pools = [PostgreSQLPool(pg_dsn, min_connections=1, max_connections=2) for _ in range(2)]
    buses = [PostgreSQLEventBus(pool) for pool in pools]
    recorders = [Recorder(unique_org) for _ in buses]
    for pool, bus, recorder in zip(pools, buses, recorders, strict=True):
        await pool.start()
        await bus.start()
        bus.connect(recorder)
    try:
        assert buses[0].listener_pid != buses[1].listener_pid
        buses[0].publish(_event(unique_org, ping="from-0"))
        buses[1].publish(_event(unique_org, ping="from-1"))
        for recorder in recorders:  # each instance hears both, its own included
            events = await recorder.wait_for(2)
            assert sorted(event["ping"] for event in events) == ["from-0", "from-1"]

        # Fire-and-forget publications keep their order.
        for i in range(30):
            buses[0].publish(_event(unique_org, ping=f"seq-{i}"))
        for recorder in recorders:
            events = await recorder.wait_for(32)
            seq = [event["ping"] for event in events if event["ping"].startswith("seq-")]
            assert seq == [f"seq-{i}" for i in range(30)]

        buses[1].disconnect(recorders[1])
        buses[0].publish(_event(unique_org, ping="last"))
        await recorders[0].wait_for(33)
        assert len(recorders[1].events) == 32
    finally:
        for bus, pool in zip(buses, pools, strict=True):
            await bus.stop()
            await pool.close()


@pytest_twisted.ensureDeferred
async def test_transactional_events_only_on_commit(pool: PostgreSQLPool, unique_org: str, unique_table: str) -> None:
    bus = PostgreSQLEventBus(pool)
    await bus.start()
    recorder = Recorder(unique_org)
    bus.connect(recorder)
    try:
        await pool.execute(f"CREATE TABLE {unique_table} (k int)")

        class Abort(Exception):
            pass

        # Queued with publish_in, then rolled back: never sent.
        with pytest.raises(Abort):
            async with pool.transaction() as tx:
                await tx.execute(f"INSERT INTO {unique_table} VALUES (1)")
                bus.publish_in(tx, _event(unique_org, ping="rolled-back-1"))
                raise Abort()
        # Executed by the server inside a transaction that then rolls back: not delivered.
        with pytest.raises(Abort):
            async with pool.transaction() as tx:
                expression, params = notify_sql(_event(unique_org, ping="rolled-back-2"))
                await tx.execute(f"SELECT {expression}", params)
                raise Abort()

        # Committed: delivered once, and costs no round trip of its own.
        async def write(tx: Transaction) -> None:
            await tx.execute(f"INSERT INTO {unique_table} VALUES (2)")
            bus.publish_in(tx, _event(unique_org, ping="committed"))

        async with pool.connection() as conn:
            before = conn.round_trips
        await pool.run_transaction(write, name="write")
        events = await recorder.wait_for(1)
        assert [event["ping"] for event in events] == ["committed"]
        assert conn.round_trips - before == 2  # INSERT (+BEGIN), NOTIFY + COMMIT

        # A marker published afterwards arrives after anything sent before it: nothing else came.
        bus.publish(_event(unique_org, ping="marker"))
        events = await recorder.wait_for(2)
        assert [event["ping"] for event in events] == ["committed", "marker"]
        assert await pool.fetch(f"SELECT k FROM {unique_table}") == [(2,)]
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_notify_sql_with_computed_fields(pool: PostgreSQLPool, unique_org: str) -> None:
    bus = PostgreSQLEventBus(pool)
    await bus.start()
    recorder = Recorder(unique_org)
    bus.connect(recorder)
    try:
        realm_id = uuid.uuid4()
        event = BackendEvent("realm.vlobs_updated", unique_org, {"author": "a@d", "realm_id": realm_id})
        expression, params = notify_sql(event, computed={"checkpoint": "x.n", "src_version": "x.n * -2"})
        await pool.execute(f"SELECT {expression} FROM (SELECT 5000000000::bigint AS n) AS x", params)
        (received,) = await recorder.wait_for(1)
        assert received.name == "realm.vlobs_updated"
        assert received.data == {"author": "a@d", "realm_id": realm_id, "checkpoint": 5000000000,
                                 "src_version": -10000000000}
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_notify_with_computed_uuid_text_and_null(pool: PostgreSQLPool, unique_org: str) -> None:
    """`Notify`: computed values of every kind replace the placeholders of the event, one
    notification per evaluation (per row), NULL becomes nil."""
    bus = PostgreSQLEventBus(pool)
    await bus.start()
    recorder = Recorder(unique_org)
    bus.connect(recorder)
    try:
        notify = Notify(
            "x", {"realm_id": sql_uuid("t.r"), "recipient": sql_text("t.u", 128), "index": sql_bigint("t.i")}
        )
        rows = [(uuid.uuid4(), "bob", 1), (uuid.uuid4(), "été_ü", 2), (None, None, None)]
        placeholder = bus_events.message_received(unique_org, "a@d", "", 0)
        await pool.execute(
            f"SELECT {notify.sql} FROM unnest(%(r)s::uuid[], %(u)s::text[], %(i)s::bigint[])"
            " WITH ORDINALITY AS t (r, u, i, n) ORDER BY n",
            {**notify.params(placeholder), "r": [r[0] for r in rows], "u": [r[1] for r in rows],
             "i": [r[2] for r in rows]},
        )
        received = await recorder.wait_for(3)
        assert [event.data for event in received] == [
            {"author": "a@d", "realm_id": realm_id, "recipient": user, "index": index}
            for realm_id, user, index in rows
        ]
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_invalid_notifications_are_ignored(pool: PostgreSQLPool, unique_org: str,
                                                 captured_logs: list[Any]) -> None:
    bus = PostgreSQLEventBus(pool)
    await bus.start()
    recorder = Recorder(unique_org)
    bus.connect(recorder)
    try:
        await pool.execute("SELECT pg_notify(%s, 'not base64 at all!')", (CHANNEL,))
        bus.publish(_event(unique_org, ping="valid"))
        events = await recorder.wait_for(1)
        assert [event["ping"] for event in events] == ["valid"]
        assert any("Invalid event notification" in e.get("log_format", "") for e in captured_logs)
    finally:
        await bus.stop()


# --- losing the LISTEN connection -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listener_reconnects_after_backend_termination(pool: PostgreSQLPool, unique_org: str) -> None:
    hooks = Hooks()
    bus = hooks.bus(pool, max_connection_attempts=1, pause_before_retry=0.01)
    await bus.start()
    recorder = Recorder(unique_org)
    bus.connect(recorder)
    try:
        pids = set()
        for round_ in range(3):  # the budget is full again after each successful reconnection
            pid = bus.listener_pid
            assert pid is not None and pid not in pids
            pids.add(pid)
            assert await pool.fetchval("SELECT pg_terminate_backend(%s)", (pid,)) is True
            await hooks.wait("lost", round_ + 1)
            await hooks.wait("reconnected", round_ + 1)
            bus.publish(_event(unique_org, ping=f"after-{round_}"))
            await recorder.wait_for(round_ + 1)
        assert hooks.calls == ["lost", "reconnected"] * 3
        assert "LISTEN connection lost" in str(hooks.lost[0])
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_listener_with_no_retry_gives_up_at_once(pool: PostgreSQLPool) -> None:
    hooks = Hooks()
    bus = hooks.bus(pool, max_connection_attempts=0)
    await bus.start()
    try:
        await pool.fetchval("SELECT pg_terminate_backend(%s)", (bus.listener_pid,))
        await hooks.wait("gave_up")
        assert hooks.calls == ["lost", "gave_up"]
        assert not bus.is_listening
    finally:
        await bus.stop()


@pytest_twisted.ensureDeferred
async def test_listener_survives_a_database_restart(restartable_pg_cluster: PgCluster) -> None:
    org = "RestartOrg"
    pool = PostgreSQLPool(restartable_pg_cluster.dsn, min_connections=1, max_connections=2, max_connection_attempts=1)
    await pool.start()
    hooks = Hooks()
    bus = hooks.bus(pool, max_connection_attempts=10_000, pause_before_retry=0.02)
    await bus.start()
    recorder = Recorder(org)
    bus.connect(recorder)
    try:
        old_pid = bus.listener_pid
        restartable_pg_cluster.stop()
        await hooks.wait("lost")
        assert not bus.is_listening
        restartable_pg_cluster.start()
        await hooks.wait("reconnected")
        assert hooks.calls == ["lost", "reconnected"]
        assert bus.listener_pid not in (None, old_pid)
        bus.publish(_event(org, ping="after-restart"))
        events = await recorder.wait_for(1)
        assert events[0]["ping"] == "after-restart"
    finally:
        await bus.stop()
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_listener_gives_up_after_n_attempts(restartable_pg_cluster: PgCluster) -> None:
    pool = PostgreSQLPool(restartable_pg_cluster.dsn, min_connections=1, max_connections=1, max_connection_attempts=1)
    await pool.start()
    hooks = Hooks()
    bus = hooks.bus(pool, max_connection_attempts=3, pause_before_retry=0.01)
    await bus.start()
    try:
        restartable_pg_cluster.stop()
        await hooks.wait("gave_up")
        assert hooks.calls == ["lost", "gave_up"]
        assert "cannot connect" in str(hooks.gave_up[0])
    finally:
        await bus.stop()
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_stop_during_reconnection(restartable_pg_cluster: PgCluster) -> None:
    pool = PostgreSQLPool(restartable_pg_cluster.dsn, min_connections=1, max_connections=1, max_connection_attempts=1)
    await pool.start()
    hooks = Hooks()
    bus = hooks.bus(pool, max_connection_attempts=10_000, pause_before_retry=0.01)
    await bus.start()
    restartable_pg_cluster.stop()
    await hooks.wait("lost")
    await bus.stop()  # cancels the reconnection loop: no hook fires afterwards
    await pool.close()
    assert hooks.calls == ["lost"]


# --- bounded outbox ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_fire_and_forget_outbox_is_bounded(pg_dsn: str, unique_org: str, captured_logs: list[Any]) -> None:
    """While the LISTEN session does not answer (its backend process stopped: a stalled
    database), what `publish` queues is bounded in bytes; beyond, events are dropped (one
    warning); the kept ones go out afterwards, in order."""
    pool = PostgreSQLPool(pg_dsn, min_connections=1, max_connections=1)
    await pool.start()
    bus = PostgreSQLEventBus(pool, outbox_bytes=4096)
    recorder = Recorder(unique_org)
    try:
        await bus.start()
        bus.connect(recorder)
        backend_pid = bus.listener_pid
        assert backend_pid is not None
        os.kill(backend_pid, signal.SIGSTOP)
        try:
            bus.publish(_event(unique_org, ping="first"))  # sent, no answer
            texts = [f"{index}:" + "x" * 500 for index in range(20)]
            for text in texts:
                bus.publish(_event(unique_org, author="alice@dev1", ping=text))
            assert 0 < bus._unsent_size <= 4096
            kept = len(bus._unsent)
            assert 0 < kept < len(texts)
            warnings = [e for e in captured_logs if "Event outbox full" in e.get("log_format", "")]
            assert len(warnings) == 1
        finally:
            os.kill(backend_pid, signal.SIGCONT)
        events = await recorder.wait_for(1 + kept)
        assert [event["ping"] for event in events] == ["first", *texts[:kept]]
        assert bus._unsent_size == 0
    finally:
        await bus.stop()
        await pool.close()
