"""Users and devices (docs/protocol/commands.md §6)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from parsec.api import certificates as certs
from parsec.backend.command import AuthenticatedContext, Reply, api, certificate_error_reply, ok, status
from parsec.backend.models import Device, User
from parsec.backend.storage import (
    ActiveUsersLimitReachedError,
    AlreadyExistsError,
    AlreadyRevokedError,
    NotFoundError,
    UserStorage,
)

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

OUTSIDER_HUMAN_FIND = "Not allowed for user with OUTSIDER profile."


def user_from_certificates(
    validated: Any, req: dict[str, Any], certifier: str
) -> tuple[User, Device]:
    user_cert, device_cert = validated.user, validated.device
    user = User(
        user_id=user_cert.user_id,
        profile=user_cert.profile,
        human_handle=user_cert.human_handle,
        public_key=user_cert.public_key,
        user_certificate=req["user_certificate"],
        redacted_user_certificate=req["redacted_user_certificate"],
        user_certifier=certifier,
        created_on=user_cert.timestamp,
    )
    device = Device(
        device_id=device_cert.device_id,
        device_label=device_cert.device_label,
        verify_key=device_cert.verify_key,
        device_certificate=req["device_certificate"],
        redacted_device_certificate=req["redacted_device_certificate"],
        device_certifier=certifier,
        created_on=device_cert.timestamp,
    )
    return user, device


def user_already_exists_reply(exc: AlreadyExistsError) -> Reply:
    return status("already_exists", exc.reason or "")


class UserComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @property
    def _storage(self) -> UserStorage:
        return self._app.storage.user

    async def check_outsider_allowed(self, organization_id: str, profile: str) -> Reply | None:
        """docs/protocol/DECISIONS.md: `user_profile_outsider_allowed = false` is enforced."""
        if profile != "OUTSIDER":
            return None
        org = await self._app.storage.organization.get(organization_id)
        if not org.user_profile_outsider_allowed:
            return status("not_allowed", "Outsider profile is not allowed in this organization")
        return None

    @api("user_get")
    async def api_user_get(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        try:
            result = await self._storage.get_user_with_trustchain(ctx.organization_id, req["user_id"])
        except NotFoundError:
            return status("not_found")
        redacted = ctx.profile == "OUTSIDER"

        def user_cert(user: User) -> bytes:
            return user.redacted_user_certificate if redacted else user.user_certificate

        def device_cert(device: Device) -> bytes:
            return device.redacted_device_certificate if redacted else device.device_certificate

        return ok(
            user_certificate=user_cert(result.user),
            revoked_user_certificate=result.user.revoked_user_certificate,
            device_certificates=[device_cert(d) for d in result.devices],
            trustchain={
                "devices": [device_cert(d) for d in result.trustchain_devices],
                "users": [user_cert(u) for u in result.trustchain_users],
                "revoked_users": [
                    u.revoked_user_certificate
                    for u in result.trustchain_users
                    if u.revoked_user_certificate is not None
                ],
            },
        )

    async def new_user_from_request(
        self, ctx: AuthenticatedContext, req: dict[str, Any], now: datetime
    ) -> tuple[User, Device] | Reply:
        """The four certificates of a new user (user_create, pki_enrollment_accept), checked
        (docs/protocol/commands.md §6.1) and turned into records; or the error reply."""
        try:
            validated = certs.validate_new_user(
                author=ctx.device_id,
                author_verify_key=ctx.verify_key,
                user_certificate=req["user_certificate"],
                device_certificate=req["device_certificate"],
                redacted_user_certificate=req["redacted_user_certificate"],
                redacted_device_certificate=req["redacted_device_certificate"],
                now=now,
            )
        except certs.CertificateValidationError as exc:
            return certificate_error_reply(exc)
        user, device = user_from_certificates(validated, req, ctx.device_id)
        refused = await self.check_outsider_allowed(ctx.organization_id, user.profile)
        return refused if refused is not None else (user, device)

    @api("user_create", admin_only=True)
    async def api_user_create(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        now = self._app.now()
        checked = await self.new_user_from_request(ctx, req, now)
        if isinstance(checked, dict):
            return checked
        user, device = checked
        try:
            await self._storage.create_user(ctx.organization_id, user, device, now)
        except ActiveUsersLimitReachedError:
            return status("active_users_limit_reached")
        except AlreadyExistsError as exc:
            return user_already_exists_reply(exc)
        return ok()

    @api("device_create")
    async def api_device_create(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        now = self._app.now()
        try:
            validated = certs.validate_new_device(
                author=ctx.device_id,
                author_verify_key=ctx.verify_key,
                device_certificate=req["device_certificate"],
                redacted_device_certificate=req["redacted_device_certificate"],
                now=now,
            )
        except certs.CertificateValidationError as exc:
            return certificate_error_reply(exc)
        device_cert = validated.device
        device = Device(
            device_id=device_cert.device_id,
            device_label=device_cert.device_label,
            verify_key=device_cert.verify_key,
            device_certificate=req["device_certificate"],
            redacted_device_certificate=req["redacted_device_certificate"],
            device_certifier=ctx.device_id,
            created_on=device_cert.timestamp,
        )
        try:
            await self._storage.create_device(ctx.organization_id, device)
        except AlreadyExistsError as exc:
            return status("already_exists", exc.reason or f"Device `{device.device_id}` already exists")
        except NotFoundError:
            return status("bad_user_id", "Device must be handled by it own user.")
        return ok()

    @api("user_revoke", admin_only=True)
    async def api_user_revoke(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        now = self._app.now()
        try:
            revoked = certs.validate_revoked_user(
                req["revoked_user_certificate"],
                author=ctx.device_id,
                author_verify_key=ctx.verify_key,
                now=now,
            )
        except certs.CertificateValidationError as exc:
            return certificate_error_reply(exc)
        try:
            await self._storage.revoke_user(
                ctx.organization_id,
                revoked.user_id,
                req["revoked_user_certificate"],
                ctx.device_id,
                revoked.timestamp,
            )
        except NotFoundError:
            return status("not_found")
        except AlreadyRevokedError:
            return status("already_revoked", f"User `{revoked.user_id}` already revoked")
        return ok()

    @api("human_find", outsider_reason=OUTSIDER_HUMAN_FIND)
    async def api_human_find(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        results, total = await self._storage.find_humans(
            ctx.organization_id,
            req["query"] or None,
            req["omit_revoked"],
            req["omit_non_human"],
            req["page"],
            req["per_page"],
            self._app.now(),
        )
        return ok(
            results=[
                {
                    "user_id": r.user_id,
                    "human_handle": list(r.human_handle) if r.human_handle else None,
                    "revoked": r.revoked,
                }
                for r in results
            ],
            page=req["page"],
            per_page=req["per_page"],
            total=total,
        )
