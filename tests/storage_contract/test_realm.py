"""RealmStorage + MessageStorage contract (the events of each write included)."""

from __future__ import annotations

import itertools
from datetime import timedelta
from uuid import uuid4

import pytest
import pytest_twisted

from parsec.backend import realm_rules as rules
from parsec.backend import storage as st
from parsec.backend.models import Message, RealmStats, RealmStatus
from tests.storage_contract.conftest import make_world

ok = pytest_twisted.ensureDeferred

ROLES = ["OWNER", "MANAGER", "CONTRIBUTOR", "READER", None]


# ---- creation and member reads -----------------------------------------------------------------


@ok
async def test_create_and_member_reads(world, backend):
    realm_id = await world.create_realm("alice@dev1")
    with pytest.raises(st.AlreadyExistsError):
        await world.create_realm("bob@dev1", realm_id)

    assert await world.realm.get_status(world.org, "alice", realm_id) == RealmStatus(encryption_revision=1)
    assert await world.realm.get_stats(world.org, "alice", realm_id) == RealmStats(blocks_size=0, vlobs_size=0)
    certificates = await world.realm.get_role_certificates(world.org, "alice", realm_id)
    assert len(certificates) == 1 and certificates[0].startswith(f"cert:{realm_id}:alice:OWNER".encode())
    assert await world.realm.get_realms_for_user(world.org, "alice") == {realm_id: "OWNER"}
    assert await world.realm.get_realms_for_user(world.org, "bob") == {}

    for method in (world.realm.get_status, world.realm.get_stats, world.realm.get_role_certificates):
        with pytest.raises(st.RealmNotFoundError):
            await method(world.org, "alice", uuid4())
        with pytest.raises(st.NotAllowedError):
            await method(world.org, "bob", realm_id)

    # Organizations are isolated: the same realm id is free elsewhere.
    other = await make_world(backend)
    with pytest.raises(st.RealmNotFoundError):
        await other.realm.get_status(other.org, "alice", realm_id)
    await other.create_realm("alice@dev1", realm_id)
    assert await world.realm.get_realms_for_user(other.org, "alice") == {realm_id: "OWNER"}


# ---- role updates ------------------------------------------------------------------------------


@ok
async def test_share_change_remove_with_messages(world):
    realm_id = await world.create_realm("alice@dev1")
    t1 = world.ts()
    assert await world.share(realm_id, "alice@dev1", "bob", "READER", timestamp=t1, message=b"hello") == 1
    assert await world.realm.get_realms_for_user(world.org, "bob") == {realm_id: "READER"}
    assert await world.realm.get_status(world.org, "bob", realm_id) == RealmStatus(encryption_revision=1)
    # No message for nil nor for an empty one.
    assert await world.share(realm_id, "alice@dev2", "bob", "CONTRIBUTOR", message=None) is None
    assert await world.share(realm_id, "alice@dev1", "bob", "MANAGER", message=b"") is None
    t4 = world.ts()
    assert await world.share(realm_id, "alice@dev2", "bob", None, timestamp=t4, message=b"bye") == 2

    assert await world.message.get(world.org, "bob", 0) == [
        Message(index=1, sender="alice@dev1", timestamp=t1, body=b"hello"),
        Message(index=2, sender="alice@dev2", timestamp=t4, body=b"bye"),
    ]
    assert await world.message.get(world.org, "bob", 1) == [
        Message(index=2, sender="alice@dev2", timestamp=t4, body=b"bye"),
    ]
    assert await world.message.get(world.org, "bob", 2) == []
    assert await world.message.get(world.org, "bob", 10) == []
    assert await world.message.get(world.org, "alice", 0) == []

    assert await world.realm.get_realms_for_user(world.org, "bob") == {}
    with pytest.raises(st.NotAllowedError):
        await world.realm.get_status(world.org, "bob", realm_id)
    certificates = await world.realm.get_role_certificates(world.org, "alice", realm_id)
    assert [c.split(b":")[2:4] for c in certificates] == [
        [b"alice", b"OWNER"],
        [b"bob", b"READER"],
        [b"bob", b"CONTRIBUTOR"],
        [b"bob", b"MANAGER"],
        [b"bob", b"None"],
    ]


@ok
async def test_role_certificates_sorted_by_timestamp(world):
    realm_id = await world.create_realm("alice@dev1")
    late, early = world.ts(), world.ts()
    early, late = late, early  # early < late
    await world.share(realm_id, "alice@dev1", "bob", "READER", timestamp=late)
    await world.share(realm_id, "alice@dev1", "carol", "READER", timestamp=early - timedelta(microseconds=1))
    certificates = await world.realm.get_role_certificates(world.org, "alice", realm_id)
    assert [c.split(b":")[2] for c in certificates] == [b"alice", b"carol", b"bob"]


