"""Access, maintenance and causality rules of realms, vlobs and blocks (docs/protocol/commands.md §9-§11).

Pure functions over plain facts, no I/O. Each `check_*` raises the `parsec.backend.storage`
exception of the FIRST failing rule, in the order the reference's production (PostgreSQL)
backend applies them, and returns None when the operation may proceed.

Storages call them inside their atomic unit: the memory storage reads the facts from its
dicts; a SQL storage can compute the same facts in one statement (CTEs) that also performs
the write only when the same conditions hold, then call the `check_*` helper on the facts it
got back to raise the right error when nothing was written. Either way the ORDER of the
rules lives here only.

Vocabulary:
* `state` is the realm's `RealmState`, or None when the realm (or the vlob/block whose realm
  it is) does not exist;
* `role` is the connected user's current role in the realm (None = no access);
* `encryption_revision` is the revision given by the request, when it has one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TypeVar

import attrs

from parsec.backend.storage import (
    AlreadyExistsError,
    AlreadyGrantedError,
    BadEncryptionRevisionError,
    BadVersionError,
    BlockNotFoundError,
    IncompatibleProfileError,
    InMaintenanceError,
    MaintenanceError,
    NotAllowedError,
    NotInMaintenanceError,
    ParticipantsMismatchError,
    RealmNotFoundError,
    RequireGreaterTimestampError,
    UserNotFoundError,
    UserRevokedError,
    VlobNotFoundError,
)

T = TypeVar("T")

OWNER = "OWNER"
MANAGER = "MANAGER"
CONTRIBUTOR = "CONTRIBUTOR"
READER = "READER"
REENCRYPTION = "REENCRYPTION"

WRITE_ROLES = frozenset({OWNER, MANAGER, CONTRIBUTOR})
MANAGEMENT_ROLES = frozenset({OWNER, MANAGER})
# New roles after which the target may no longer write vlobs / grant roles: granting them
# requires the target's last vlob write / last role grant to be older than the certificate.
NO_WRITE_ROLES = frozenset({READER, None})
NO_MANAGEMENT_ROLES = frozenset({CONTRIBUTOR, READER, None})


class Operation(enum.Enum):
    READ = "read"  # vlob_read, vlob_poll_changes, vlob_list_versions
    WRITE = "write"  # vlob_create, vlob_update
    MAINTENANCE = "maintenance"  # vlob_maintenance_get/save_reencryption_batch
    BLOCK_READ = "block_read"
    BLOCK_CREATE = "block_create"


@attrs.frozen
class RealmState:
    encryption_revision: int
    maintenance_type: str | None = None

    @property
    def in_maintenance(self) -> bool:
        return self.maintenance_type is not None


# ---- realm access (docs/protocol/commands.md §10.1) ---------------------------------------------------------


def check_realm_state(state: RealmState, operation: Operation, encryption_revision: int | None = None) -> None:
    """The realm-state half of the access check (maintenance and revision)."""
    current = state.encryption_revision
    maintenance = state.maintenance_type
    if operation is Operation.READ:
        if maintenance is None:
            if encryption_revision is not None and encryption_revision != current:
                raise BadEncryptionRevisionError()
        elif maintenance == REENCRYPTION:
            # The new revision is being written: only the previous one can be read.
            if encryption_revision == current:
                raise InMaintenanceError()
            if encryption_revision is not None and encryption_revision != current - 1:
                raise BadEncryptionRevisionError()
        else:
            raise InMaintenanceError()
    elif operation is Operation.WRITE:
        if maintenance is not None:
            raise InMaintenanceError()
        if encryption_revision != current:
            raise BadEncryptionRevisionError()
    elif operation is Operation.MAINTENANCE:
        if maintenance is None:
            raise NotInMaintenanceError()
        if encryption_revision != current:
            raise BadEncryptionRevisionError()
    elif operation is Operation.BLOCK_READ:
        if maintenance is not None and maintenance != REENCRYPTION:
            raise InMaintenanceError()
    elif operation is Operation.BLOCK_CREATE:
        if maintenance is not None:
            raise InMaintenanceError()
    else:  # pragma: no cover
        raise AssertionError(operation)


def check_role(role: str | None, operation: Operation) -> None:
    """The role half of the access check: read = any role, write = OWNER/MANAGER/CONTRIBUTOR,
    maintenance = OWNER."""
    if operation in (Operation.READ, Operation.BLOCK_READ):
        allowed = role is not None
    elif operation in (Operation.WRITE, Operation.BLOCK_CREATE):
        allowed = role in WRITE_ROLES
    else:
        allowed = role == OWNER
    if not allowed:
        raise NotAllowedError()


def check_realm_access(
    state: RealmState, role: str | None, operation: Operation, encryption_revision: int | None = None
) -> None:
    """Realm state first, then role (production order; the memory reference does the reverse)."""
    check_realm_state(state, operation, encryption_revision)
    check_role(role, operation)


def readable_revision(state: RealmState) -> int:
    """The revision whose vlob data reads return once `check_realm_access(READ)` passed:
    during a re-encryption the new revision is incomplete, so the previous one is served."""
    if state.maintenance_type == REENCRYPTION:
        return state.encryption_revision - 1
    return state.encryption_revision


def check_realm_member(state: RealmState | None, role: str | None) -> None:
    """realm_status, realm_stats, realm_get_role_certificates (allowed during maintenance)."""
    if state is None:
        raise RealmNotFoundError()
    if role is None:
        raise NotAllowedError()


# ---- causality -----------------------------------------------------------------------------


def check_greater(previous: datetime | None, timestamp: datetime) -> None:
    """`timestamp` must be strictly after `previous` (when there is one)."""
    if previous is not None and timestamp <= previous:
        raise RequireGreaterTimestampError(previous)


# ---- vlobs ---------------------------------------------------------------------------------


def check_vlob_create(
    state: RealmState | None,
    role: str | None,
    last_role_granted_on: datetime | None,
    encryption_revision: int,
    timestamp: datetime,
    vlob_id_used: bool,
) -> None:
    """vlob_create §10.2 steps 3-5. `last_role_granted_on` is the timestamp of the author
    user's latest role certificate in the realm; `vlob_id_used` whether the id exists anywhere
    in the organization (docs/protocol/DECISIONS.md)."""
    if state is None:
        raise RealmNotFoundError()
    check_realm_access(state, role, Operation.WRITE, encryption_revision)
    check_greater(last_role_granted_on, timestamp)
    if vlob_id_used:
        raise AlreadyExistsError()


def check_vlob_update(
    state: RealmState | None,
    role: str | None,
    last_role_granted_on: datetime | None,
    encryption_revision: int,
    timestamp: datetime,
    latest_version: int,
    latest_timestamp: datetime | None,
    version: int,
) -> None:
    """vlob_update §10.4 steps 3-6; `state` is None when the vlob does not exist, and
    `latest_version` / `latest_timestamp` describe its readable latest version."""
    if state is None:
        raise VlobNotFoundError()
    check_realm_access(state, role, Operation.WRITE, encryption_revision)
    check_greater(last_role_granted_on, timestamp)
    if version != latest_version + 1:
        raise BadVersionError()
    # Equal timestamps are accepted here (unlike the role causality rule).
    if latest_timestamp is not None and timestamp < latest_timestamp:
        raise RequireGreaterTimestampError(latest_timestamp)


def check_vlob_read(state: RealmState | None, role: str | None, encryption_revision: int | None) -> None:
    """vlob_read, vlob_list_versions (no revision) §10.3/§10.6; `state` is None when the vlob
    does not exist."""
    if state is None:
        raise VlobNotFoundError()
    check_realm_access(state, role, Operation.READ, encryption_revision)


def select_vlob_version(
    versions: dict[int, T], timestamp_of: Callable[[T], datetime], version: int | None, timestamp: datetime | None
) -> int:
    """Which version vlob_read returns, from a vlob's versions in ascending order (version ->
    what `timestamp_of` reads the version's timestamp from): `version` if given, else the
    highest version whose timestamp is at or before `timestamp`, else the latest. Raises
    BadVersionError when there is none. A lookup, or a walk back from the latest version:
    a read does not sort the vlob's whole history."""
    if version is not None:
        if version in versions:
            return version
        raise BadVersionError()
    if timestamp is None:
        if not versions:
            raise BadVersionError()
        return next(reversed(versions))
    for candidate in reversed(versions):
        if timestamp_of(versions[candidate]) <= timestamp:
            return candidate
    raise BadVersionError()


