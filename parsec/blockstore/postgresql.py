"""POSTGRESQL blockstore: block bytes in the `block_data` table of the server's database.

Each operation is one statement (one round trip), on the store's own pool of binary sessions
(parsec.storage.postgresql.binary: the block travels as it is, not as text), opened on the
database of the metadata's pool, with its timeouts and bounds, up to `--db-block-connections`
sessions. A caller must not hold a pool connection while calling it (see
parsec.storage.postgresql.pool: that is the deadlock of the reference's `block_create`); the
pool raises PoolReentryError if it does.

The bytes being in the metadata's database, the store is a `MetadataBlockStore`: a creation
is one statement with its rules and its metadata, a read one with its rules
(parsec.storage.postgresql.block); `create` and `read` serve a RAID of which it is a node.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import psycopg2

from parsec import limits
from parsec.blockstore.base import BlockStoreError, log_block_error
from parsec.storage.postgresql.binary import BinaryPool
from parsec.storage.postgresql.block import BlockBytesMissingError, PgBlockBytes
from parsec.storage.postgresql.connection import DatabaseUnavailable, error_summary
from parsec.storage.postgresql.pool import PostgreSQLPool


def _reason(exc: Exception) -> str:
    if isinstance(exc, DatabaseUnavailable):
        return str(exc)
    return f"database error: {error_summary(exc)}"


class PostgreSQLBlockStore:
    description = "POSTGRESQL"

    def __init__(self, pool: PostgreSQLPool, *, connections: int = limits.DEFAULT.db_block_connections) -> None:
        """`pool`: the metadata's pool, whose database and settings the store's own takes."""
        self.pool = BinaryPool.like(pool, max_connections=max(connections, 1))
        self._bytes = PgBlockBytes(self.pool)

    def __repr__(self) -> str:
        return f"PostgreSQLBlockStore({self.pool.description})"

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        try:
            block = await self._bytes.read(organization_id, block_id)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            error = BlockStoreError(self.description, _reason(exc))
            log_block_error("read", error, organization_id, block_id)
            raise error from None
        if block is None:
            error = BlockStoreError(self.description, "block not found")
            log_block_error("read", error, organization_id, block_id)
            raise error
        return block

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        try:
            await self._bytes.create(organization_id, block_id, block)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            error = BlockStoreError(self.description, _reason(exc))
            log_block_error("create", error, organization_id, block_id)
            raise error from None

    async def create_recorded(
        self,
        organization_id: str,
        author: str,
        realm_id: uuid.UUID,
        block_id: uuid.UUID,
        block: bytes,
        created_on: datetime,
        claim_seconds: float,
    ) -> None:
        try:
            await self._bytes.create_with_data(
                organization_id, author, realm_id, block_id, block, created_on, claim_seconds
            )
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            error = BlockStoreError(self.description, _reason(exc))
            log_block_error("create", error, organization_id, block_id)
            raise error from None

    async def read_checked(self, organization_id: str, user_id: str, block_id: uuid.UUID) -> bytes:
        try:
            return await self._bytes.read_with_data(organization_id, user_id, block_id)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            error = BlockStoreError(self.description, _reason(exc))
        except BlockBytesMissingError:
            error = BlockStoreError(self.description, "block not found")
        log_block_error("read", error, organization_id, block_id)
        raise error from None

    async def start(self) -> None:
        """Open the store's pool (start-up retry policy of the metadata's) and check that the
        schema has the block table."""
        try:
            await self.pool.start()
            await self._bytes.check()
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            await self.pool.close()
            raise BlockStoreError(self.description, f"start-up check failed: {_reason(exc)}") from None

    async def check(self) -> None:
        try:
            await self._bytes.check()
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            raise BlockStoreError(self.description, _reason(exc)) from None

    async def stop(self) -> None:
        await self.pool.close()
