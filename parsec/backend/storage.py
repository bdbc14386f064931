"""Storage interfaces, one per domain, implemented in memory (`--db MOCKED`) and in PostgreSQL.

The business rules (parsec.backend.<domain>) live above these interfaces once.
A storage method does its checks and writes atomically (one transaction, one
round trip where the data allows) and reports rule violations by raising the
exceptions below; it never builds wire replies.

A write publishes the events that describe it (docs/protocol/events.md §5, built by the
constructors of `parsec.backend.bus`) on the storage's event bus, atomically with the write:
they exist if and only if the write happened (PostgreSQL: NOTIFY inside the write's
transaction). Each method's docstring says which ("Publishes ...").
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import attrs

from parsec.api.ids import format_human_handle
from parsec.backend.conduit import ConduitListenCtx
from parsec.backend.models import (
    AuthenticatedIdentity,
    Device,
    HumanFindResult,
    HumanHandle,
    Invitation,
    Message,
    Organization,
    OrganizationStats,
    RealmGrant,
    RealmStats,
    RealmStatus,
    ReencryptionBatchEntry,
    User,
    UserWithTrustchain,
    VlobChanges,
    VlobVersion,
    VlobWrite,
)
from parsec.limits import DEFAULT as DEFAULT_LIMITS


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


def human_handle_taken_reason(handle: HumanHandle) -> str:
    """The reason of the AlreadyExistsError of a user creation whose human handle (e-mail) is
    held by a user not revoked (the reply's reason text)."""
    return f"Human handle `{format_human_handle(handle)}` already corresponds to a non-revoked user"


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


class UnstorableValueError(StorageError):
    """A request value this storage cannot hold (PostgreSQL text cannot contain the NUL
    character). The request is answered `bad_message`; `field` names the request field."""

    def __init__(self, field: str) -> None:
        super().__init__(field=field)
        self.field = field


# ---- realms, vlobs, blocks, messages ------------------------------------------------------
# The component chooses the wire reply (and its reason text) from the exception type alone,
# so storages raise the most specific class and never need a reason.


class RealmNotFoundError(NotFoundError):
    pass


class VlobNotFoundError(NotFoundError):
    pass


class MessageBoxFullError(StorageError):
    """A recipient has as many unread messages (or bytes of them) as `MessageBounds` allow."""


class BlockClaimedError(StorageError):
    """Another device is creating this block id (its claim has not expired)."""


class BlockNotFoundError(NotFoundError):
    pass


class UserNotFoundError(NotFoundError):
    pass


class NotAllowedError(StorageError):
    """The connected user's realm role does not allow the operation."""


class InMaintenanceError(StorageError):
    pass


class NotInMaintenanceError(StorageError):
    pass


class BadEncryptionRevisionError(StorageError):
    pass


class BadVersionError(StorageError):
    pass


class MaintenanceError(StorageError):
    """Re-encryption not over (some vlob versions of the previous revision not re-encrypted)."""


class ParticipantsMismatchError(StorageError):
    pass


class IncompatibleProfileError(StorageError):
    pass


class UserRevokedError(StorageError):
    pass


class AlreadyGrantedError(StorageError):
    pass


class RequireGreaterTimestampError(StorageError):
    """A causality rule failed: the client must retry with a timestamp strictly greater than
    `strictly_greater_than`."""

    def __init__(self, strictly_greater_than: datetime) -> None:
        super().__init__(strictly_greater_than=strictly_greater_than)
        self.strictly_greater_than = strictly_greater_than


# ---- PKI enrollments ------------------------------------------------------------------------


class EnrollmentIdAlreadyUsedError(StorageError):
    pass


class AlreadySubmittedError(StorageError):
    """The latest enrollment of the same X.509 certificate is still SUBMITTED (and the
    submission was not forced)."""

    def __init__(self, submitted_on: datetime) -> None:
        super().__init__(submitted_on=submitted_on)
        self.submitted_on = submitted_on


class AlreadyEnrolledError(StorageError):
    """The latest enrollment of the same X.509 certificate was accepted and the user it
    created is not revoked."""


class EmailAlreadyUsedError(StorageError):
    pass


class TooManyPendingEnrollmentsError(StorageError):
    pass


class NoLongerAvailableError(StorageError):
    """The enrollment is not SUBMITTED any more."""


class Unset(enum.Enum):
    """An optional argument that was not given (unlike None, which may be a value)."""

    UNSET = "UNSET"


UNSET = Unset.UNSET


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
        is_expired: bool | Unset = UNSET,
        user_profile_outsider_allowed: bool | Unset = UNSET,
        active_users_limit: int | None | Unset = UNSET,
    ) -> None:
        """Raises NotFoundError. Publishes `organization.expired` when `is_expired` is True."""

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
        """Raises ActiveUsersLimitReachedError, AlreadyExistsError(reason). Publishes
        `user.created`."""

    async def create_device(self, organization_id: str, device: Device) -> None:
        """Raises AlreadyExistsError(reason), NotFoundError (user vanished). Publishes
        `device.created`."""

    async def revoke_user(
        self,
        organization_id: str,
        user_id: str,
        revoked_user_certificate: bytes,
        revoked_user_certifier: str,
        revoked_on: datetime,
    ) -> None:
        """Raises NotFoundError, AlreadyRevokedError. Publishes `user.revoked` with `revoked_on`
        (every instance closes the user's connections then: it must not be lost)."""

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
    """Invitations and their conduit (docs/protocol/invitations.md). The conduit methods apply
    the state machine of `parsec.backend.conduit` to the invitation's slots atomically (memory:
    without yielding; PostgreSQL: on the row locked FOR UPDATE); waiting is the component's
    business, woken by the `invite.conduit_updated` events these methods publish."""

    async def info(self, organization_id: str, token: UUID) -> Invitation:
        """Any invitation of the organization, deleted or not. Raises NotFoundError."""

    async def new(
        self,
        organization_id: str,
        greeter_user_id: str,
        greeter_human_handle: HumanHandle | None,
        type: str,
        claimer_email: str | None,
        created_on: datetime,
    ) -> Invitation:
        """The pending (not deleted) invitation of this greeter, type and claimer e-mail if any
        (idempotent), else a new one with a fresh token. `greeter_human_handle` is the greeter
        user's own (what `info` and `list` give back may be read from the user). A USER invitation whose claimer e-mail
        belongs to a user not revoked at `created_on` raises AlreadyMemberError. Publishes
        `invite.status_changed` IDLE (created or reused)."""

    async def delete(
        self, organization_id: str, greeter_user_id: str, token: UUID, on: datetime, reason: str
    ) -> None:
        """Mark the greeter's invitation deleted. Raises NotFoundError (unknown, or another
        greeter's), AlreadyDeletedError. Publishes `invite.status_changed` DELETED."""

    async def list(self, organization_id: str, greeter_user_id: str) -> list[Invitation]:
        """The greeter's pending invitations, oldest first."""

    async def conduit_talk(
        self, organization_id: str, token: UUID, greeter_user_id: str | None, state: str, payload: bytes
    ) -> ConduitListenCtx:
        """`conduit.conduit_talk` on the invitation's slots (`greeter_user_id` None: the
        claimer). Raises NotFoundError (unknown, or another greeter's), AlreadyDeletedError,
        InvalidStateError. Publishes `invite.conduit_updated`."""

    async def conduit_listen(
        self, organization_id: str, token: UUID, greeter_user_id: str | None, ctx: ConduitListenCtx
    ) -> tuple[bytes | None, bool]:
        """`conduit.conduit_listen`: (the peer's payload or None while waiting, whether the
        conduit changed). Errors as `conduit_talk`. Publishes `invite.conduit_updated` when the
        conduit changed."""


