"""Concurrency of the PostgreSQL realm storages, enforced by the database.

* "Waiting" tests are deterministic: a real storage write runs inside a transaction left open
  on a dedicated connection (so it holds the realm lock), a second request is started, we wait
  until PostgreSQL reports it blocked by that transaction, commit, and check the second request
  decided on the committed state (not on the state its statement started with).
* "Many" tests start many requests at once through separate pool connections and check the
  invariants (one winner, gap-free checkpoints, consistent roles...), whatever the order.
No timing is asserted; delays only poll PostgreSQL's lock view, with a bound turning a hang into
a failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg2.errors
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from parsec.backend import storage as st
from parsec.backend.models import ReencryptionBatchEntry, VlobWrite
from parsec.storage.postgresql.connection import DatabaseTimeout, PgConnection
from parsec.storage.postgresql.realm import PgRealmStorage
from parsec.storage.postgresql.vlob import PgVlobStorage
from tests.storage_contract.conftest import Backend as PgBackend
from tests.storage_contract.conftest import World

ok = pytest_twisted.ensureDeferred
pytestmark = pytest.mark.postgresql

N = 20  # concurrent requests (the pool has 24 connections)


async def gather(*coroutines: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run concurrently; each result, or the exception it raised."""
    results = await defer.DeferredList([defer.ensureDeferred(c) for c in coroutines], consumeErrors=True)
    return [value if success else value.value for success, value in results]


class _OnConnection:
    """The pool interface the storages use, on one connection (inside its open transaction)."""

    def __init__(self, conn: PgConnection) -> None:
        self._conn = conn

    async def fetchrow(self, sql: Any, params: Any = None) -> Any:
        return await self._conn.fetchrow(sql, params)

    async def fetch(self, sql: Any, params: Any = None) -> Any:
        return await self._conn.fetch(sql, params)


class Held:
    """Storages whose statements run in a transaction left open until `commit()`."""

    def __init__(self, conn: PgConnection) -> None:
        self.conn = conn
        self.realm = PgRealmStorage(_OnConnection(conn))  # type: ignore[arg-type]
        self.vlob = PgVlobStorage(_OnConnection(conn))  # type: ignore[arg-type]

    async def commit(self) -> None:
        await self.conn.execute("COMMIT")


@asynccontextmanager
async def held_transaction(backend: PgBackend) -> AsyncIterator[Held]:
    conn = await backend.pool.open_dedicated()
    try:
        await conn.execute("BEGIN")
        yield Held(conn)
    finally:
        conn.close()


# Sessions waiting for `pid`, directly or behind another waiter (the second waiter of a row
# lock queues on the first waiter's tuple lock).
_BLOCKED_BY = """
WITH RECURSIVE blocked (pid) AS (
    SELECT pid FROM pg_stat_activity WHERE %(pid)s = ANY(pg_blocking_pids(pid))
    UNION
    SELECT a.pid FROM pg_stat_activity AS a, blocked AS b WHERE b.pid = ANY(pg_blocking_pids(a.pid))
)
SELECT count(*) FROM blocked
"""


async def wait_blocked_by(backend: PgBackend, conn: PgConnection, count: int = 1) -> None:
    """Until `count` sessions wait (directly or not) for a lock held by `conn`'s transaction."""
    for _ in range(3000):
        blocked = await backend.pool.fetchval(_BLOCKED_BY, {"pid": conn.backend_pid})
        if blocked >= count:
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the request never waited for the held lock")


async def raises(coroutine: Coroutine[Any, Any, Any], error: type[Exception]) -> Exception:
    with pytest.raises(error) as info:
        await coroutine
    return info.value


# ---- requests waiting for the realm lock decide on the committed state ---------------------------