def check_poll_changes(state: RealmState | None, role: str | None) -> None:
    if state is None:
        raise RealmNotFoundError()
    check_realm_access(state, role, Operation.READ)


def check_reencryption_batch(state: RealmState | None, role: str | None, encryption_revision: int) -> None:
    """vlob_maintenance_get/save_reencryption_batch §10.7/§10.8."""
    if state is None:
        raise RealmNotFoundError()
    check_realm_access(state, role, Operation.MAINTENANCE, encryption_revision)


# ---- blocks --------------------------------------------------------------------------------


def check_block_create(state: RealmState | None, role: str | None, block_id_used: bool) -> None:
    """block_create §11.1 steps 2-5 (before the blockstore write)."""
    if state is None:
        raise RealmNotFoundError()
    check_realm_access(state, role, Operation.BLOCK_CREATE)
    if block_id_used:
        raise AlreadyExistsError()


def check_block_read(state: RealmState | None, role: str | None) -> None:
    """block_read §11.2 steps 2-4; `state` is None when the block's metadata does not exist."""
    if state is None:
        raise BlockNotFoundError()
    check_realm_access(state, role, Operation.BLOCK_READ)


# ---- roles ---------------------------------------------------------------------------------


def can_set_role(author_role: str | None, target_role: str | None, new_role: str | None) -> bool:
    """The role-management matrix: touching an OWNER/MANAGER, or making one, takes an OWNER;
    anything else (giving/changing/removing CONTRIBUTOR and READER) an OWNER or a MANAGER."""
    if target_role in MANAGEMENT_ROLES or new_role in MANAGEMENT_ROLES:
        return author_role == OWNER
    return author_role in MANAGEMENT_ROLES


