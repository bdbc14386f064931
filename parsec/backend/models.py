"""Domain records shared by the business rules and every storage implementation."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

HumanHandle = tuple[str, str]  # (email, label)


@attrs.frozen
class Organization:
    organization_id: str
    bootstrap_token: str = attrs.field(repr=False)
    root_verify_key: bytes | None = None
    is_expired: bool = False
    user_profile_outsider_allowed: bool = True
    active_users_limit: int | None = None
    created_on: datetime | None = None
    bootstrapped_on: datetime | None = None

    @property
    def is_bootstrapped(self) -> bool:
        return self.root_verify_key is not None


@attrs.frozen
class User:
    user_id: str
    profile: str
    user_certificate: bytes
    redacted_user_certificate: bytes
    user_certifier: str | None  # device id, None = organization root key
    created_on: datetime
    human_handle: HumanHandle | None = None
    public_key: bytes = b""
    revoked_on: datetime | None = None
    revoked_user_certificate: bytes | None = None
    revoked_user_certifier: str | None = None

    def is_revoked(self, now: datetime) -> bool:
        return self.revoked_on is not None and self.revoked_on <= now


@attrs.frozen
class Device:
    device_id: str
    verify_key: bytes
    device_certificate: bytes
    redacted_device_certificate: bytes
    device_certifier: str | None
    created_on: datetime
    device_label: str | None = None

    @property
    def user_id(self) -> str:
        return self.device_id.split("@", 1)[0]


@attrs.frozen
class AuthenticatedIdentity:
    """What the authenticated handshake needs, fetched in one storage call."""

    organization: Organization
    user: User
    device: Device


@attrs.frozen
class Trustchain:
    users: list[bytes]
    devices: list[bytes]
    revoked_users: list[bytes]


@attrs.frozen
class UserWithTrustchain:
    user: User
    devices: list[Device]
    trustchain_users: list[User]
    trustchain_devices: list[Device]


@attrs.frozen
class HumanFindResult:
    user_id: str
    human_handle: HumanHandle | None
    revoked: bool


@attrs.frozen
class OrganizationStats:
    data_size: int
    metadata_size: int
    realms: int
    users: int
    active_users: int
    users_per_profile_detail: list[tuple[str, int, int]]  # (profile, active, revoked)


@attrs.frozen
class Invitation:
    token: UUID
    type: str  # USER | DEVICE
    greeter_user_id: str
    greeter_human_handle: HumanHandle | None
    created_on: datetime
    claimer_email: str | None = None
    deleted_on: datetime | None = None
    deleted_reason: str | None = None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_on is not None


# ---- realms, vlobs, blocks, messages ------------------------------------------------------


@attrs.frozen
class RealmGrant:
    """One accepted realm role certificate (role None = access removed)."""

    realm_id: UUID
    user_id: str
    role: str | None
    certificate: bytes = attrs.field(repr=False)
    granted_by: str  # device id of the certificate's author
    granted_on: datetime  # the certificate's timestamp


@attrs.frozen
class RealmStatus:
    encryption_revision: int
    maintenance_type: str | None = None
    maintenance_started_on: datetime | None = None
    maintenance_started_by: str | None = None

    @property
    def in_maintenance(self) -> bool:
        return self.maintenance_type is not None


@attrs.frozen
class RealmStats:
    blocks_size: int
    vlobs_size: int


@attrs.frozen
class VlobWrite:
    """What a vlob creation/update wrote: the vlob's realm and the checkpoint it allocated."""

    realm_id: UUID
    checkpoint: int


@attrs.frozen
class VlobVersion:
    version: int
    blob: bytes = attrs.field(repr=False)
    author: str
    timestamp: datetime
    author_last_role_granted_on: datetime


@attrs.frozen
class VlobChanges:
    current_checkpoint: int
    changes: dict[UUID, int]  # vlob id -> latest version


@attrs.frozen
class ReencryptionBatchEntry:
    vlob_id: UUID
    version: int
    blob: bytes = attrs.field(repr=False)


@attrs.frozen
class Message:
    index: int  # 1-based position in the recipient's list (`count` on the wire)
    sender: str
    timestamp: datetime
    body: bytes = attrs.field(repr=False)