@ok
async def test_update_waits_and_sees_the_concurrent_version(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    vlob_id = await w.create_vlob("alice@dev1", realm_id)
    async with held_transaction(pg_backend) as held:
        assert await held.vlob.update(w.org, "alice@dev1", 1, vlob_id, 2, w.ts(), b"first") == VlobWrite(realm_id, 2)
        second = defer.ensureDeferred(w.vlob.update(w.org, "alice@dev2", 1, vlob_id, 2, w.ts(), b"second"))
        await wait_blocked_by(pg_backend, held.conn)
        assert not second.called
        await held.commit()
        await raises(second, st.BadVersionError)
    # And the next version goes on from the committed one.
    assert await w.vlob.update(w.org, "alice@dev2", 1, vlob_id, 3, w.ts(), b"third") == VlobWrite(realm_id, 3)
    assert (await w.vlob.read(w.org, "alice", 1, vlob_id, 2, None)).blob == b"first"


@ok
async def test_checkpoint_allocated_after_the_concurrent_write(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    first = uuid4()
    async with held_transaction(pg_backend) as held:
        await held.vlob.create(w.org, "alice@dev1", realm_id, 1, first, w.ts(), b"a")
        second = defer.ensureDeferred(w.vlob.create(w.org, "alice@dev2", realm_id, 1, uuid4(), w.ts(), b"b"))
        await wait_blocked_by(pg_backend, held.conn)
        await held.commit()
        assert await second == VlobWrite(realm_id, 2)
    changes = await w.vlob.poll_changes(w.org, "alice", realm_id, 0)
    assert changes.current_checkpoint == 2 and len(changes.changes) == 2


@ok
async def test_vlob_write_waits_and_sees_the_author_demoted(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    await w.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR")
    vlob_id = await w.create_vlob("bob@dev1", realm_id)
    async with held_transaction(pg_backend) as held:
        await held.realm.update_roles(w.org, w.grant(realm_id, "alice@dev1", "bob", "READER"), None)
        create = defer.ensureDeferred(w.vlob.create(w.org, "bob@dev1", realm_id, 1, uuid4(), w.ts(), b"x"))
        update = defer.ensureDeferred(w.vlob.update(w.org, "bob@dev2", 1, vlob_id, 2, w.ts(), b"x"))
        await wait_blocked_by(pg_backend, held.conn, count=2)
        await held.commit()
        await raises(create, st.NotAllowedError)
        await raises(update, st.NotAllowedError)


@ok
async def test_demotion_waits_and_sees_the_concurrent_vlob_write(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    await w.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR")
    demoted_on = w.ts()
    wrote_on = w.ts()
    async with held_transaction(pg_backend) as held:
        await held.vlob.create(w.org, "bob@dev1", realm_id, 1, uuid4(), wrote_on, b"x")
        demote = defer.ensureDeferred(w.share(realm_id, "alice@dev1", "bob", "READER", timestamp=demoted_on))
        await wait_blocked_by(pg_backend, held.conn)
        await held.commit()
        error = await raises(demote, st.RequireGreaterTimestampError)
        assert error.strictly_greater_than == wrote_on


@ok
async def test_role_update_waits_and_sees_the_target_first_role(pg_world: World, pg_backend: PgBackend):
    """The target's first role is a row created by the concurrent request: a snapshot taken
    before the wait would not see it and would overwrite it."""
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    await w.share(realm_id, "alice@dev1", "bob", "OWNER")
    later, earlier = w.ts(), None
    earlier = later - timedelta(milliseconds=1)
    async with held_transaction(pg_backend) as held:
        await held.realm.update_roles(w.org, w.grant(realm_id, "alice@dev1", "carol", "READER", later), b"m1")
        same = defer.ensureDeferred(w.share(realm_id, "bob@dev1", "carol", "READER", timestamp=w.ts()))
        older = defer.ensureDeferred(w.share(realm_id, "bob@dev2", "carol", "CONTRIBUTOR", timestamp=earlier))
        await wait_blocked_by(pg_backend, held.conn, count=2)
        await held.commit()
        await raises(same, st.AlreadyGrantedError)
        error = await raises(older, st.RequireGreaterTimestampError)
        assert error.strictly_greater_than == later
    assert await w.realm.get_realms_for_user(w.org, "carol") == {realm_id: "READER"}
    assert len(await w.realm.get_role_certificates(w.org, "carol", realm_id)) == 3


@ok
async def test_reencryption_start_waits_and_sees_the_new_participant(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    now = w.ts()
    async with held_transaction(pg_backend) as held:
        await held.realm.update_roles(w.org, w.grant(realm_id, "alice@dev1", "carol", "READER"), None)
        start = defer.ensureDeferred(
            w.realm.start_reencryption_maintenance(w.org, "alice@dev1", realm_id, 2, {"alice": b"k"}, now, now)
        )
        await wait_blocked_by(pg_backend, held.conn)
        await held.commit()
        await raises(start, st.ParticipantsMismatchError)
    assert await w.realm.start_reencryption_maintenance(
        w.org, "alice@dev1", realm_id, 2, {"alice": b"k", "carol": b"k"}, now, now
    ) == [("alice", 1), ("carol", 1)]


@ok
async def test_batch_counts_include_the_concurrent_batch(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    await w.create_vlob("alice@dev1", realm_id)
    await w.create_vlob("alice@dev1", realm_id)
    now = w.ts()
    await w.realm.start_reencryption_maintenance(w.org, "alice@dev1", realm_id, 2, {"alice": b"k"}, now, now)
    first, second = await w.vlob.get_reencryption_batch(w.org, "alice", realm_id, 2, 10)
    async with held_transaction(pg_backend) as held:
        assert await held.vlob.save_reencryption_batch(w.org, "alice", realm_id, 2, [first]) == (2, 1)
        save = defer.ensureDeferred(w.vlob.save_reencryption_batch(w.org, "alice", realm_id, 2, [first, second]))
        await wait_blocked_by(pg_backend, held.conn)
        await held.commit()
        assert await save == (2, 2)
    await w.realm.finish_reencryption_maintenance(w.org, "alice@dev1", realm_id, 2)


@ok
async def test_vlob_write_locks_the_realm_first(pg_world: World, pg_backend: PgBackend):
    """Lock order realm -> realm_user -> vlob: with the author's realm_user row held by someone
    else, a vlob write already holds the realm row while it waits."""
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    vlob_id = await w.create_vlob("alice@dev1", realm_id)
    async with held_transaction(pg_backend) as held:
        await held.conn.execute(
            "SELECT 1 FROM realm_user WHERE organization_id = %s AND realm_id = %s AND user_id = 'alice' FOR UPDATE",
            (w.org, realm_id),
        )
        for write in (
            w.vlob.create(w.org, "alice@dev1", realm_id, 1, uuid4(), w.ts(), b"x"),
            w.vlob.update(w.org, "alice@dev1", 1, vlob_id, 2, w.ts(), b"x"),
        ):
            pending = defer.ensureDeferred(write)
            await wait_blocked_by(pg_backend, held.conn)
            # A lock not obtained (here at once, NOWAIT) is a DatabaseTimeout.
            with pytest.raises(DatabaseTimeout) as refused:
                await pg_backend.pool.execute(
                    "SELECT 1 FROM realm WHERE organization_id = %s AND realm_id = %s FOR NO KEY UPDATE NOWAIT",
                    (w.org, realm_id),
                )
            assert isinstance(refused.value.__cause__, psycopg2.errors.LockNotAvailable)
            held_pid = held.conn.backend_pid
            await held.commit()
            assert isinstance(await pending, VlobWrite)
            await held.conn.execute("BEGIN")
            await held.conn.execute(
                "SELECT 1 FROM realm_user WHERE organization_id = %s AND realm_id = %s AND user_id = 'alice'"
                " FOR UPDATE",
                (w.org, realm_id),
            )
            assert held.conn.backend_pid == held_pid
        await held.commit()


# ---- many concurrent requests ------------------------------------------------------------------


async def _checkpoints(backend: PgBackend, org: str, realm_id: UUID) -> tuple[list[int], int]:
    row = await backend.pool.fetchrow(
        "SELECT (SELECT array_agg(checkpoint ORDER BY checkpoint) FROM realm_vlob_update"
        "        WHERE organization_id = %(org)s AND realm_id = %(realm)s),"
        "       (SELECT checkpoint FROM realm WHERE organization_id = %(org)s AND realm_id = %(realm)s)",
        {"org": org, "realm": realm_id},
    )
    return list(row[0] or []), row[1]


@ok
async def test_concurrent_updates_same_version_one_wins(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    vlob_id = await w.create_vlob("alice@dev1", realm_id)
    timestamps = [w.ts() for _ in range(N)]
    results = await gather(
        *(w.vlob.update(w.org, "alice@dev1", 1, vlob_id, 2, ts, f"v2 #{i}".encode()) for i, ts in enumerate(timestamps))
    )
    winners = [r for r in results if isinstance(r, VlobWrite)]
    assert winners == [VlobWrite(realm_id, 2)]
    assert all(isinstance(r, st.BadVersionError) for r in results if not isinstance(r, VlobWrite)), results
    assert list(await w.vlob.list_versions(w.org, "alice", vlob_id)) == [1, 2]
    assert await _checkpoints(pg_backend, w.org, realm_id) == ([1, 2], 2)


@ok
async def test_concurrent_writes_get_consecutive_checkpoints(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    await w.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR")
    existing = [await w.create_vlob("alice@dev1", realm_id) for _ in range(N // 2)]
    writes = [
        w.vlob.create(w.org, "bob@dev1" if i % 2 else "alice@dev2", realm_id, 1, uuid4(), w.ts(), b"new")
        for i in range(N // 2)
    ] + [w.vlob.update(w.org, "bob@dev2", 1, vlob_id, 2, w.ts(), b"v2") for vlob_id in existing]
    results = await gather(*writes)
    assert all(isinstance(r, VlobWrite) for r in results), results
    start = N // 2
    assert sorted(r.checkpoint for r in results) == list(range(start + 1, start + N + 1))
    assert await _checkpoints(pg_backend, w.org, realm_id) == (list(range(1, start + N + 1)), start + N)
    changes = await w.vlob.poll_changes(w.org, "bob", realm_id, start)
    assert changes.current_checkpoint == start + N and len(changes.changes) == N
    assert all(changes.changes[v] == 2 for v in existing)


@ok
async def test_concurrent_creations_of_one_id_in_two_realms(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realms = [await w.create_realm("alice@dev1"), await w.create_realm("alice@dev1")]
    vlob_id = uuid4()
    results = await gather(
        *(w.vlob.create(w.org, "alice@dev1", realms[i % 2], 1, vlob_id, w.ts(), b"x") for i in range(N))
    )
    winners = [r for r in results if isinstance(r, VlobWrite)]
    assert len(winners) == 1 and winners[0].checkpoint == 1
    assert all(isinstance(r, st.AlreadyExistsError) for r in results if not isinstance(r, VlobWrite))
    for realm_id in realms:
        expected = 1 if realm_id == winners[0].realm_id else 0
        assert await _checkpoints(pg_backend, w.org, realm_id) == (list(range(1, expected + 1)), expected)


@ok
async def test_concurrent_identical_grants_one_wins(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    results = await gather(
        *(w.share(realm_id, f"alice@dev{1 + i % 2}", "carol", "READER", message=f"m{i}".encode()) for i in range(N))
    )
    assert sorted(results, key=lambda r: isinstance(r, Exception))[0] == 1
    assert sum(1 for r in results if r == 1) == 1
    assert all(isinstance(r, st.AlreadyGrantedError) for r in results if r != 1), results
    assert len(await w.message.get(w.org, "carol", 0)) == 1


@ok
async def test_concurrent_role_changes_stay_causal(pg_world: World, pg_backend: PgBackend):
    """Grants with increasing timestamps, applied in any order: the accepted ones have strictly
    increasing timestamps in acceptance order, and the current role is the latest accepted."""
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    roles = ["READER", "CONTRIBUTOR", "MANAGER", None]
    grants = [w.grant(realm_id, "alice@dev1", "bob", roles[i % 4]) for i in range(N)]
    results = await gather(*(w.realm.update_roles(w.org, g, b"m") for g in grants))
    accepted = [g for g, r in zip(grants, results, strict=True) if not isinstance(r, Exception)]
    assert accepted
    for r in results:
        assert not isinstance(r, Exception) or isinstance(
            r, st.AlreadyGrantedError | st.RequireGreaterTimestampError
        ), r
    rows = await pg_backend.pool.fetch(
        "SELECT role, certified_on FROM realm_role WHERE organization_id = %s AND realm_id = %s AND user_id = 'bob'"
        " ORDER BY seq",
        (w.org, realm_id),
    )
    assert len(rows) == len(accepted)
    stamps = [ts for _, ts in rows]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(a[0] != b[0] for a, b in zip(rows, rows[1:], strict=False))  # each one a change
    current = (await w.realm.get_realms_for_user(w.org, "bob")).get(realm_id)
    assert current == rows[-1][0]
    # One message per accepted grant, numbered without gaps.
    assert [m.index for m in await w.message.get(w.org, "bob", 0)] == list(range(1, len(accepted) + 1))


@ok
async def test_concurrent_demotion_and_writes_stay_causal(pg_world: World, pg_backend: PgBackend):
    """bob writes while alice demotes him to READER at T: if the demotion is accepted, no write
    of bob at or after T was accepted; if refused, it is because of a write at or after T."""
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    await w.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR")
    stamps = [w.ts() for _ in range(N)]
    demote_at = stamps[N // 2] - timedelta(microseconds=1)
    writes = [w.vlob.create(w.org, "bob@dev1", realm_id, 1, uuid4(), ts, b"x") for ts in stamps]
    demotion = w.share(realm_id, "alice@dev1", "bob", "READER", timestamp=demote_at)
    *write_results, demotion_result = await gather(*writes, demotion)
    late_writes = [ts for ts, r in zip(stamps, write_results, strict=True) if isinstance(r, VlobWrite) and ts >= demote_at]
    if isinstance(demotion_result, Exception):
        assert isinstance(demotion_result, st.RequireGreaterTimestampError)
        assert late_writes and demotion_result.strictly_greater_than >= demote_at
    else:
        assert not late_writes
        refused = [r for r in write_results if isinstance(r, Exception)]
        assert all(isinstance(r, st.NotAllowedError) for r in refused)
    checkpoints, current = await _checkpoints(pg_backend, w.org, realm_id)
    assert checkpoints == list(range(1, current + 1))


@ok
async def test_concurrent_messages_to_one_user(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realms = [await w.create_realm("alice@dev1") for _ in range(N // 2)]
    now = w.ts()
    shares = [w.share(r, "alice@dev1", "bob", "OWNER", message=f"share {i}".encode()) for i, r in enumerate(realms)]
    results = await gather(*shares)
    assert sorted(results) == list(range(1, N // 2 + 1))
    # Re-encryptions of all these realms at once: the same two recipients in every one of them
    # (their user_ rows are locked in the same order: no deadlock).
    starts = [
        w.realm.start_reencryption_maintenance(w.org, "alice@dev1", r, 2, {"bob": b"b", "alice": b"a"}, now, now)
        for r in realms
    ]
    results = await gather(*starts)
    assert all(isinstance(r, list) for r in results), results
    bob_indexes = sorted(dict(r)["bob"] for r in results)
    assert bob_indexes == list(range(N // 2 + 1, N + 1))
    messages = await w.message.get(w.org, "bob", 0)
    assert [m.index for m in messages] == list(range(1, N + 1))
    assert [m.index for m in await w.message.get(w.org, "alice", 0)] == list(range(1, N // 2 + 1))


@ok
async def test_concurrent_batches(pg_world: World, pg_backend: PgBackend):
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    for _ in range(N):
        await w.create_vlob("alice@dev1", realm_id)
    now = w.ts()
    await w.realm.start_reencryption_maintenance(w.org, "alice@dev1", realm_id, 2, {"alice": b"k"}, now, now)
    batch = await w.vlob.get_reencryption_batch(w.org, "alice", realm_id, 2, 100)
    # Overlapping batches, each entry saved by several requests with different blobs.
    saves = [
        w.vlob.save_reencryption_batch(
            w.org, "alice", realm_id, 2,
            [ReencryptionBatchEntry(e.vlob_id, e.version, f"#{i}".encode()) for e in batch[i % 5 :: 3]],
        )
        for i in range(N)
    ]
    results = await gather(*saves)
    assert all(isinstance(r, tuple) and r[0] == N for r in results), results
    dones = sorted(done for _, done in results)
    assert dones[-1] == len({(e.vlob_id, e.version) for i in range(N) for e in batch[i % 5 :: 3]})
    assert await w.vlob.save_reencryption_batch(w.org, "alice", realm_id, 2, batch) == (N, N)
    await w.realm.finish_reencryption_maintenance(w.org, "alice@dev1", realm_id, 2)


# ---- a write's events exist iff the write committed ------------------------------------------


@ok
async def test_events_commit_with_their_write(pg_world: World, pg_backend: PgBackend):
    """The NOTIFY is part of the write's statement: nothing is heard while the write's
    transaction is open, nothing after a rollback, the event after the commit."""
    w = pg_world
    realm_id = await w.create_realm("alice@dev1")
    recorder = pg_backend.recorder

    async def heard() -> list[tuple[str, Any]]:
        start = await recorder.sync(w.org)
        return [(e.name, e["src_id"]) for e in recorder.between(-1, start, w.org) if e.name == "realm.vlobs_updated"]

    rolled_back, committed = uuid4(), uuid4()
    async with held_transaction(pg_backend) as held:
        await held.vlob.create(w.org, "alice@dev1", realm_id, 1, rolled_back, w.ts(), b"x")
        assert await heard() == []
        await held.conn.execute("ROLLBACK")
    assert await heard() == []
    async with held_transaction(pg_backend) as held:
        await held.vlob.create(w.org, "alice@dev1", realm_id, 1, committed, w.ts(), b"y")
        assert await heard() == []
        await held.commit()
    assert await heard() == [("realm.vlobs_updated", committed)]
    with pytest.raises(st.VlobNotFoundError):
        await w.vlob.read(w.org, "alice", 1, rolled_back, None, None)