@ok
async def test_update_roles_rule_order(world):
    realm_id = await world.create_realm("alice@dev1")
    unknown_realm = uuid4()
    # 6. unknown target user comes first.
    with pytest.raises(st.UserNotFoundError):
        await world.share(unknown_realm, "alice@dev1", "nobody", "READER")
    # 7. OUTSIDER cannot be MANAGER/OWNER (before revocation and realm checks).
    for role in ("OWNER", "MANAGER"):
        with pytest.raises(st.IncompatibleProfileError):
            await world.share(unknown_realm, "alice@dev1", "zoe", role)
    # 8. revoked target, whatever the revocation date.
    await world.add_user("rita@dev1", "OUTSIDER")
    await world.add_user("ron@dev1")
    await world.revoke("rita", world.ts() + timedelta(days=1), "alice@dev1")
    await world.revoke("ron", world.ts(), "alice@dev1")
    with pytest.raises(st.IncompatibleProfileError):
        await world.share(unknown_realm, "alice@dev1", "rita", "MANAGER")
    for target in ("rita", "ron"):
        for role in ("READER", None):
            with pytest.raises(st.UserRevokedError):
                await world.share(unknown_realm, "alice@dev1", target, role)
    # 9. realm.
    with pytest.raises(st.RealmNotFoundError):
        await world.share(unknown_realm, "alice@dev1", "bob", "READER")
    # 11. author's role; 12. already granted.
    with pytest.raises(st.NotAllowedError):
        await world.share(realm_id, "bob@dev1", "carol", "READER")
    with pytest.raises(st.AlreadyGrantedError):
        await world.share(realm_id, "alice@dev1", "bob", None)
    assert await world.share(realm_id, "alice@dev1", "zoe", "READER") is None
    assert await world.share(realm_id, "alice@dev1", "zoe", "CONTRIBUTOR") is None
    with pytest.raises(st.AlreadyGrantedError):
        await world.share(realm_id, "alice@dev1", "zoe", "CONTRIBUTOR")
    # Nothing was stored by the refused requests.
    assert len(await world.realm.get_role_certificates(world.org, "alice", realm_id)) == 3
    assert await world.message.get(world.org, "bob", 0) == []


@ok
async def test_role_management_matrix(world):
    """Every (author role, target role, new role): realm_rules.can_set_role decides."""
    for author_role, target_role, new_role in itertools.product(ROLES, ROLES, ROLES):
        realm_id = await world.create_realm("alice@dev1")
        if author_role is not None:
            await world.share(realm_id, "alice@dev1", "bob", author_role)
        if target_role is not None:
            await world.share(realm_id, "alice@dev1", "carol", target_role)
        case = (author_role, target_role, new_role)
        if not rules.can_set_role(author_role, target_role, new_role):
            with pytest.raises(st.NotAllowedError):
                await world.share(realm_id, "bob@dev1", "carol", new_role)
        elif new_role == target_role:
            with pytest.raises(st.AlreadyGrantedError):
                await world.share(realm_id, "bob@dev1", "carol", new_role)
        else:
            assert await world.share(realm_id, "bob@dev1", "carol", new_role) is None, case
            realms = await world.realm.get_realms_for_user(world.org, "carol")
            assert realms.get(realm_id) == new_role, case


@ok
async def test_role_causality(world):
    realm_id = await world.create_realm("alice@dev1")
    t_bob = world.ts()
    await world.share(realm_id, "alice@dev1", "bob", "MANAGER", timestamp=t_bob)
    # 13. the target's latest certificate must be strictly older.
    for timestamp in (t_bob, t_bob - timedelta(seconds=1)):
        with pytest.raises(st.RequireGreaterTimestampError) as exc:
            await world.share(realm_id, "alice@dev1", "bob", "OWNER", timestamp=timestamp)
        assert exc.value.strictly_greater_than == t_bob

    # 15. bob granted a role at `ref`: removing his management needs a later timestamp...
    ref = world.ts()
    await world.share(realm_id, "bob@dev1", "carol", "READER", timestamp=ref)
    between = ref - timedelta(milliseconds=500)
    for role in ("CONTRIBUTOR", "READER", None):
        with pytest.raises(st.RequireGreaterTimestampError) as exc:
            await world.share(realm_id, "alice@dev1", "bob", role, timestamp=ref)
        assert exc.value.strictly_greater_than == ref
    # ... but not a promotion (only the target's own last grant counts).
    await world.share(realm_id, "alice@dev1", "bob", "OWNER", timestamp=between)
    await world.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR", timestamp=ref + timedelta(microseconds=1))

    # 14. bob wrote a vlob at `wrote`: READER / removal need a later timestamp, not MANAGER.
    await world.create_vlob("bob@dev2", realm_id)  # at some earlier time
    vlob_id = await world.create_vlob("bob@dev1", realm_id)
    wrote = world.ts()
    await world.vlob.update(world.org, "bob@dev1", 1, vlob_id, 2, wrote, b"v2")
    for role in ("READER", None):
        with pytest.raises(st.RequireGreaterTimestampError) as exc:
            await world.share(realm_id, "alice@dev1", "bob", role, timestamp=wrote)
        assert exc.value.strictly_greater_than == wrote
    after = wrote + timedelta(microseconds=1)
    await world.share(realm_id, "alice@dev1", "bob", "MANAGER", timestamp=after)
    await world.share(realm_id, "alice@dev1", "bob", "READER", timestamp=after + timedelta(microseconds=1))


