"""Storage interfaces, one per domain, implemented in memory (`--db MOCKED`) and in PostgreSQL.

The business rules (parsec.backend.<domain>) live above these interfaces once.
A storage method does its checks and writes atomically (one transaction, one
round trip where the data allows) and reports rule violations by raising the
exceptions below; it never builds wire replies.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import attrs

from parsec.backend.models import (
    AuthenticatedIdentity,
    Device,
    HumanFindResult,
    Invitation,
    Organization,
    OrganizationStats,
    User,
    UserWithTrustchain,
)


class StorageError(Exception):
    """Base class of the rule violations storages report."""

    def __init__(self, reason: str | None = None, **data: Any) -> None:
        super().__init__(reason or type(self).__name__)
        self.reason = reason
        self.data = data


class NotFoundError(StorageError):
    pass


class AlreadyExistsError(StorageError):
    pass


class AlreadyBootstrappedError(StorageError):
    pass


class ActiveUsersLimitReachedError(StorageError):
    pass


class AlreadyRevokedError(StorageError):
    pass


class AlreadyDeletedError(StorageError):
    pass


class AlreadyMemberError(StorageError):
    pass


class UNSET_TYPE:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = UNSET_TYPE()


class OrganizationStorage(Protocol):
    async def create(
        self,
        organization_id: str,
        bootstrap_token: str,
        active_users_limit: int | None,
        user_profile_outsider_allowed: bool,
        created_on: datetime,
    ) -> None:
        """Create, or overwrite a non-bootstrapped organization (new token, config reset, not
        expired). Raises AlreadyExistsError if it exists and is bootstrapped."""

    async def create_if_missing(self, organization_id: str, bootstrap_token: str, created_on: datetime,
                                active_users_limit: int | None,
                                user_profile_outsider_allowed: bool) -> Organization:
        """Spontaneous bootstrap: create with the given token unless it exists; return it."""

    async def get(self, organization_id: str) -> Organization:
        """Raises NotFoundError."""

    async def update(
        self,
        organization_id: str,
        *,
        is_expired: bool = UNSET,
        user_profile_outsider_allowed: bool = UNSET,
        active_users_limit: int | None = UNSET,
    ) -> None:
        """Raises NotFoundError."""

    async def bootstrap(
        self,
        organization_id: str,
        bootstrap_token: str,
        root_verify_key: bytes,
        user: User,
        device: Device,
        bootstrapped_on: datetime,
    ) -> None:
        """Atomically: NotFoundError (unknown org), AlreadyBootstrappedError, NotFoundError
        (token mismatch), ActiveUsersLimitReachedError, then store the first user + device
        and the root verify key."""

    async def stats(self, organization_id: str, now: datetime) -> OrganizationStats:
        """Raises NotFoundError."""


class UserStorage(Protocol):
    async def get_authenticated_identity(self, organization_id: str, device_id: str) -> AuthenticatedIdentity:
        """Organization + user + device in one call. Raises NotFoundError."""

    async def create_user(self, organization_id: str, user: User, device: Device, now: datetime) -> None:
        """Raises ActiveUsersLimitReachedError, AlreadyExistsError(reason)."""

    async def create_device(self, organization_id: str, device: Device) -> None:
        """Raises AlreadyExistsError(reason), NotFoundError (user vanished)."""

    async def revoke_user(
        self,
        organization_id: str,
        user_id: str,
        revoked_user_certificate: bytes,
        revoked_user_certifier: str,
        revoked_on: datetime,
    ) -> None:
        """Raises NotFoundError, AlreadyRevokedError."""

    async def get_user(self, organization_id: str, user_id: str) -> User:
        """Raises NotFoundError."""

    async def get_user_with_trustchain(self, organization_id: str, user_id: str) -> UserWithTrustchain:
        """Raises NotFoundError."""

    async def find_humans(
        self,
        organization_id: str,
        query: str | None,
        omit_revoked: bool,
        omit_non_human: bool,
        page: int,
        per_page: int,
        now: datetime,
    ) -> tuple[list[HumanFindResult], int]:
        """Returns (page of results, total)."""

    async def is_email_used_by_active_user(self, organization_id: str, email: str, now: datetime) -> bool:
        ...


class InviteStorage(Protocol):
    async def info(self, organization_id: str, token: UUID) -> Invitation:
        """Any invitation of the organization, deleted or not. Raises NotFoundError."""


@attrs.define
class Storage:
    """Every domain storage of one backend (memory or PostgreSQL)."""

    organization: OrganizationStorage
    user: UserStorage
    invite: Any
    realm: Any
    vlob: Any
    block: Any
    message: Any
    pki: Any

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