# ---- realms, vlobs, blocks, messages ------------------------------------------------------
#
# Every method below is one atomic unit (one transaction, ideally one round trip): it reads the
# facts it needs, applies the rules of `parsec.backend.realm_rules` IN THE ORDER those helpers
# define (the first failing rule raises), then writes. `author` is always the connected device
# and `user_id` the connected user; the author's role is read inside the same unit. The events
# are published with the write (see the module doc).


@attrs.frozen
class MessageBounds:
    """Unread messages a user may have, and what one `message_get` reply may hold
    (parsec.limits: pending_messages, pending_message_bytes). A message is unread while it
    comes after the highest offset the user's devices gave `MessageStorage.get`."""

    count: int = DEFAULT_LIMITS.pending_messages
    size: int = DEFAULT_LIMITS.pending_message_bytes


DEFAULT_MESSAGE_BOUNDS = MessageBounds()


class RealmStorage(Protocol):
    async def create(self, organization_id: str, grant: RealmGrant) -> None:
        """New realm (encryption revision 1, no maintenance, checkpoint 0) whose first role is
        `grant` (the creator as OWNER). Raises AlreadyExistsError. Publishes
        `realm.roles_updated` (author = grant author)."""

    async def get_status(self, organization_id: str, user_id: str, realm_id: UUID) -> RealmStatus:
        """Raises RealmNotFoundError, NotAllowedError (no current role)."""

    async def get_stats(self, organization_id: str, user_id: str, realm_id: UUID) -> RealmStats:
        """Raises RealmNotFoundError, NotAllowedError (no current role)."""

    async def get_role_certificates(self, organization_id: str, user_id: str, realm_id: UUID) -> list[bytes]:
        """Every role certificate of the realm, oldest first (by certificate timestamp).
        Raises RealmNotFoundError, NotAllowedError (no current role)."""

    async def update_roles(
        self,
        organization_id: str,
        grant: RealmGrant,
        recipient_message: bytes | None,
        bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS,
    ) -> int | None:
        """`realm_rules.check_update_roles` then: store the grant, bump the author user's last
        role change, and append `recipient_message` (when non-empty) to the target's messages
        (sender = grant author, timestamp = grant timestamp). Returns the message index, or
        None when no message was stored. Raises UserNotFoundError, IncompatibleProfileError,
        UserRevokedError, RealmNotFoundError, InMaintenanceError, NotAllowedError,
        AlreadyGrantedError, RequireGreaterTimestampError, then MessageBoxFullError (the
        message would exceed the target's unread `bounds`: nothing is written). Publishes
        `realm.roles_updated`, then `message.received` when a message was stored (author =
        grant author)."""

    async def start_reencryption_maintenance(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        encryption_revision: int,
        per_participant_message: dict[str, bytes],
        timestamp: datetime,
        now: datetime,
        bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS,
    ) -> list[tuple[str, int]]:
        """`realm_rules.check_start_reencryption` then: bump the revision, enter REENCRYPTION
        maintenance (started by `author` on `timestamp`) and append one message per
        participant (sender = author, timestamp = `timestamp`). "Participants" are the users
        with a current role who are not revoked at `now`. Returns [(recipient, message index)]
        in `per_participant_message` order. Raises RealmNotFoundError, InMaintenanceError,
        BadEncryptionRevisionError, NotAllowedError, ParticipantsMismatchError, then
        MessageBoxFullError (a message would exceed its recipient's unread `bounds`: nothing
        is written). Publishes `realm.maintenance_started`, then one `message.received` per
        recipient in that order."""

    async def finish_reencryption_maintenance(
        self, organization_id: str, author: str, realm_id: UUID, encryption_revision: int
    ) -> None:
        """`realm_rules.check_finish_reencryption` then leave maintenance. Raises
        RealmNotFoundError, NotAllowedError, NotInMaintenanceError, BadEncryptionRevisionError,
        MaintenanceError. Publishes `realm.maintenance_finished`."""

    async def get_realms_for_user(self, organization_id: str, user_id: str) -> dict[UUID, str]:
        """realm id -> current (non-nil) role of the user."""


