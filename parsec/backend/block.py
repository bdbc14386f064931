"""Block commands (docs/protocol/commands.md §11): encrypted file chunks, bytes in the blockstore.

block_create runs in three steps so that nothing is held while the blockstore works (a
database connection held across the write is what deadlocks the reference): check the
metadata rules, write the bytes, then record the metadata. Two concurrent creations of the
same id may both write (blockstore writes are idempotent by contract); only one records the
metadata, the other gets `already_exists`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from twisted.internet import defer
from twisted.logger import Logger

from parsec.backend.command import AuthenticatedContext, Reply, api, error_reply, ok, status
from parsec.backend.storage import (
    AlreadyExistsError,
    BlockNotFoundError,
    BlockStorage,
    RealmNotFoundError,
    StorageError,
)
from parsec.blockstore.base import BlockStoreError

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

_log = Logger()

# Legacy name of the status for any blockstore failure (docs/protocol/storage.md §2).
BLOCKSTORE_FAILURE = "timeout"


class BlockComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @property
    def _storage(self) -> BlockStorage:
        return self._app.storage.block

    def _blockstore_failure(self, operation: str, ctx: AuthenticatedContext, block_id: UUID, exc: Exception) -> Reply:
        if isinstance(exc, BlockStoreError):
            _log.warn(
                "Block {operation} error (organization_id={organization_id}, block_id={block_id}): {error}",
                operation=operation,
                organization_id=ctx.organization_id,
                block_id=str(block_id),
                error=str(exc),
            )
        else:
            # Not a storage fault but a bug in a blockstore: keep the traceback.
            _log.failure(
                "Block {operation} error (organization_id={organization_id}, block_id={block_id})",
                operation=operation,
                organization_id=ctx.organization_id,
                block_id=str(block_id),
            )
        return status(BLOCKSTORE_FAILURE)

    @api("block_create")
    async def api_block_create(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        organization_id = ctx.organization_id
        block_id, realm_id, block = req["block_id"], req["realm_id"], req["block"]
        try:
            await self._storage.check_create(organization_id, ctx.device_id, realm_id, block_id)
        except RealmNotFoundError:
            return status("not_found")
        except AlreadyExistsError:
            return status("already_exists")
        except StorageError as exc:
            return error_reply(exc)
        try:
            await self._app.blockstore.create(organization_id, block_id, block)
        except defer.CancelledError:
            raise  # the connection went away: nothing to reply, nothing to log
        except Exception as exc:
            return self._blockstore_failure("create", ctx, block_id, exc)
        try:
            await self._storage.record_create(
                organization_id, ctx.device_id, realm_id, block_id, len(block), self._app.now()
            )
        except RealmNotFoundError:
            return status("not_found")
        except AlreadyExistsError:
            return status("already_exists")
        return ok()

    @api("block_read")
    async def api_block_read(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        block_id = req["block_id"]
        try:
            await self._storage.check_read(ctx.organization_id, ctx.user_id, block_id)
        except BlockNotFoundError:
            return status("not_found")
        except StorageError as exc:
            return error_reply(exc)
        try:
            block = await self._app.blockstore.read(ctx.organization_id, block_id)
        except defer.CancelledError:
            raise
        except Exception as exc:
            return self._blockstore_failure("read", ctx, block_id, exc)
        return ok(block=block)
