"""Organizations: administration, bootstrap, stats and config (docs/protocol/admin-api.md, docs/protocol/commands.md §5)."""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from parsec.api import certificates as certs
from parsec.backend.command import (
    ANONYMOUS,
    APIV1_ANONYMOUS,
    AnonymousContext,
    AuthenticatedContext,
    Reply,
    api,
    certificate_error_reply,
    not_admin,
    ok,
    status,
)
from parsec.backend.models import Device, Organization, OrganizationStats, User
from parsec.backend.storage import (
    UNSET,
    ActiveUsersLimitReachedError,
    AlreadyBootstrappedError,
    AlreadyExistsError,
    NotFoundError,
    OrganizationStorage,
    Unset,
)

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

_log = Logger()


class OrganizationComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @property
    def _storage(self) -> OrganizationStorage:
        return self._app.storage.organization

    # ---- administration ------------------------------------------------------------------

    async def create(
        self,
        organization_id: str,
        *,
        active_users_limit: int | None = None,
        use_default_limit: bool = True,
        user_profile_outsider_allowed: bool | None = None,
        bootstrap_token: str | None = None,
    ) -> str:
        config = self._app.config
        if use_default_limit:
            active_users_limit = config.organization_initial_active_users_limit
        if user_profile_outsider_allowed is None:
            user_profile_outsider_allowed = config.organization_initial_user_profile_outsider_allowed
        token = secrets.token_hex(32) if bootstrap_token is None else bootstrap_token
        await self._storage.create(
            organization_id,
            token,
            active_users_limit,
            user_profile_outsider_allowed,
            self._app.now(),
        )
        return token

    async def spontaneous_create(self, organization_id: str) -> Organization:
        config = self._app.config
        return await self._storage.create_if_missing(
            organization_id,
            "",
            self._app.now(),
            config.organization_initial_active_users_limit,
            config.organization_initial_user_profile_outsider_allowed,
        )

    async def update(
        self,
        organization_id: str,
        *,
        is_expired: bool | Unset = UNSET,
        user_profile_outsider_allowed: bool | Unset = UNSET,
        active_users_limit: int | None | Unset = UNSET,
    ) -> None:
        """Raises NotFoundError. Setting `is_expired` to true publishes `organization.expired`
        (the storage does, with the write)."""
        await self._storage.update(
            organization_id,
            is_expired=is_expired,
            user_profile_outsider_allowed=user_profile_outsider_allowed,
            active_users_limit=active_users_limit,
        )

    async def get(self, organization_id: str) -> Organization:
        """Raises NotFoundError."""
        return await self._storage.get(organization_id)

    async def stats(self, organization_id: str) -> OrganizationStats:
        """Raises NotFoundError."""
        return await self._storage.stats(organization_id, self._app.now())

    # ---- commands ------------------------------------------------------------------------

    @api("organization_stats")
    async def api_organization_stats(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        if ctx.profile != "ADMIN":
            return not_admin(ctx)
        try:
            stats = await self._storage.stats(ctx.organization_id, self._app.now())
        except NotFoundError:
            return status("not_found")
        return ok(
            data_size=stats.data_size,
            metadata_size=stats.metadata_size,
            realms=stats.realms,
            users=stats.users,
            active_users=stats.active_users,
            users_per_profile_detail=[
                {"profile": profile, "active": active, "revoked": revoked}
                for profile, active, revoked in stats.users_per_profile_detail
            ],
        )

    @api("organization_config")
    async def api_organization_config(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        try:
            org = await self._storage.get(ctx.organization_id)
        except NotFoundError:
            return status("not_found")
        return ok(
            user_profile_outsider_allowed=org.user_profile_outsider_allowed,
            active_users_limit=org.active_users_limit,
        )

    @api("organization_bootstrap", kinds=(ANONYMOUS, APIV1_ANONYMOUS))
    async def api_organization_bootstrap(self, ctx: AnonymousContext, req: dict[str, Any]) -> Reply:
        # Cheap checks before any certificate is verified or decoded (docs/protocol/DECISIONS.md):
        # steps 14-16 of docs/protocol/commands.md §5.1 first; storage repeats them atomically.
        try:
            org = await self._storage.get(ctx.organization_id)
        except NotFoundError:
            return status("not_found")
        if org.is_bootstrapped:
            return status("already_bootstrapped")
        if not hmac.compare_digest(org.bootstrap_token.encode(), req["bootstrap_token"].encode()):
            return status("not_found")
        now = self._app.now()
        try:
            validated = certs.validate_bootstrap(
                root_verify_key=req["root_verify_key"],
                user_certificate=req["user_certificate"],
                device_certificate=req["device_certificate"],
                redacted_user_certificate=req.get("redacted_user_certificate"),
                redacted_device_certificate=req.get("redacted_device_certificate"),
                now=now,
            )
        except certs.CertificateValidationError as exc:
            return certificate_error_reply(exc)
        user_cert, device_cert = validated.user, validated.device
        redacted_user = validated.redacted_user_certificate
        redacted_device = validated.redacted_device_certificate
        user = User(
            user_id=user_cert.user_id,
            profile=user_cert.profile,
            human_handle=user_cert.human_handle,
            public_key=user_cert.public_key,
            user_certificate=req["user_certificate"],
            redacted_user_certificate=redacted_user,
            user_certifier=None,
            created_on=user_cert.timestamp,
        )
        device = Device(
            device_id=device_cert.device_id,
            device_label=device_cert.device_label,
            verify_key=device_cert.verify_key,
            device_certificate=req["device_certificate"],
            redacted_device_certificate=redacted_device,
            device_certifier=None,
            created_on=device_cert.timestamp,
        )
        try:
            await self._storage.bootstrap(
                ctx.organization_id,
                req["bootstrap_token"],
                req["root_verify_key"],
                user,
                device,
                now,
            )
        except NotFoundError:
            return status("not_found")
        except AlreadyBootstrappedError:
            return status("already_bootstrapped")
        except ActiveUsersLimitReachedError:
            return status("active_users_limit_reached")
        except AlreadyExistsError:
            return status("already_bootstrapped")
        if self._app.webhook is not None:
            await self._app.webhook(
                {
                    "organization_id": ctx.organization_id,
                    "device_id": device.device_id,
                    "device_label": device.device_label,
                    "human_email": user.human_handle[0] if user.human_handle else None,
                    "human_label": user.human_handle[1] if user.human_handle else None,
                }
            )
        return ok()