class VlobStorage(Protocol):
    async def create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        encryption_revision: int,
        vlob_id: UUID,
        timestamp: datetime,
        blob: bytes,
    ) -> VlobWrite:
        """`realm_rules.check_vlob_create` then store version 1, bump the realm checkpoint and
        the author user's last vlob write. Raises RealmNotFoundError, InMaintenanceError,
        BadEncryptionRevisionError, NotAllowedError, RequireGreaterTimestampError,
        AlreadyExistsError (vlob id used anywhere in the organization). Publishes
        `realm.vlobs_updated` (src_version 1, the checkpoint of the write)."""

    async def update(
        self,
        organization_id: str,
        author: str,
        encryption_revision: int,
        vlob_id: UUID,
        version: int,
        timestamp: datetime,
        blob: bytes,
    ) -> VlobWrite:
        """`realm_rules.check_vlob_update` then append the version (as `create`). Raises
        VlobNotFoundError, InMaintenanceError, BadEncryptionRevisionError, NotAllowedError,
        RequireGreaterTimestampError, BadVersionError. Publishes `realm.vlobs_updated`."""

    async def read(
        self,
        organization_id: str,
        user_id: str,
        encryption_revision: int,
        vlob_id: UUID,
        version: int | None,
        timestamp: datetime | None,
    ) -> VlobVersion:
        """`version` wins over `timestamp` (highest version at or before it); neither = latest.
        Raises VlobNotFoundError, InMaintenanceError, BadEncryptionRevisionError,
        NotAllowedError, BadVersionError."""

    async def poll_changes(
        self, organization_id: str, user_id: str, realm_id: UUID, last_checkpoint: int
    ) -> VlobChanges:
        """Vlobs written after `last_checkpoint` and the realm's real current checkpoint.
        Raises RealmNotFoundError, InMaintenanceError, NotAllowedError."""

    async def list_versions(
        self, organization_id: str, user_id: str, vlob_id: UUID
    ) -> dict[int, tuple[datetime, str]]:
        """version -> (timestamp, author). Raises VlobNotFoundError, InMaintenanceError,
        NotAllowedError."""

    async def get_reencryption_batch(
        self, organization_id: str, user_id: str, realm_id: UUID, encryption_revision: int, size: int
    ) -> list[ReencryptionBatchEntry]:
        """Up to `size` versions of revision N-1 not yet re-encrypted (their N-1 blobs), in a
        stable order. Raises RealmNotFoundError, NotInMaintenanceError,
        BadEncryptionRevisionError, NotAllowedError."""

    async def save_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: UUID,
        encryption_revision: int,
        batch: list[ReencryptionBatchEntry],
    ) -> tuple[int, int]:
        """Store each entry that exists at revision N-1 of this realm and is not yet at N (same
        author and timestamp as the original; first write wins; others ignored). Returns
        (total versions at N-1, versions present at N). Errors as `get_reencryption_batch`."""


