"""Build a BlockStore from its parsed configuration (see `config.parse_blockstore_params`)."""

from __future__ import annotations

from typing import Any

from parsec.blockstore.base import BlockStore
from parsec.blockstore.config import (
    BlockStoreConfig,
    MockedBlockStoreConfig,
    PostgreSQLBlockStoreConfig,
    RaidBlockStoreConfig,
    S3BlockStoreConfig,
    SingleBlockStoreConfig,
    SwiftBlockStoreConfig,
)
from parsec.blockstore.memory import MemoryBlockStore
from parsec.blockstore.postgresql import PostgreSQLBlockStore
from parsec.blockstore.raid import RAID0BlockStore, RAID1BlockStore, RAID5BlockStore
from parsec.blockstore.swift import SwiftBlockStore
from parsec.limits import DEFAULT
from parsec.storage.postgresql.binary import BinaryPool
from parsec.storage.postgresql.pool import PostgreSQLPool


class BlockStoreUnavailableError(Exception):
    """The configuration cannot be served (e.g. POSTGRESQL blockstore without a PostgreSQL pool)."""


def _build_single(
    config: SingleBlockStoreConfig, reactor: Any, pg_pool: PostgreSQLPool | None, timeout: float, pg_connections: int
) -> BlockStore:
    if isinstance(config, MockedBlockStoreConfig):
        return MemoryBlockStore()
    if isinstance(config, PostgreSQLBlockStoreConfig):
        if pg_pool is None:
            raise BlockStoreUnavailableError("PostgreSQL block store is not available")
        store: BlockStore = PostgreSQLBlockStore(pg_pool, connections=pg_connections)
        return store
    if isinstance(config, S3BlockStoreConfig):
        # Not at the top: botocore costs ~0.25 s of start-up, paid only by S3 deployments.
        from parsec.blockstore.s3 import S3BlockStore

        return S3BlockStore(config, reactor=reactor, timeout=timeout)
    if isinstance(config, SwiftBlockStoreConfig):
        return SwiftBlockStore(config, reactor=reactor, timeout=timeout)
    raise TypeError(f"unknown blockstore config {type(config).__name__}")


def build_blockstore(
    config: BlockStoreConfig,
    *,
    reactor: Any = None,
    pg_pool: PostgreSQLPool | None = None,
    timeout: float = 30.0,
    pg_connections: int = DEFAULT.db_block_connections,
) -> BlockStore:
    """A new, not yet started, store: call `await store.start()` then, at shutdown, `stop()`.

    `timeout` bounds every S3/Swift request (seconds); `pg_connections` the connections of a
    POSTGRESQL store's own pool (each POSTGRESQL node of a RAID has its own). Raises BlockStoreUnavailableError, or
    ValueError for an invalid RAID (e.g. RAID5 with fewer than 3 nodes).
    """
    if isinstance(config, RaidBlockStoreConfig):
        raid_classes: dict[str, type[RAID0BlockStore | RAID1BlockStore | RAID5BlockStore]] = {
            "RAID0": RAID0BlockStore,
            "RAID1": RAID1BlockStore,
            "RAID5": RAID5BlockStore,
        }
        try:
            raid_class = raid_classes[config.type.upper()]
        except KeyError:
            raise ValueError(f"Invalid multi blockstore mode `{config.type}`") from None
        nodes = [_build_single(node, reactor, pg_pool, timeout, pg_connections) for node in config.nodes]
        return raid_class(nodes, partial_create_ok=config.partial_create_ok)
    return _build_single(config, reactor, pg_pool, timeout, pg_connections)


def blockstore_pools(store: BlockStore) -> list[BinaryPool]:
    """The database pools of a store's POSTGRESQL nodes (for the metrics)."""
    if isinstance(store, PostgreSQLBlockStore):
        return [store.pool]
    if isinstance(store, (RAID0BlockStore, RAID1BlockStore, RAID5BlockStore)):
        return [pool for node in store.nodes for pool in blockstore_pools(node)]
    return []