@ok
async def test_self_grant_by_owner_is_recorded_as_role_change(world):
    """The creator's own grant counts as a role change it authored (last_role_change)."""
    created = world.ts()
    realm_id = uuid4()
    await world.realm.create(world.org, world.grant(realm_id, "alice@dev1", "alice", "OWNER", created))
    await world.share(realm_id, "alice@dev1", "bob", "OWNER")
    with pytest.raises(st.RequireGreaterTimestampError) as exc:
        # Demoting alice before her creation timestamp: her own grant is the latest (13).
        await world.share(realm_id, "bob@dev1", "alice", "READER", timestamp=created)
    assert exc.value.strictly_greater_than == created


# ---- re-encryption maintenance -----------------------------------------------------------------


@ok
async def test_start_reencryption(world):
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "MANAGER")
    await world.share(realm_id, "alice@dev1", "carol", "READER")
    await world.share(realm_id, "alice@dev1", "carol", None)  # former member
    await world.add_user("ron@dev1")
    await world.share(realm_id, "alice@dev1", "ron", "READER")
    await world.add_user("rick@dev1")
    await world.share(realm_id, "alice@dev1", "rick", "READER")
    now = world.ts()
    await world.revoke("ron", now, "alice@dev1")  # revoked as of now: not a participant
    await world.revoke("rick", now + timedelta(days=1), "alice@dev1")  # still one

    async def start(author, revision, recipients, realm=realm_id):
        messages = {user: f"key for {user}".encode() for user in recipients}
        return await world.realm.start_reencryption_maintenance(
            world.org, author, realm, revision, messages, now, now
        )

    participants = ["alice", "bob", "rick"]
    with pytest.raises(st.RealmNotFoundError):
        await start("alice@dev1", 2, participants, realm=uuid4())
    for revision in (1, 3, 42, -1, 2**40):
        with pytest.raises(st.BadEncryptionRevisionError):
            await start("bob@dev1", revision, participants)  # before the role check
    with pytest.raises(st.NotAllowedError):
        await start("bob@dev1", 2, participants)
    with pytest.raises(st.NotAllowedError):
        await start("carol@dev1", 2, participants)
    for recipients in ([], ["alice", "bob"], [*participants, "carol"], [*participants, "ron"], [*participants, "x"]):
        with pytest.raises(st.ParticipantsMismatchError):
            await start("alice@dev1", 2, recipients)
    assert await world.message.get(world.org, "alice", 0) == []

    result = await start("alice@dev2", 2, ["rick", "alice", "bob"])
    assert result == [("rick", 1), ("alice", 1), ("bob", 1)]
    assert await world.message.get(world.org, "rick", 0) == [
        Message(index=1, sender="alice@dev2", timestamp=now, body=b"key for rick")
    ]
    assert await world.realm.get_status(world.org, "bob", realm_id) == RealmStatus(
        encryption_revision=2,
        maintenance_type="REENCRYPTION",
        maintenance_started_on=now,
        maintenance_started_by="alice@dev2",
    )
    for revision in (2, 3):
        with pytest.raises(st.InMaintenanceError):
            await start("alice@dev1", revision, participants)
    with pytest.raises(st.InMaintenanceError):
        await world.share(realm_id, "alice@dev1", "carol", "READER")
    # Member reads are allowed during maintenance.
    assert len(await world.realm.get_role_certificates(world.org, "bob", realm_id)) == 6


