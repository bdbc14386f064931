"""Realm commands (docs/protocol/commands.md §9) and the storage-error -> reply mapping shared with the vlob
and block commands.

Certificates and timestamps are checked here; the storage then applies the realm rules
(`parsec.backend.realm_rules`) and writes atomically; events are published here, after the
storage call succeeded, in the order docs/protocol/events.md gives.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from parsec.api import certificates as certs
from parsec.backend.bus import BackendEvent
from parsec.backend.command import (
    AuthenticatedContext,
    Reply,
    api,
    bad_timestamp,
    ok,
    require_greater_timestamp,
    status,
    timestamp_in_ballpark,
    uuid_hex,
)
from parsec.backend.message import MESSAGE_BOX_FULL, message_bounds
from parsec.backend.models import RealmGrant
from parsec.backend.storage import (
    AlreadyExistsError,
    AlreadyGrantedError,
    BadEncryptionRevisionError,
    BadVersionError,
    IncompatibleProfileError,
    InMaintenanceError,
    MaintenanceError,
    MessageBoxFullError,
    NotAllowedError,
    NotInMaintenanceError,
    ParticipantsMismatchError,
    RealmNotFoundError,
    RequireGreaterTimestampError,
    StorageError,
    UserNotFoundError,
    UserRevokedError,
    VlobNotFoundError,
)

OUTSIDER_CANNOT_SHARE = "Outsider user cannot share realm"
INCOMPATIBLE_PROFILE = "User with OUTSIDER profile cannot be MANAGER or OWNER"
PARTICIPANTS_MISMATCH = "Realm participants and message recipients mismatch"
REENCRYPTION_NOT_OVER = "Reencryption operations are not over"

# Errors whose reply is the bare status, whatever the command.
_BARE_STATUS: dict[type[StorageError], str] = {
    NotAllowedError: "not_allowed",
    InMaintenanceError: "in_maintenance",
    BadEncryptionRevisionError: "bad_encryption_revision",
    BadVersionError: "bad_version",
    UserRevokedError: "user_revoked",
    AlreadyGrantedError: "already_granted",
}


def realm_not_found(realm_id: UUID) -> Reply:
    return status("not_found", f"Realm `{uuid_hex(realm_id)}` doesn't exist")


def vlob_not_found(vlob_id: UUID) -> Reply:
    return status("not_found", f"Vlob `{uuid_hex(vlob_id)}` doesn't exist")


def not_in_maintenance(realm_id: UUID) -> Reply:
    return status("not_in_maintenance", f"Realm `{uuid_hex(realm_id)}` not under maintenance")


def error_reply(exc: StorageError, *, realm_id: UUID | None = None, vlob_id: UUID | None = None) -> Reply:
    """The usual reply for a storage rule violation. Commands handle their quirks (e.g.
    `not_allowed` for an unknown realm in vlob_create) before calling this. An error the
    command cannot produce is re-raised (a bug, logged by the transport)."""
    if isinstance(exc, RequireGreaterTimestampError):
        return require_greater_timestamp(exc.strictly_greater_than)
    if isinstance(exc, RealmNotFoundError) and realm_id is not None:
        return realm_not_found(realm_id)
    if isinstance(exc, VlobNotFoundError) and vlob_id is not None:
        return vlob_not_found(vlob_id)
    if isinstance(exc, NotInMaintenanceError) and realm_id is not None:
        return not_in_maintenance(realm_id)
    if isinstance(exc, MaintenanceError):
        return status("maintenance_error", REENCRYPTION_NOT_OVER)
    if isinstance(exc, ParticipantsMismatchError):
        return status("participants_mismatch", PARTICIPANTS_MISMATCH)
    if isinstance(exc, MessageBoxFullError):
        # The real client shows `not_allowed` as an error (sharing / re-encryption refused)
        # instead of retrying (docs/protocol/DECISIONS.md).
        return status("not_allowed", MESSAGE_BOX_FULL)
    name = _BARE_STATUS.get(type(exc))
    if name is None:
        raise exc
    return status(name)


def certificate_error_reply(exc: certs.CertificateValidationError, now: datetime) -> Reply:
    if exc.status == certs.BAD_TIMESTAMP:
        assert exc.client_timestamp is not None
        return bad_timestamp(exc.client_timestamp, exc.backend_timestamp or now)
    return status(exc.status, exc.reason)


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
    def __init__(self, app: Any) -> None:
        self._app = app

    @property
    def _storage(self) -> Any:
        return self._app.storage.realm

    def _publish(self, ctx: AuthenticatedContext, name: str, **data: Any) -> None:
        self._app.bus.publish(BackendEvent(name, ctx.organization_id, {"author": ctx.device_id, **data}))

    def _publish_message(self, ctx: AuthenticatedContext, recipient: str, index: int) -> None:
        self._publish(ctx, "message.received", recipient=recipient, index=index)

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
            return certificate_error_reply(exc, now)

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
        # No author filter for this event: the creating device hears it too.
        self._publish(ctx, "realm.roles_updated", realm_id=cert.realm_id, user=cert.user_id, role=cert.role)
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
            index = await self._storage.update_roles(
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
        self._publish(ctx, "realm.roles_updated", realm_id=cert.realm_id, user=cert.user_id, role=cert.role)
        if index is not None:
            self._publish_message(ctx, cert.user_id, index)
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
            messages = await self._storage.start_reencryption_maintenance(
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
        self._publish(ctx, "realm.maintenance_started", realm_id=realm_id, encryption_revision=encryption_revision)
        for recipient, index in messages:
            self._publish_message(ctx, recipient, index)
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
        self._publish(ctx, "realm.maintenance_finished", realm_id=realm_id, encryption_revision=encryption_revision)
        return ok()