@attrs.frozen
class RoleUpdateFacts:
    """Everything realm_update_roles decides on, read atomically."""

    target_profile: str | None  # None: no such user in the organization
    target_revoked: bool  # a revocation exists (whatever its date)
    realm: RealmState | None
    author_role: str | None
    target_role: str | None
    target_last_role_granted_on: datetime | None  # target's latest role certificate
    target_last_vlob_update: datetime | None  # latest vlob write by the target in the realm
    target_last_role_change: datetime | None  # latest role certificate authored by the target


def check_update_roles(facts: RoleUpdateFacts, new_role: str | None, timestamp: datetime) -> None:
    """realm_update_roles §9.5 steps 6-15 (certificate checks are done before)."""
    if facts.target_profile is None:
        raise UserNotFoundError()
    if facts.target_profile == "OUTSIDER" and new_role in MANAGEMENT_ROLES:
        raise IncompatibleProfileError()
    if facts.target_revoked:
        raise UserRevokedError()
    if facts.realm is None:
        raise RealmNotFoundError()
    if facts.realm.in_maintenance:
        raise InMaintenanceError()
    if not can_set_role(facts.author_role, facts.target_role, new_role):
        raise NotAllowedError()
    if new_role == facts.target_role:
        raise AlreadyGrantedError()
    check_greater(facts.target_last_role_granted_on, timestamp)
    if new_role in NO_WRITE_ROLES:
        check_greater(facts.target_last_vlob_update, timestamp)
    if new_role in NO_MANAGEMENT_ROLES:
        check_greater(facts.target_last_role_change, timestamp)


# ---- re-encryption maintenance -------------------------------------------------------------


def check_start_reencryption(
    state: RealmState | None,
    author_role: str | None,
    encryption_revision: int,
    participants: Iterable[str],
    recipients: Iterable[str],
) -> None:
    """realm_start_reencryption_maintenance §9.6 steps 3-7. `participants` are the users with
    a current role who are not revoked; `recipients` the keys of `per_participant_message`."""
    if state is None:
        raise RealmNotFoundError()
    if state.in_maintenance:
        raise InMaintenanceError()
    if encryption_revision != state.encryption_revision + 1:
        raise BadEncryptionRevisionError()
    if author_role != OWNER:
        raise NotAllowedError()
    if set(participants) != set(recipients):
        raise ParticipantsMismatchError()


def check_finish_reencryption(
    state: RealmState | None, author_role: str | None, encryption_revision: int, reencryption_over: bool
) -> None:
    """realm_finish_reencryption_maintenance §9.7 steps 2-6. `reencryption_over`: every
    version of revision N-1 has its counterpart at N (true when the realm has no vlob at all,
    docs/protocol/DECISIONS.md)."""
    if state is None:
        raise RealmNotFoundError()
    if author_role != OWNER:
        raise NotAllowedError()
    if not state.in_maintenance:
        raise NotInMaintenanceError()
    if encryption_revision != state.encryption_revision:
        raise BadEncryptionRevisionError()
    if not reencryption_over:
        raise MaintenanceError()
