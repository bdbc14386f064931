"""Realm commands (docs/protocol/commands.md §9) and the storage-error -> reply mapping shared with the vlob
and block commands.

Certificates and timestamps are checked here; the storage then applies the realm rules
(`parsec.backend.realm_rules`), writes atomically and publishes the events of the write with it,
in the order docs/protocol/events.md gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parsec.api import certificates as certs
from parsec.api.ballpark import timestamp_in_ballpark
from parsec.backend.command import (
    AuthenticatedContext,
    Reply,
    api,
    bad_timestamp,
    certificate_error_reply,
    error_reply,
    ok,
    status,
)
from parsec.backend.message import message_bounds
from parsec.backend.models import RealmGrant
from parsec.backend.storage import (
    AlreadyExistsError,
    IncompatibleProfileError,
    RealmStorage,
    StorageError,
    UserNotFoundError,
)

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

OUTSIDER_CANNOT_SHARE = "Outsider user cannot share realm"
INCOMPATIBLE_PROFILE = "User with OUTSIDER profile cannot be MANAGER or OWNER"

def _grant(cert: certs.RealmRoleCertificate, raw: bytes) -> RealmGrant:
    return RealmGrant(
        realm_id=cert.realm_id,
        user_id=cert.user_id,
        role=cert.role,
        certificate=raw,
        granted_by=cert.author,
        granted_on=cert.timestamp,
    )


class RealmComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @property
    def _storage(self) -> RealmStorage:
        return self._app.storage.realm

    def _validate_role_certificate(
        self, ctx: AuthenticatedContext, req: dict[str, Any], *, initial: bool
    ) -> certs.RealmRoleCertificate | Reply:
        now = self._app.now()
        try:
            return certs.validate_realm_role(
                req["role_certificate"],
                author=ctx.device_id,
                author_verify_key=ctx.verify_key,
                now=now,
                initial=initial,
            )
        except certs.CertificateValidationError as exc:
            return certificate_error_reply(exc)

    # ---- creation and read-only commands -----------------------------------------------------

    @api("realm_create")
    async def api_realm_create(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        cert = self._validate_role_certificate(ctx, req, initial=True)
        if isinstance(cert, dict):
            return cert
        try:
            await self._storage.create(ctx.organization_id, _grant(cert, req["role_certificate"]))
        except AlreadyExistsError:
            return status("already_exists")
        return ok()

    @api("realm_status")
    async def api_realm_status(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        realm_id = req["realm_id"]
        try:
            realm = await self._storage.get_status(ctx.organization_id, ctx.user_id, realm_id)
        except StorageError as exc:
            return error_reply(exc, realm_id=realm_id)
        return ok(
            in_maintenance=realm.in_maintenance,
            maintenance_type=realm.maintenance_type,
            maintenance_started_on=realm.maintenance_started_on,
            maintenance_started_by=realm.maintenance_started_by,
            encryption_revision=realm.encryption_revision,
        )

    @api("realm_stats")
    async def api_realm_stats(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        realm_id = req["realm_id"]
        try:
            stats = await self._storage.get_stats(ctx.organization_id, ctx.user_id, realm_id)
        except StorageError as exc:
            return error_reply(exc, realm_id=realm_id)
        return ok(blocks_size=stats.blocks_size, vlobs_size=stats.vlobs_size)

    @api("realm_get_role_certificates")
    async def api_realm_get_role_certificates(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        realm_id = req["realm_id"]
        try:
            certificates = await self._storage.get_role_certificates(ctx.organization_id, ctx.user_id, realm_id)
        except StorageError as exc:
            return error_reply(exc, realm_id=realm_id)
        return ok(certificates=certificates)

    # ---- sharing -----------------------------------------------------------------------------

    @api("realm_update_roles", outsider_reason=OUTSIDER_CANNOT_SHARE)
    async def api_realm_update_roles(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        cert = self._validate_role_certificate(ctx, req, initial=False)
        if isinstance(cert, dict):
            return cert
        try:
            await self._storage.update_roles(
                ctx.organization_id,
                _grant(cert, req["role_certificate"]),
                req["recipient_message"],
                message_bounds(self._app.config),
            )
        except UserNotFoundError:
            return status("not_found", f"User `{cert.user_id}` doesn't exist")
        except IncompatibleProfileError:
            return status("incompatible_profile", INCOMPATIBLE_PROFILE)
        except StorageError as exc:
            # `user_revoked` is the API 3.1 status; this server sends it to every 2.x/3.x
            # client, as majors 2 and 3 are served identically (docs/protocol/handshake.md §5).
            return error_reply(exc, realm_id=cert.realm_id)
        return ok()

    # ---- re-encryption maintenance -----------------------------------------------------------

    @api("realm_start_reencryption_maintenance")
    async def api_realm_start_reencryption_maintenance(
        self, ctx: AuthenticatedContext, req: dict[str, Any]
    ) -> Reply:
        now = self._app.now()
        timestamp = req["timestamp"]
        if not timestamp_in_ballpark(timestamp, now):
            return bad_timestamp(timestamp, now)
        realm_id = req["realm_id"]
        encryption_revision = req["encryption_revision"]
        try:
            await self._storage.start_reencryption_maintenance(
                ctx.organization_id,
                ctx.device_id,
                realm_id,
                encryption_revision,
                req["per_participant_message"],
                timestamp,
                now,
                message_bounds(self._app.config),
            )
        except StorageError as exc:
            return error_reply(exc, realm_id=realm_id)
        return ok()

    @api("realm_finish_reencryption_maintenance")
    async def api_realm_finish_reencryption_maintenance(
        self, ctx: AuthenticatedContext, req: dict[str, Any]
    ) -> Reply:
        realm_id = req["realm_id"]
        encryption_revision = req["encryption_revision"]
        try:
            await self._storage.finish_reencryption_maintenance(
                ctx.organization_id, ctx.device_id, realm_id, encryption_revision
            )
        except StorageError as exc:
            return error_reply(exc, realm_id=realm_id)
        return ok()