class BlockStorage(Protocol):
    """Block metadata. The bytes live in the blockstore, written between `claim_create` and
    `record_create` (never inside a storage transaction).

    A block id is claimed before its bytes are written, so that two creations of one id never
    both write: of two racing uploads, one writes and records, the other is refused (every
    `ok` is given on the bytes its writer sent). A claim ends when its creation is recorded or
    refused; a claim left by a failed write (or a crashed server) holds until it expires, but
    the device that made it may claim the id again at once (a retry)."""

    async def claim_create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        block_id: UUID,
        now: datetime,
        claim_seconds: float,
    ) -> UUID:
        """Check the rules and claim `block_id` for `author` (a device): returns the claim.
        Raises RealmNotFoundError, InMaintenanceError, NotAllowedError, AlreadyExistsError
        (block id used in the organization), BlockClaimedError (another device claimed it
        less than `claim_seconds` ago)."""

    async def record_create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        block_id: UUID,
        size: int,
        created_on: datetime,
        claim: UUID,
    ) -> None:
        """Record the metadata once the bytes are written, if the author is still allowed
        (realm not in maintenance, write role: re-checked in the recording statement), and end
        the claim either way. Raises RealmNotFoundError, InMaintenanceError, NotAllowedError,
        AlreadyExistsError, BlockClaimedError (the claim expired and another device took it)."""

    async def check_read(self, organization_id: str, user_id: str, block_id: UUID) -> None:
        """Raises BlockNotFoundError, InMaintenanceError, NotAllowedError."""


class MessageStorage(Protocol):
    async def get(
        self, organization_id: str, user_id: str, offset: int, bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS
    ) -> list[Message]:
        """The user's messages after position `offset`, in arrival order: the first ones, at
        most `bounds.count` of them and `bounds.size` bytes of bodies (at least one). Marks
        the messages up to `offset` read (the user's read mark only moves forward)."""


