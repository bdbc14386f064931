"""The pure realm rules (parsec.backend.realm_rules), including the cases the wire cannot reach
in 2.10.0 (a maintenance other than REENCRYPTION is never started), and the replies the
components build for them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from parsec.api import protocol
from parsec.backend import realm_rules as rules
from parsec.backend.command import error_reply
from parsec.backend.realm_rules import Operation, RealmState, RoleUpdateFacts
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

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NORMAL = RealmState(encryption_revision=3)
REENCRYPTING = RealmState(encryption_revision=3, maintenance_type="REENCRYPTION")
GARBAGE = RealmState(encryption_revision=3, maintenance_type="GARBAGE_COLLECTION")

OK = None

# (state, operation, request revision) -> expected error (or OK) for an OWNER
STATE_TABLE = [
    (NORMAL, Operation.READ, None, OK),
    (NORMAL, Operation.READ, 3, OK),
    (NORMAL, Operation.READ, 2, BadEncryptionRevisionError),
    (NORMAL, Operation.READ, 4, BadEncryptionRevisionError),
    (REENCRYPTING, Operation.READ, None, OK),
    (REENCRYPTING, Operation.READ, 2, OK),
    (REENCRYPTING, Operation.READ, 3, InMaintenanceError),
    (REENCRYPTING, Operation.READ, 1, BadEncryptionRevisionError),
    (REENCRYPTING, Operation.READ, 4, BadEncryptionRevisionError),
    (GARBAGE, Operation.READ, None, InMaintenanceError),
    (GARBAGE, Operation.READ, 3, InMaintenanceError),
    (NORMAL, Operation.WRITE, 3, OK),
    (NORMAL, Operation.WRITE, 2, BadEncryptionRevisionError),
    (REENCRYPTING, Operation.WRITE, 3, InMaintenanceError),
    (REENCRYPTING, Operation.WRITE, 2, InMaintenanceError),
    (GARBAGE, Operation.WRITE, 3, InMaintenanceError),
    (NORMAL, Operation.MAINTENANCE, 3, NotInMaintenanceError),
    (REENCRYPTING, Operation.MAINTENANCE, 3, OK),
    (REENCRYPTING, Operation.MAINTENANCE, 2, BadEncryptionRevisionError),
    (GARBAGE, Operation.MAINTENANCE, 3, OK),
    (GARBAGE, Operation.MAINTENANCE, 4, BadEncryptionRevisionError),
    (NORMAL, Operation.BLOCK_READ, None, OK),
    (REENCRYPTING, Operation.BLOCK_READ, None, OK),
    (GARBAGE, Operation.BLOCK_READ, None, InMaintenanceError),
    (NORMAL, Operation.BLOCK_CREATE, None, OK),
    (REENCRYPTING, Operation.BLOCK_CREATE, None, InMaintenanceError),
    (GARBAGE, Operation.BLOCK_CREATE, None, InMaintenanceError),
]


@pytest.mark.parametrize("state, operation, revision, expected", STATE_TABLE)
def test_realm_state_rules(state, operation, revision, expected):
    if expected is OK:
        rules.check_realm_access(state, "OWNER", operation, revision)
    else:
        with pytest.raises(expected):
            rules.check_realm_access(state, "OWNER", operation, revision)


ROLE_TABLE = {
    Operation.READ: {"OWNER", "MANAGER", "CONTRIBUTOR", "READER"},
    Operation.BLOCK_READ: {"OWNER", "MANAGER", "CONTRIBUTOR", "READER"},
    Operation.WRITE: {"OWNER", "MANAGER", "CONTRIBUTOR"},
    Operation.BLOCK_CREATE: {"OWNER", "MANAGER", "CONTRIBUTOR"},
    Operation.MAINTENANCE: {"OWNER"},
}


@pytest.mark.parametrize("operation", list(Operation))
@pytest.mark.parametrize("role", ["OWNER", "MANAGER", "CONTRIBUTOR", "READER", None])
def test_role_rules(operation, role):
    state = REENCRYPTING if operation is Operation.MAINTENANCE else NORMAL
    revision = 3 if operation in (Operation.WRITE, Operation.MAINTENANCE) else None
    if role in ROLE_TABLE[operation]:
        rules.check_realm_access(state, role, operation, revision)
    else:
        with pytest.raises(NotAllowedError):
            rules.check_realm_access(state, role, operation, revision)


def test_state_checked_before_role():
    with pytest.raises(InMaintenanceError):
        rules.check_realm_access(GARBAGE, None, Operation.READ)
    with pytest.raises(BadEncryptionRevisionError):
        rules.check_realm_access(NORMAL, "READER", Operation.WRITE, 42)
    with pytest.raises(NotInMaintenanceError):
        rules.check_realm_access(NORMAL, None, Operation.MAINTENANCE, 3)


def test_readable_revision():
    assert rules.readable_revision(NORMAL) == 3
    assert rules.readable_revision(REENCRYPTING) == 2


def test_not_found_checks():
    with pytest.raises(RealmNotFoundError):
        rules.check_realm_member(None, "OWNER")
    with pytest.raises(RealmNotFoundError):
        rules.check_poll_changes(None, "OWNER")
    with pytest.raises(VlobNotFoundError):
        rules.check_vlob_read(None, "OWNER", 1)
    with pytest.raises(BlockNotFoundError):
        rules.check_block_read(None, "OWNER")
    with pytest.raises(RealmNotFoundError):
        rules.check_block_create(None, "OWNER", False)


def test_vlob_create_order():
    # role rule, then causality, then uniqueness
    with pytest.raises(NotAllowedError):
        rules.check_vlob_create(NORMAL, "READER", T0, 3, T0, True)
    with pytest.raises(RequireGreaterTimestampError) as exc_info:
        rules.check_vlob_create(NORMAL, "OWNER", T0, 3, T0, True)
    assert exc_info.value.strictly_greater_than == T0
    with pytest.raises(AlreadyExistsError):
        rules.check_vlob_create(NORMAL, "OWNER", T0, 3, T0 + timedelta(seconds=1), True)
    rules.check_vlob_create(NORMAL, "OWNER", T0, 3, T0 + timedelta(seconds=1), False)


def test_vlob_update_order():
    later = T0 + timedelta(seconds=10)
    with pytest.raises(RequireGreaterTimestampError):
        rules.check_vlob_update(NORMAL, "OWNER", later, 3, later, 1, T0, 5)
    with pytest.raises(BadVersionError):
        rules.check_vlob_update(NORMAL, "OWNER", T0, 3, later, 1, later + timedelta(seconds=1), 5)
    with pytest.raises(RequireGreaterTimestampError) as exc_info:
        rules.check_vlob_update(NORMAL, "OWNER", T0, 3, later, 1, later + timedelta(seconds=1), 2)
    assert exc_info.value.strictly_greater_than == later + timedelta(seconds=1)
    rules.check_vlob_update(NORMAL, "OWNER", T0, 3, later, 1, later, 2)


def test_select_vlob_version():
    versions = {1: T0, 2: T0 + timedelta(seconds=2), 3: T0 + timedelta(seconds=4)}

    def select(versions: dict, version, timestamp):
        return rules.select_vlob_version(versions, lambda ts: ts, version, timestamp)

    assert select(versions, None, None) == 3
    assert select(versions, 2, None) == 2
    assert select(versions, 2, T0) == 2
    assert select(versions, None, T0 + timedelta(seconds=3)) == 2
    assert select(versions, None, T0) == 1
    with pytest.raises(BadVersionError):
        select(versions, None, T0 - timedelta(microseconds=1))
    with pytest.raises(BadVersionError):
        select(versions, 4, None)
    with pytest.raises(BadVersionError):
        select({}, None, None)


def test_select_vlob_version_as_defined():
    """Its lookup and walk back pick what the definition picks on random histories,
    timestamps out of order included (data written elsewhere): `version` if it exists, else
    the highest version at or before `timestamp`, else the highest."""
    import random

    chooser = random.Random(15)
    for _ in range(300):
        count = chooser.randint(0, 8)
        stamps = [T0 + timedelta(seconds=chooser.randint(0, 10)) for _ in range(count)]
        if chooser.random() < 0.7:
            stamps.sort()
        versions = dict(enumerate(stamps, start=1))
        for version in (None, 0, 1, count, count + 1):
            for timestamp in (None, T0 - timedelta(seconds=1), T0 + timedelta(seconds=chooser.randint(0, 11))):
                if version is not None:
                    candidates = [version] if version in versions else []
                elif timestamp is not None:
                    candidates = [v for v, ts in versions.items() if ts <= timestamp]
                else:
                    candidates = list(versions)
                expected: int | type[Exception] = max(candidates) if candidates else BadVersionError
                try:
                    got: int | type[Exception] = rules.select_vlob_version(versions, lambda ts: ts, version, timestamp)
                except BadVersionError:
                    got = BadVersionError
                assert got == expected, (stamps, version, timestamp)


def facts(**overrides) -> RoleUpdateFacts:
    base = dict(
        target_profile="STANDARD",
        target_revoked=False,
        realm=NORMAL,
        author_role="OWNER",
        target_role=None,
        target_last_role_granted_on=None,
        target_last_vlob_update=None,
        target_last_role_change=None,
    )
    return RoleUpdateFacts(**{**base, **overrides})


def test_update_roles_order():
    ts = T0 + timedelta(seconds=10)
    cases = [
        (facts(target_profile=None, target_revoked=True, realm=None), "READER", UserNotFoundError),
        (facts(target_profile="OUTSIDER", target_revoked=True, realm=None), "MANAGER", IncompatibleProfileError),
        (facts(target_profile="OUTSIDER", target_revoked=True, realm=None), "READER", UserRevokedError),
        (facts(realm=None, author_role=None), "READER", RealmNotFoundError),
        (facts(realm=REENCRYPTING, author_role=None), "READER", InMaintenanceError),
        (facts(realm=GARBAGE, author_role=None), "READER", InMaintenanceError),
        (facts(author_role="CONTRIBUTOR", target_role="READER"), "READER", NotAllowedError),
        (facts(target_role="READER", target_last_role_granted_on=ts), "READER", AlreadyGrantedError),
        (facts(target_role="READER", target_last_role_granted_on=ts), "CONTRIBUTOR", RequireGreaterTimestampError),
        (facts(target_role="CONTRIBUTOR", target_last_vlob_update=ts), "READER", RequireGreaterTimestampError),
        (facts(target_role="CONTRIBUTOR", target_last_vlob_update=ts), "MANAGER", OK),
        (facts(target_role="MANAGER", target_last_role_change=ts), "CONTRIBUTOR", RequireGreaterTimestampError),
        (facts(target_role="MANAGER", target_last_role_change=ts), "OWNER", OK),
        (facts(target_role="MANAGER", target_last_role_change=ts), None, RequireGreaterTimestampError),
    ]
    for case_facts, new_role, expected in cases:
        if expected is OK:
            rules.check_update_roles(case_facts, new_role, ts)
        else:
            with pytest.raises(expected):
                rules.check_update_roles(case_facts, new_role, ts)


def test_reencryption_start_and_finish_order():
    with pytest.raises(RealmNotFoundError):
        rules.check_start_reencryption(None, None, 4, [], [])
    with pytest.raises(InMaintenanceError):
        rules.check_start_reencryption(REENCRYPTING, None, 42, [], [])
    with pytest.raises(BadEncryptionRevisionError):
        rules.check_start_reencryption(NORMAL, None, 3, [], [])
    with pytest.raises(NotAllowedError):
        rules.check_start_reencryption(NORMAL, "MANAGER", 4, ["a"], [])
    with pytest.raises(ParticipantsMismatchError):
        rules.check_start_reencryption(NORMAL, "OWNER", 4, ["a", "b"], ["a"])
    rules.check_start_reencryption(NORMAL, "OWNER", 4, ["a", "b"], {"b": b"", "a": b""})

    with pytest.raises(RealmNotFoundError):
        rules.check_finish_reencryption(None, None, 3, False)
    with pytest.raises(NotAllowedError):
        rules.check_finish_reencryption(NORMAL, "MANAGER", 1, False)
    with pytest.raises(NotInMaintenanceError):
        rules.check_finish_reencryption(NORMAL, "OWNER", 1, False)
    with pytest.raises(BadEncryptionRevisionError):
        rules.check_finish_reencryption(REENCRYPTING, "OWNER", 2, False)
    with pytest.raises(MaintenanceError):
        rules.check_finish_reencryption(REENCRYPTING, "OWNER", 3, False)
    rules.check_finish_reencryption(REENCRYPTING, "OWNER", 3, True)


# ---- replies for statuses the wire cannot trigger in 2.10.0 --------------------------------------

UNREACHABLE = [
    ("vlob_poll_changes", InMaintenanceError(), {"status": "in_maintenance"}),
    ("vlob_list_versions", InMaintenanceError(), {"status": "in_maintenance"}),
    ("block_read", InMaintenanceError(), {"status": "in_maintenance"}),
    (
        "vlob_maintenance_get_reencryption_batch",
        MaintenanceError(),
        {"status": "maintenance_error", "reason": "Reencryption operations are not over"},
    ),
    (
        "vlob_maintenance_save_reencryption_batch",
        MaintenanceError(),
        {"status": "maintenance_error", "reason": "Reencryption operations are not over"},
    ),
]


@pytest.mark.parametrize("cmd, exc, expected", UNREACHABLE)
def test_unreachable_replies(cmd, exc, expected):
    rep = error_reply(exc, realm_id=uuid4())
    assert rep == expected
    protocol.validate_reply(protocol.AUTHENTICATED_COMMANDS[cmd], rep)


def test_unexpected_error_is_reraised():
    with pytest.raises(UserNotFoundError):
        error_reply(UserNotFoundError())
