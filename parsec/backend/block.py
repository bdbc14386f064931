"""Block commands (docs/protocol/commands.md §11): encrypted file chunks, bytes in the blockstore.

block_create runs in three steps so that nothing is held while the blockstore works (a
database connection held across the write is what deadlocks the reference):

1. claim the block id, checking the metadata rules (`BlockStorage.claim_create`): of two
   racing creations of one id only one gets the claim, the other is refused before writing
   anything (`timeout` while the claim stands, as for an unavailable store: the client tries
   again later; `already_exists` once the block is recorded), so every `ok` is given on the
   bytes its own writer sent;
2. write the bytes;
3. record the metadata, re-checking role and maintenance in the recording statement: a
   writer who lost its role or met a maintenance start meanwhile gets `not_allowed` /
   `in_maintenance` and nothing is recorded.

Steps 2-3 run to the end even when the connection goes away meanwhile (its cancellation is
not passed on): a write cut short could land after the claim ended and overwrite the bytes of
the next claimant. A failed write keeps its claim until it expires (the `block_create_claim`
limit): its bytes might still land; the same device may claim the id again at once.

A blockstore in the metadata's own database (`MetadataBlockStore`: POSTGRESQL) does all three
steps in one statement, one commit, the transaction standing for the claim; and a read checks
the rules and returns the bytes in one statement. Nothing is held between requests either way.

A read of a block whose bytes are in the process's `BlockCache` (every blockstore but the
memory one; see parsec.backend.block_cache) checks the rules with the storage's `check_read`, one
statement, and answers with the bytes kept: the blockstore is not asked.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any
from uuid import UUID

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from parsec import limits as limits_module
from parsec.backend.block_cache import BlockCache
from parsec.backend.command import AuthenticatedContext, Reply, Resumed, api, error_reply, ok, status
from parsec.backend.storage import (
    AlreadyExistsError,
    BlockClaimedError,
    BlockNotFoundError,
    BlockStorage,
    RealmNotFoundError,
    StorageError,
)
from parsec.blockstore.base import BlockStoreError, MetadataBlockStore, in_process

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

_log = Logger()

# Legacy name of the status for any blockstore failure (docs/protocol/storage.md §2).
BLOCKSTORE_FAILURE = "timeout"


def _create_refused(exc: StorageError) -> Reply:
    """The reply to a block creation the storage refused (at its claim, its record, or the
    one statement of a `MetadataBlockStore`)."""
    if isinstance(exc, RealmNotFoundError):
        return status("not_found")
    if isinstance(exc, AlreadyExistsError):
        return status("already_exists")
    if isinstance(exc, BlockClaimedError):
        return status(BLOCKSTORE_FAILURE)
    return error_reply(exc)


def _not_cancelled_by(work: defer.Deferred[Reply]) -> defer.Deferred[Reply]:
    """A Deferred with the result of `work` whose cancellation leaves `work`
    running (its late result, or failure, is then dropped: the failure is logged)."""
    abandoned = False

    def cancel(_: defer.Deferred[Reply]) -> None:
        nonlocal abandoned
        abandoned = True

    outer: defer.Deferred[Reply] = defer.Deferred(cancel)

    def forward(result: Reply | Failure) -> None:
        if abandoned:
            if isinstance(result, Failure):
                if isinstance(result.value, ConnectionError):
                    _log.warn("Block creation failed after its client left: {error}", error=result.getErrorMessage())
                else:
                    _log.failure("Block creation failed after its client left", failure=result)
            return
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)

    work.addBoth(forward)
    return outer


class BlockComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app
        self._store_seen: object = None
        self._metadata_store: MetadataBlockStore | None = None
        capacity = app.config.limits.block_cache_bytes
        # The bytes read from a blockstore outside the process (None: no cache, or the
        # memory blockstore). One per component, hence per server process.
        self._cache_kept: BlockCache | None = BlockCache(capacity) if capacity > 0 else None
        self._cache: BlockCache | None = None

    def _in_metadata_database(self) -> MetadataBlockStore | None:
        """The blockstore, if it is a `MetadataBlockStore`. Decided once per store object: an
        isinstance() of a runtime-checkable Protocol costs 10 us (timeit, the memory store),
        an eighth of a memory `block_create`. Whether reads go through the cache is decided
        at the same time."""
        store = self._app.blockstore
        if store is not self._store_seen:
            self._store_seen = store
            self._metadata_store = store if isinstance(store, MetadataBlockStore) else None
            self._cache = None if in_process(store) else self._cache_kept
        return self._metadata_store

    @property
    def cache(self) -> BlockCache | None:
        """The cache the reads of the current blockstore go through (for parsec.metrics)."""
        self._in_metadata_database()
        return self._cache

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
        block_id, realm_id = req["block_id"], req["realm_id"]
        store = self._in_metadata_database()
        if store is not None:
            # One statement: nothing to shield but the statement itself, which, cut short,
            # would cost the database connection (a cancelled query closes it).
            return await _not_cancelled_by(defer.ensureDeferred(self._create_recorded(store, ctx, req)))
        try:
            claim = await self._storage.claim_create(
                organization_id,
                ctx.device_id,
                realm_id,
                block_id,
                self._app.now(),
                self._app.config.limits.block_create_claim,
            )
        except StorageError as exc:
            return _create_refused(exc)
        # The write is stepped here once: when nothing waits (the memory blockstore and
        # storage) it is already done, with no cancellation to shield it from and no driver
        # (Twisted's, `ensureDeferred`, was about 4 % of a 4 KiB `block_create` on memory:
        # benchmarks/server_bench.py, block_create_4k). Otherwise the rest runs on a driver of
        # its own, shielded: its steps in a context of their own, as Twisted would run them.
        coro = self._write_and_record(ctx, req, claim)
        context = contextvars.copy_context()
        try:
            awaited = context.run(coro.send, None)
        except StopIteration as done:
            reply: Reply = done.value
            return reply
        return await _not_cancelled_by(Resumed(coro, context, awaited).deferred)

    async def _create_recorded(self, store: MetadataBlockStore, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        block_id = req["block_id"]
        try:
            await store.create_recorded(
                ctx.organization_id,
                ctx.device_id,
                req["realm_id"],
                block_id,
                req["block"],
                self._app.now(),
                self._app.config.limits.block_create_claim,
            )
        except StorageError as exc:
            return _create_refused(exc)
        except Exception as exc:
            return self._blockstore_failure("create", ctx, block_id, exc)
        return ok()

    async def _write_and_record(self, ctx: AuthenticatedContext, req: dict[str, Any], claim: UUID) -> Reply:
        organization_id = ctx.organization_id
        block_id, realm_id, block = req["block_id"], req["realm_id"], req["block"]
        try:
            await self._app.blockstore.create(organization_id, block_id, block)
        except Exception as exc:
            return self._blockstore_failure("create", ctx, block_id, exc)
        try:
            await self._storage.record_create(
                organization_id, ctx.device_id, realm_id, block_id, len(block), self._app.now(), claim
            )
        except BlockClaimedError:
            limits_module.hit("block_create_claim")  # the write outlasted its claim
            return status(BLOCKSTORE_FAILURE)
        except StorageError as exc:
            return _create_refused(exc)
        return ok()

    @api("block_read")
    async def api_block_read(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        block_id = req["block_id"]
        store = self._in_metadata_database()
        cache = self._cache
        kept = None if cache is None else cache.get(ctx.organization_id, block_id)
        if kept is None and store is not None:
            # The rules and the bytes in one statement.
            try:
                block = await store.read_checked(ctx.organization_id, ctx.user_id, block_id)
            except BlockNotFoundError:
                return status("not_found")
            except StorageError as exc:
                return error_reply(exc)
            except defer.CancelledError:
                raise
            except Exception as exc:
                return self._blockstore_failure("read", ctx, block_id, exc)
        else:
            try:
                await self._storage.check_read(ctx.organization_id, ctx.user_id, block_id)
            except BlockNotFoundError:
                return status("not_found")
            except StorageError as exc:
                return error_reply(exc)
            if kept is not None:
                return ok(block=kept)
            try:
                block = await self._app.blockstore.read(ctx.organization_id, block_id)
            except defer.CancelledError:
                raise
            except Exception as exc:
                return self._blockstore_failure("read", ctx, block_id, exc)
        if cache is not None:
            cache.put(ctx.organization_id, block_id, block)
        return ok(block=block)