@ok
async def test_finish_reencryption(world):
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "MANAGER")

    async def finish(author, revision, realm=realm_id):
        await world.realm.finish_reencryption_maintenance(world.org, author, realm, revision)

    with pytest.raises(st.RealmNotFoundError):
        await finish("alice@dev1", 2, uuid4())
    with pytest.raises(st.NotAllowedError):
        await finish("bob@dev1", 1)  # role before maintenance state
    for revision in (1, 2):
        with pytest.raises(st.NotInMaintenanceError):
            await finish("alice@dev1", revision)

    now = world.ts()
    await world.realm.start_reencryption_maintenance(
        world.org, "alice@dev1", realm_id, 2, {"alice": b"a", "bob": b"b"}, now, now
    )
    with pytest.raises(st.NotAllowedError):
        await finish("bob@dev1", 2)
    for revision in (1, 3, 2**40):
        with pytest.raises(st.BadEncryptionRevisionError):
            await finish("alice@dev1", revision)
    # Nothing to re-encrypt: finished at once (docs/protocol/DECISIONS.md).
    await finish("alice@dev1", 2)
    assert await world.realm.get_status(world.org, "alice", realm_id) == RealmStatus(encryption_revision=2)
    with pytest.raises(st.NotInMaintenanceError):
        await finish("alice@dev1", 2)
    # The next re-encryption numbers on.
    now = world.ts()
    await world.realm.start_reencryption_maintenance(
        world.org, "alice@dev1", realm_id, 3, {"alice": b"a", "bob": b"b"}, now, now
    )
    assert await world.message.get(world.org, "bob", 1) == [Message(2, "alice@dev1", now, b"b")]


# ---- events ------------------------------------------------------------------------------------


@ok
async def test_realm_writes_publish_their_events(world):
    """Each write publishes its events with the write (docs/protocol/events.md §4-§5, in that
    order); a refused write publishes nothing."""
    realm_id = uuid4()
    grant = world.grant(realm_id, "alice@dev2", "alice", "OWNER")
    assert await world.published(world.realm.create(world.org, grant)) == (
        None,
        [("realm.roles_updated", {"author": "alice@dev2", "realm_id": realm_id, "user": "alice", "role": "OWNER"})],
    )
    error, events = await world.published(world.realm.create(world.org, grant))
    assert isinstance(error, st.AlreadyExistsError) and events == []

    shared = world.grant(realm_id, "alice@dev1", "bob", "MANAGER")
    assert await world.published(world.realm.update_roles(world.org, shared, b"welcome")) == (
        1,
        [
            ("realm.roles_updated", {"author": "alice@dev1", "realm_id": realm_id, "user": "bob", "role": "MANAGER"}),
            ("message.received", {"author": "alice@dev1", "recipient": "bob", "index": 1}),
        ],
    )
    removed = world.grant(realm_id, "bob@dev2", "carol", "READER")
    assert await world.published(world.realm.update_roles(world.org, removed, None)) == (
        None,
        [("realm.roles_updated", {"author": "bob@dev2", "realm_id": realm_id, "user": "carol", "role": "READER"})],
    )
    error, events = await world.published(world.realm.update_roles(world.org, removed, b"again"))
    assert isinstance(error, st.AlreadyGrantedError) and events == []
    assert await world.message.get(world.org, "carol", 0) == []

    now = world.ts()
    start = world.realm.start_reencryption_maintenance(
        world.org, "alice@dev1", realm_id, 2, {"carol": b"c", "alice": b"a", "bob": b"b"}, now, now
    )
    assert await world.published(start) == (
        [("carol", 1), ("alice", 1), ("bob", 2)],
        [
            ("realm.maintenance_started", {"author": "alice@dev1", "realm_id": realm_id, "encryption_revision": 2}),
            ("message.received", {"author": "alice@dev1", "recipient": "carol", "index": 1}),
            ("message.received", {"author": "alice@dev1", "recipient": "alice", "index": 1}),
            ("message.received", {"author": "alice@dev1", "recipient": "bob", "index": 2}),
        ],
    )
    error, events = await world.published(
        world.realm.start_reencryption_maintenance(world.org, "alice@dev1", realm_id, 3, {}, now, now)
    )
    assert isinstance(error, st.InMaintenanceError) and events == []

    error, events = await world.published(
        world.realm.finish_reencryption_maintenance(world.org, "alice@dev1", realm_id, 3)
    )
    assert isinstance(error, st.BadEncryptionRevisionError) and events == []
    assert await world.published(world.realm.finish_reencryption_maintenance(world.org, "alice@dev1", realm_id, 2)) == (
        None,
        [("realm.maintenance_finished", {"author": "alice@dev1", "realm_id": realm_id, "encryption_revision": 2})],
    )

    # Reads publish nothing.
    for read in (
        world.realm.get_status(world.org, "bob", realm_id),
        world.realm.get_stats(world.org, "bob", realm_id),
        world.realm.get_role_certificates(world.org, "bob", realm_id),
        world.realm.get_realms_for_user(world.org, "bob"),
        world.message.get(world.org, "bob", 0),
    ):
        _, events = await world.published(read)
        assert events == []
