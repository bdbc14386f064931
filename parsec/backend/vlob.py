"""Vlob commands (docs/protocol/commands.md §10): versioned encrypted blobs and their re-encryption."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parsec.api.ballpark import timestamp_in_ballpark
from parsec.backend.command import (
    AuthenticatedContext,
    Reply,
    api,
    bad_timestamp,
    error_reply,
    ok,
    status,
)
from parsec.backend.models import ReencryptionBatchEntry
from parsec.backend.storage import AlreadyExistsError, RealmNotFoundError, StorageError, VlobStorage

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp


class VlobComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @property
    def _storage(self) -> VlobStorage:
        return self._app.storage.vlob

    @api("vlob_create")
    async def api_vlob_create(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        now = self._app.now()
        timestamp = req["timestamp"]
        if not timestamp_in_ballpark(timestamp, now):
            return bad_timestamp(timestamp, now)
        try:
            await self._storage.create(
                ctx.organization_id,
                ctx.device_id,
                req["realm_id"],
                req["encryption_revision"],
                req["vlob_id"],
                timestamp,
                req["blob"],
            )
        except RealmNotFoundError:
            # Reference behaviour: an unknown realm is `not_allowed` here, not `not_found`.
            return status("not_allowed")
        except AlreadyExistsError:
            return status("already_exists", "")
        except StorageError as exc:
            return error_reply(exc, realm_id=req["realm_id"])
        return ok()

    @api("vlob_read")
    async def api_vlob_read(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        try:
            found = await self._storage.read(
                ctx.organization_id,
                ctx.user_id,
                req["encryption_revision"],
                req["vlob_id"],
                req["version"],
                req["timestamp"],
            )
        except StorageError as exc:
            return error_reply(exc, vlob_id=req["vlob_id"])
        return ok(
            version=found.version,
            blob=found.blob,
            author=found.author,
            timestamp=found.timestamp,
            author_last_role_granted_on=found.author_last_role_granted_on,
        )

    @api("vlob_update")
    async def api_vlob_update(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        now = self._app.now()
        timestamp = req["timestamp"]
        if not timestamp_in_ballpark(timestamp, now):
            return bad_timestamp(timestamp, now)
        try:
            await self._storage.update(
                ctx.organization_id,
                ctx.device_id,
                req["encryption_revision"],
                req["vlob_id"],
                req["version"],
                timestamp,
                req["blob"],
            )
        except StorageError as exc:
            return error_reply(exc, vlob_id=req["vlob_id"])
        return ok()

    @api("vlob_poll_changes")
    async def api_vlob_poll_changes(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        try:
            changes = await self._storage.poll_changes(
                ctx.organization_id, ctx.user_id, req["realm_id"], req["last_checkpoint"]
            )
        except StorageError as exc:
            return error_reply(exc, realm_id=req["realm_id"])
        return ok(changes=changes.changes, current_checkpoint=changes.current_checkpoint)

    @api("vlob_list_versions")
    async def api_vlob_list_versions(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        try:
            versions = await self._storage.list_versions(ctx.organization_id, ctx.user_id, req["vlob_id"])
        except StorageError as exc:
            return error_reply(exc, vlob_id=req["vlob_id"])
        return ok(versions={version: [ts, author] for version, (ts, author) in versions.items()})

    @api("vlob_maintenance_get_reencryption_batch")
    async def api_vlob_maintenance_get_reencryption_batch(
        self, ctx: AuthenticatedContext, req: dict[str, Any]
    ) -> Reply:
        try:
            batch = await self._storage.get_reencryption_batch(
                ctx.organization_id, ctx.user_id, req["realm_id"], req["encryption_revision"], req["size"]
            )
        except StorageError as exc:
            return error_reply(exc, realm_id=req["realm_id"])
        return ok(batch=[{"vlob_id": e.vlob_id, "version": e.version, "blob": e.blob} for e in batch])

    @api("vlob_maintenance_save_reencryption_batch")
    async def api_vlob_maintenance_save_reencryption_batch(
        self, ctx: AuthenticatedContext, req: dict[str, Any]
    ) -> Reply:
        batch = [ReencryptionBatchEntry(e["vlob_id"], e["version"], e["blob"]) for e in req["batch"]]
        try:
            total, done = await self._storage.save_reencryption_batch(
                ctx.organization_id, ctx.user_id, req["realm_id"], req["encryption_revision"], batch
            )
        except StorageError as exc:
            return error_reply(exc, realm_id=req["realm_id"])
        return ok(total=total, done=done)