@attrs.frozen
class PkiEnrollment:
    """One PKI enrollment request and what became of it (docs/protocol/storage.md §3). The X.509
    certificates and the payloads are opaque bytes."""

    enrollment_id: UUID
    submitter_der_x509_certificate: bytes = attrs.field(repr=False)
    submit_payload_signature: bytes = attrs.field(repr=False)
    submit_payload: bytes = attrs.field(repr=False)
    submitted_on: datetime
    status: str = "SUBMITTED"  # SUBMITTED | ACCEPTED | REJECTED | CANCELLED
    cancelled_on: datetime | None = None
    rejected_on: datetime | None = None
    accepted_on: datetime | None = None
    accepter_der_x509_certificate: bytes | None = attrs.field(default=None, repr=False)
    accept_payload_signature: bytes | None = attrs.field(default=None, repr=False)
    accept_payload: bytes | None = attrs.field(default=None, repr=False)
    accepter: str | None = None  # device id of the ADMIN who accepted
    accepted_device: str | None = None  # device id created by the acceptance


@attrs.frozen
class PkiAcceptance:
    """What `PkiStorage.accept` records on the enrollment."""

    accepter: str  # the connected ADMIN device
    accepter_der_x509_certificate: bytes = attrs.field(repr=False)
    accept_payload_signature: bytes = attrs.field(repr=False)
    accept_payload: bytes = attrs.field(repr=False)
    accepted_on: datetime


class PkiStorage(Protocol):
    """PKI enrollments (docs/protocol/commands.md §12). Every mutating method is one atomic unit,
    serialized per organization with user creation and revocation (one transaction under
    the organization's user/device write lock in PostgreSQL)."""

    async def submit(
        self,
        organization_id: str,
        enrollment: PkiEnrollment,
        force: bool,
        email: str | None,
        now: datetime,
        max_pending: int = DEFAULT_LIMITS.pending_enrollments,
    ) -> UUID | None:
        """Store `enrollment` (SUBMITTED). In order: EnrollmentIdAlreadyUsedError (id known in
        the organization); then the latest enrollment with the same certificate (compared by
        SHA-1 of the DER bytes): SUBMITTED -> AlreadySubmittedError(submitted_on) unless
        `force`, in which case it becomes CANCELLED (cancelled_on = `enrollment.submitted_on`);
        ACCEPTED and its user not revoked at `now` -> AlreadyEnrolledError; then, when `email`
        is given, EmailAlreadyUsedError if a user not revoked at `now` has exactly this
        e-mail; then TooManyPendingEnrollmentsError if the organization would have more than
        `max_pending` SUBMITTED enrollments. Returns the id of the enrollment cancelled by
        `force`, or None. Publishes `pki_enrollment.updated` once per enrollment written (twice
        when one was cancelled)."""

    async def info(self, organization_id: str, enrollment_id: UUID) -> PkiEnrollment:
        """Raises NotFoundError."""

    async def list_submitted(self, organization_id: str) -> list[PkiEnrollment]:
        """The SUBMITTED enrollments, in submission order."""

    async def reject(self, organization_id: str, enrollment_id: UUID, rejected_on: datetime) -> None:
        """Raises NotFoundError, NoLongerAvailableError (not SUBMITTED). Publishes
        `pki_enrollment.updated`."""

    async def accept(
        self,
        organization_id: str,
        enrollment_id: UUID,
        acceptance: PkiAcceptance,
        user: User,
        device: Device,
        now: datetime,
    ) -> None:
        """Create `user` + `device` and mark the enrollment ACCEPTED. In order: NotFoundError,
        NoLongerAvailableError (not SUBMITTED), then the checks of `UserStorage.create_user`
        (ActiveUsersLimitReachedError, AlreadyExistsError). Publishes `user.created` then
        `pki_enrollment.updated`."""


@attrs.define
class Storage:
    """Every domain storage of one backend (memory or PostgreSQL)."""

    organization: OrganizationStorage
    user: UserStorage
    invite: InviteStorage
    realm: RealmStorage
    vlob: VlobStorage
    block: BlockStorage
    message: MessageStorage
    pki: PkiStorage

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
