"""Every storage call is one round trip to PostgreSQL (after the per-connection PREPARE of its
statement), counted at the connection's send; the statements in that round trip are counted too
("lock; check+write" = 2)."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
import pytest_twisted

from parsec.backend import storage as st
from parsec.backend.models import ReencryptionBatchEntry
from parsec.storage.postgresql.binary import BinaryPool
from parsec.storage.postgresql.block import PgBlockBytes
from tests.storage_contract.conftest import make_world, new_pool, running_postgresql_backend
from tests.support import statement_count

ok = pytest_twisted.ensureDeferred
pytestmark = pytest.mark.postgresql


@pytest_twisted.async_yield_fixture
async def one_connection_backend(pg_dsn: str) -> Any:
    """A single connection: PREPAREs happen once, then every call reuses them."""
    async with running_postgresql_backend(new_pool(pg_dsn, max_connections=1)) as backend:
        yield backend


@ok
async def test_one_round_trip_per_call(one_connection_backend):
    backend = one_connection_backend
    pool = backend.pool
    assert pool is not None
    world = await make_world(backend)
    measured: dict[str, tuple[int, int]] = {}
    prepares: dict[str, str] = {}

    def prepared_sql(execute: str) -> str:
        """The statement text an EXECUTE runs (from the PREPARE seen earlier)."""
        name = execute.split()[1].split("(")[0]
        return prepares[name]

    async def measure(
        name: str, call: Any, *, expected_statements: int, error: type | None = None, notify: bool = False
    ) -> Any:
        """`notify`: a write, whose events travel in its own statement (pg_notify)."""
        # Run twice: the first run may PREPARE; the second is the steady state.
        result = None
        for attempt in range(2):
            before = len(pool.sent)
            try:
                result = await call()
            except st.StorageError as exc:
                # `error`: the rule violation this case expects (on its second run at least).
                assert error is not None and isinstance(exc, error), (name, exc)
            else:
                assert error is None or attempt == 0, (name, "no error")
            sent = pool.sent[before:]
            for sql in pool.sent:
                if sql.startswith("PREPARE "):
                    prepares[sql.split()[1]] = sql
            prepared_now = [sql for sql in sent if sql.startswith("PREPARE ")]
            others = [sql for sql in sent if not sql.startswith("PREPARE ")]
            assert len(others) == 1, (name, sent)
            if attempt == 1:
                assert not prepared_now, (name, "PREPAREd twice on one connection")
                statements = statement_count(others[0])
                assert statements == expected_statements, (name, others[0])
                executed = others[0] if not others[0].startswith("EXECUTE ") else prepared_sql(others[0])
                assert ("pg_notify" in executed) == notify, (name, executed)
                measured[name] = (len(sent), statements)
        return result

    realm_id = uuid4()
    await measure(
        "realm_create (ok, then already_exists)",
        lambda: world.realm.create(world.org, world.grant(realm_id, "alice@dev1", "alice", "OWNER")),
        expected_statements=1, notify=True,
        error=st.AlreadyExistsError,
    )
    for name in ("get_status", "get_stats", "get_role_certificates"):
        await measure(f"realm {name}", lambda n=name: getattr(world.realm, n)(world.org, "alice", realm_id),
                      expected_statements=1)
    await measure("get_realms_for_user", lambda: world.realm.get_realms_for_user(world.org, "alice"),
                  expected_statements=1)
    roles = iter(["READER", "CONTRIBUTOR"])
    await measure(
        "update_roles (with message)",
        lambda: world.share(realm_id, "alice@dev1", "bob", next(roles), message=b"m"),
        expected_statements=2, notify=True,
    )
    await measure(
        "update_roles (refused)",
        lambda: world.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR"),
        expected_statements=2, notify=True,
        error=st.AlreadyGrantedError,
    )

    vlob_id = uuid4()
    creates = iter([vlob_id, uuid4()])
    await measure(
        "vlob_create",
        lambda: world.vlob.create(world.org, "alice@dev1", realm_id, 1, next(creates), world.ts(), b"blob"),
        expected_statements=1, notify=True,
    )
    await measure(
        "vlob_create (refused)",
        lambda: world.vlob.create(world.org, "alice@dev1", realm_id, 1, vlob_id, world.ts(), b"blob"),
        expected_statements=1, notify=True,
        error=st.AlreadyExistsError,
    )
    versions = iter([2, 3])
    await measure(
        "vlob_update",
        lambda: world.vlob.update(world.org, "alice@dev1", 1, vlob_id, next(versions), world.ts(), b"blob"),
        expected_statements=1, notify=True,
    )
    await measure(
        "vlob_update (refused)",
        lambda: world.vlob.update(world.org, "alice@dev1", 1, vlob_id, 2, world.ts(), b"blob"),
        expected_statements=1, notify=True,
        error=st.BadVersionError,
    )
    await measure("vlob_read", lambda: world.vlob.read(world.org, "bob", 1, vlob_id, None, None),
                  expected_statements=1)
    await measure("vlob_poll_changes", lambda: world.vlob.poll_changes(world.org, "bob", realm_id, 0),
                  expected_statements=1)
    await measure("vlob_list_versions", lambda: world.vlob.list_versions(world.org, "bob", vlob_id),
                  expected_statements=1)

    claims: list[tuple[Any, Any]] = []

    async def claim() -> None:
        block_id = uuid4()
        claims.append((block_id, await world.block.claim_create(world.org, "alice@dev1", realm_id, block_id, world.ts(), 300.0)))

    async def record() -> None:
        block_id, held = claims.pop(0)
        await world.block.record_create(world.org, "alice@dev1", realm_id, block_id, 3, world.ts(), held)

    # Claim: the claiming statement, then the check that no block was recorded meanwhile.
    await measure("block claim_create", claim, expected_statements=2)
    await measure("block record_create", record, expected_statements=1)
    await measure("block check_read", lambda: world.block.check_read(world.org, "bob", uuid4()),
                  expected_statements=1, error=st.BlockNotFoundError)
    # The POSTGRESQL blockstore's creation and read: rules, metadata and bytes in one statement,
    # on the store's pool of binary sessions (one session here: PREPAREd once).
    bytes_pool = BinaryPool.like(pool, max_connections=1)
    await bytes_pool.start()
    blocks = PgBlockBytes(bytes_pool)
    created: list[Any] = []

    async def create_with_data() -> None:
        created.append(uuid4())
        await blocks.create_with_data(world.org, "alice@dev1", realm_id, created[-1], b"bytes", world.ts(), 300.0)

    async def binary_round_trips(call: Any) -> int:
        async with bytes_pool.connection() as conn:
            before = conn.round_trips
        await call()
        async with bytes_pool.connection() as conn:
            return conn.round_trips - before

    try:
        for _ in range(2):  # the first may PREPARE
            create_trips = await binary_round_trips(create_with_data)
            read_trips = await binary_round_trips(lambda: blocks.read_with_data(world.org, "alice", created[0]))
        assert (create_trips, read_trips) == (1, 1)
        assert await blocks.read_with_data(world.org, "alice", created[0]) == b"bytes"
    finally:
        await bytes_pool.close()
    await measure("message_get", lambda: world.message.get(world.org, "bob", 0), expected_statements=1)

    now = world.ts()
    revisions = iter([2, 3])
    await measure(
        "start_reencryption (ok, then in_maintenance)",
        lambda: world.realm.start_reencryption_maintenance(
            world.org, "alice@dev1", realm_id, next(revisions), {"alice": b"a", "bob": b"b"}, now, now
        ),
        expected_statements=2, notify=True,
        error=st.InMaintenanceError,
    )
    batch = await measure(
        "get_reencryption_batch",
        lambda: world.vlob.get_reencryption_batch(world.org, "alice", realm_id, 2, 100),
        expected_statements=1,
    )
    await measure(
        "save_reencryption_batch",
        lambda: world.vlob.save_reencryption_batch(
            world.org, "alice", realm_id, 2, [ReencryptionBatchEntry(e.vlob_id, e.version, b"x") for e in batch]
        ),
        expected_statements=2,
    )
    await measure(
        "finish_reencryption (ok, then not_in_maintenance)",
        lambda: world.realm.finish_reencryption_maintenance(world.org, "alice@dev1", realm_id, 2),
        expected_statements=2, notify=True,
        error=st.NotInMaintenanceError,
    )
    assert all(round_trips == 1 for round_trips, _ in measured.values()), measured
