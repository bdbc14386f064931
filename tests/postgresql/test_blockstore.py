"""PostgreSQLBlockStore: the POSTGRESQL blockstore, on its own pool of binary sessions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import formatEvent

from parsec.blockstore.base import BlockStore, BlockStoreError
from parsec.blockstore.postgresql import PostgreSQLBlockStore
from parsec.storage.postgresql.pool import PoolReentryError, PostgreSQLPool
from tests.pg_cluster import PgCluster


@pytest_twisted.ensureDeferred
async def test_create_read_idempotent_missing(pool: PostgreSQLPool, unique_org: str,
                                              captured_logs: list[Any]) -> None:
    store = PostgreSQLBlockStore(pool)
    assert isinstance(store, BlockStore)
    await store.start()
    block_id = uuid.uuid4()
    big = bytes(range(256)) * 4096  # 1 MiB, the protocol maximum

    await store.create(unique_org, block_id, big)
    assert await store.read(unique_org, block_id) == big
    await store.create(unique_org, block_id, big)  # same id again: success, first copy kept
    await store.create(unique_org, block_id, b"other bytes")
    assert await store.read(unique_org, block_id) == big

    empty_id = uuid.uuid4()
    await store.create(unique_org, empty_id, b"")  # a 0-byte block is a block
    assert await store.read(unique_org, empty_id) == b""

    # Organizations are separate namespaces.
    with pytest.raises(BlockStoreError) as info:
        await store.read(unique_org + "x", block_id)
    assert info.value.store == "POSTGRESQL" and info.value.reason == "block not found"
    await store.create(unique_org + "x", block_id, b"theirs")
    assert await store.read(unique_org + "x", block_id) == b"theirs"
    assert await store.read(unique_org, block_id) == big
    assert any("Block read error in POSTGRESQL" in formatEvent(e) for e in captured_logs)
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_database_down_is_a_blockstore_error(restartable_pg_cluster: PgCluster, captured_logs: list[Any]) -> None:
    pool = PostgreSQLPool(restartable_pg_cluster.dsn, min_connections=1, max_connections=2, max_connection_attempts=1)
    await pool.start()
    try:
        await pool.execute(
            "CREATE TABLE IF NOT EXISTS block_data (organization_id text, block_id uuid, data bytea,"
            " PRIMARY KEY (organization_id, block_id))"
        )
        store = PostgreSQLBlockStore(pool)
        await store.start()
        block_id = uuid.uuid4()
        await store.create("Org", block_id, b"data")
        restartable_pg_cluster.stop()
        with pytest.raises(BlockStoreError) as info:
            await store.read("Org", block_id)
        assert info.value.store == "POSTGRESQL" and "\n" not in info.value.reason
        with pytest.raises(BlockStoreError):
            await store.create("Org", uuid.uuid4(), b"data")
        assert any("Block create error in POSTGRESQL" in formatEvent(e) for e in captured_logs)
        restartable_pg_cluster.start()
        assert await store.read("Org", block_id) == b"data"
        await store.stop()
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_start_fails_without_schema(empty_pg_dsn: str) -> None:
    pool = PostgreSQLPool(empty_pg_dsn, min_connections=1, max_connections=1)
    await pool.start()
    try:
        with pytest.raises(BlockStoreError, match="start-up check failed"):
            await PostgreSQLBlockStore(pool).start()
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_caller_holding_a_connection_is_refused(pool: PostgreSQLPool, unique_org: str) -> None:
    """The reference's block_create deadlock: the store must not wait on the pool for a caller
    that holds a connection of it; it fails loudly instead (a bug, not a storage error)."""
    store = PostgreSQLBlockStore(pool)
    await store.start()
    async with pool.transaction() as tx:
        await tx.execute("SELECT 1")
        with pytest.raises(PoolReentryError):
            await store.create(unique_org, uuid.uuid4(), b"x")
    await store.stop()
