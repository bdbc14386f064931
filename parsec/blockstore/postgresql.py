"""POSTGRESQL blockstore: block bytes in the `block_data` table of the server's database.

Each operation is one statement on the shared pool (one round trip). The caller must not hold
a pool connection while calling it (see parsec.storage.postgresql.pool: that is the deadlock
of the reference's `block_create`); the pool raises PoolReentryError if it does.

The bytes being in the metadata's database, the store is a `MetadataBlockStore`: a creation
is one statement with its rules and its metadata, a read one with its rules
(parsec.storage.postgresql.block); `create` and `read` serve a RAID of which it is a node.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg2

from parsec.blockstore.base import BlockStoreError, log_block_error
from parsec.storage.postgresql.block import Base64Literal, BlockBytesMissingError, PgBlockStorage
from parsec.storage.postgresql.connection import DatabaseUnavailable, error_summary
from parsec.storage.postgresql.pool import PostgreSQLPool

_READ = "SELECT data FROM block_data WHERE organization_id = %s AND block_id = %s"
# Idempotent: a block id always carries the same bytes, the first copy stays.
# The bytes as base64 text (see parsec.storage.postgresql.block.Base64Literal).
_CREATE = (
    "INSERT INTO block_data (organization_id, block_id, data) VALUES (%s, %s, decode(%s, 'base64'))"
    " ON CONFLICT (organization_id, block_id) DO NOTHING"
)
# Start-up and readiness check: the table exists and the database answers (no row read).
_CHECK = "SELECT 1 FROM block_data LIMIT 0"


def _reason(exc: Exception) -> str:
    if isinstance(exc, DatabaseUnavailable):
        return str(exc)
    return f"database error: {error_summary(exc)}"


class PostgreSQLBlockStore:
    description = "POSTGRESQL"

    def __init__(self, pool: PostgreSQLPool) -> None:
        self._pool = pool
        self._metadata = PgBlockStorage(pool)

    def __repr__(self) -> str:
        return f"PostgreSQLBlockStore({self._pool.description})"

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        try:
            row = await self._pool.fetchrow_bytea_views(_READ, (organization_id, block_id))
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            error = BlockStoreError(self.description, _reason(exc))
            log_block_error("read", error, organization_id, block_id)
            raise error from None
        if row is None:
            error = BlockStoreError(self.description, "block not found")
            log_block_error("read", error, organization_id, block_id)
            raise error
        data: Any = row[0]
        return bytes(data)

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        try:
            await self._pool.execute(_CREATE, (organization_id, block_id, Base64Literal(block)))
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
            await self._metadata.create_with_data(
                organization_id, author, realm_id, block_id, block, created_on, claim_seconds
            )
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            error = BlockStoreError(self.description, _reason(exc))
            log_block_error("create", error, organization_id, block_id)
            raise error from None

    async def read_checked(self, organization_id: str, user_id: str, block_id: uuid.UUID) -> bytes:
        try:
            return await self._metadata.read_with_data(organization_id, user_id, block_id)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            error = BlockStoreError(self.description, _reason(exc))
        except BlockBytesMissingError:
            error = BlockStoreError(self.description, "block not found")
        log_block_error("read", error, organization_id, block_id)
        raise error from None

    async def start(self) -> None:
        """Check that the schema has the block table (the pool is started by its owner)."""
        try:
            await self._pool.execute(_CHECK)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            raise BlockStoreError(self.description, f"start-up check failed: {_reason(exc)}") from None

    async def check(self) -> None:
        try:
            await self._pool.execute(_CHECK)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            raise BlockStoreError(self.description, _reason(exc)) from None

    async def stop(self) -> None:
        """Nothing to release: the pool belongs to the PostgreSQL storage."""
