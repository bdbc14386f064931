"""The blockstore interface: `(organization_id, block_id) -> bytes`, nothing more.

Uniqueness and metadata live in the database layer, which checks "already exists" before
calling `create` and records the block after it succeeded; hence `create` may overwrite (the
same id always carries the same bytes). Every storage fault is a `BlockStoreError`, which the
command layer turns into the wire status `timeout` (a read of a block whose metadata exists is
never `not_found`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from twisted.logger import Logger

_log = Logger(namespace="parsec.blockstore")


class BlockStoreError(Exception):
    """A store could not serve the request; the message says which store and why (one line)."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"{store}: {reason}")
        self.store = store
        self.reason = reason


@runtime_checkable
class BlockStore(Protocol):
    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        """Return the block's bytes, or raise BlockStoreError (missing block included)."""
        ...

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        """Store the block (idempotent, may overwrite), or raise BlockStoreError."""
        ...

    async def start(self) -> None:
        """Start-up checks (bucket/container exists, credentials work); raise BlockStoreError."""
        ...

    async def stop(self) -> None:
        """Release resources (connection pools). Idempotent."""
        ...

    async def check(self) -> None:
        """Readiness probe (`GET /ready`): return once the store answers; raise BlockStoreError.

        Cheap (one small request at most) and without side effects; the caller bounds it in time.
        """
        ...


def in_process(store: object) -> bool:
    """Whether `store` keeps its blocks in the server process's memory (the MOCKED store,
    whose class says `in_process = True`; parsec.metrics' wrapper passes the attribute on).
    Such a store needs no cache of its bytes."""
    return bool(getattr(store, "in_process", False))


@runtime_checkable
class MetadataBlockStore(Protocol):
    """A blockstore in the block metadata's own database (POSTGRESQL on the PostgreSQL storage):
    the command layer then creates and reads a block in one statement each, rules included,
    instead of the metadata storage's calls around `create`/`read` (see parsec.backend.block).

    Besides BlockStoreError, both raise the metadata storage's rule errors
    (parsec.backend.storage): those of `BlockStorage.claim_create` for `create_recorded`, those
    of `BlockStorage.check_read` for `read_checked`."""

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
        """Check the rules, store the bytes and record the block, all or nothing."""
        ...

    async def read_checked(self, organization_id: str, user_id: str, block_id: uuid.UUID) -> bytes:
        """Check the rules of a read, then return the block's bytes."""
        ...


def object_key(organization_id: str, block_id: uuid.UUID) -> str:
    """Object name used by S3 and Swift: `<organization_id>/<uuid 8-4-4-4-12 lowercase>`."""
    return f"{organization_id}/{block_id}"


_FAILURE_FORMATS = {
    "read": "Block read error in {store}: {reason} (organization_id={organization_id}, block_id={block_id})",
    "create": "Block create error in {store}: {reason} (organization_id={organization_id}, block_id={block_id})",
}


def log_block_error(
    operation: Literal["read", "create"], error: BlockStoreError, organization_id: str, block_id: uuid.UUID
) -> None:
    """Warn about a failed block operation: which store, why, and which block (never credentials)."""
    _log.warn(
        _FAILURE_FORMATS[operation],
        store=error.store,
        reason=error.reason,
        organization_id=organization_id,
        block_id=str(block_id),
    )
