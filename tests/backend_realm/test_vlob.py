"""vlob_create, vlob_read, vlob_update, vlob_poll_changes, vlob_list_versions (docs/protocol/commands.md §10.1-§10.6)."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
import pytest_twisted

from tests.orgs import now

ok = pytest_twisted.ensureDeferred

US = timedelta(microseconds=1)
WRITE_ROLES = ["OWNER", "MANAGER", "CONTRIBUTOR"]


def vlob_not_found(vlob_id) -> dict:
    return {"status": "not_found", "reason": f"Vlob `{vlob_id.hex}` doesn't exist"}


def realm_not_found(realm_id) -> dict:
    return {"status": "not_found", "reason": f"Realm `{realm_id.hex}` doesn't exist"}


async def create(client, realm_id, vlob_id, timestamp, blob=b"blob", revision=1) -> dict:
    return await client.cmd(
        "vlob_create", realm_id=realm_id, encryption_revision=revision, vlob_id=vlob_id, timestamp=timestamp, blob=blob
    )


async def update(client, vlob_id, version, timestamp, blob=b"blob", revision=1) -> dict:
    return await client.cmd(
        "vlob_update", encryption_revision=revision, vlob_id=vlob_id, version=version, timestamp=timestamp, blob=blob
    )


async def read(client, vlob_id, version=None, timestamp=None, revision=1) -> dict:
    return await client.cmd(
        "vlob_read", encryption_revision=revision, vlob_id=vlob_id, version=version, timestamp=timestamp
    )


# ---- vlob_create ---------------------------------------------------------------------------------


@ok
async def test_create_and_read_from_another_device(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    realm_id = await world.create_realm(alice)
    vlob_id, timestamp = uuid4(), world.ts()
    assert await create(alice, realm_id, vlob_id, timestamp, b"Initial commit.") == {"status": "ok"}
    rep = await read(alice2, vlob_id)
    assert rep == {
        "status": "ok",
        "version": 1,
        "blob": b"Initial commit.",
        "author": "alice@dev1",
        "timestamp": timestamp,
        "author_last_role_granted_on": rep["author_last_role_granted_on"],
    }
    assert rep["author_last_role_granted_on"] < timestamp


@ok
async def test_create_bad_message(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    good = {"realm_id": realm_id, "encryption_revision": 1, "vlob_id": uuid4(), "timestamp": world.ts(), "blob": b""}
    for key in good:
        rep = await alice.cmd("vlob_create", **{k: v for k, v in good.items() if k != key})
        assert rep["status"] == "bad_message", key
        assert rep["errors"] == {key: ["Missing data for required field."]}
    for key, bad in (("realm_id", "r"), ("encryption_revision", "1"), ("vlob_id", 42), ("timestamp", 42), ("blob", "s")):
        rep = await alice.cmd("vlob_create", **{**good, key: bad})
        assert rep["status"] == "bad_message", key
    # Unknown keys are ignored.
    assert await alice.cmd("vlob_create", **good, extra="ignored") == {"status": "ok"}


@ok
async def test_create_bad_timestamp(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    for delta in (timedelta(seconds=-71), timedelta(seconds=51)):
        timestamp = now() + delta
        rep = await create(alice, realm_id, uuid4(), timestamp)
        assert rep["status"] == "bad_timestamp"
        assert rep["client_timestamp"] == timestamp
        assert rep["ballpark_client_early_offset"] == 50.0
        assert rep["ballpark_client_late_offset"] == 70.0
        assert "reason" not in rep
    # Checked before the realm.
    rep = await create(alice, uuid4(), uuid4(), now() - timedelta(seconds=71))
    assert rep["status"] == "bad_timestamp"


@ok
async def test_create_unknown_realm_is_not_allowed(world, other_org):
    alice = await world.connect("alice@dev1")
    assert await create(alice, uuid4(), uuid4(), world.ts()) == {"status": "not_allowed"}
    other = await world.connect("alice@dev1", org=other_org)
    other_realm = await world.create_realm(other)
    assert await create(alice, other_realm, uuid4(), world.ts()) == {"status": "not_allowed"}


@ok
async def test_create_roles(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    assert await create(bob, realm_id, uuid4(), world.ts()) == {"status": "not_allowed"}
    await world.grant(alice, realm_id, "bob", "READER")
    assert await create(bob, realm_id, uuid4(), world.ts()) == {"status": "not_allowed"}
    for role in WRITE_ROLES:
        await world.grant(alice, realm_id, "bob", role)
        assert await create(bob, realm_id, uuid4(), world.ts()) == {"status": "ok"}
    await world.grant(alice, realm_id, "bob", None)
    assert await create(bob, realm_id, uuid4(), world.ts()) == {"status": "not_allowed"}


@ok
async def test_create_bad_encryption_revision(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    for revision in (0, 2, 42):
        assert await create(alice, realm_id, uuid4(), world.ts(), revision=revision) == {
            "status": "bad_encryption_revision"
        }
    # Production order: the realm state is checked before the role.
    await world.grant(alice, realm_id, "bob", "READER")
    assert await create(bob, realm_id, uuid4(), world.ts(), revision=42) == {"status": "bad_encryption_revision"}


@ok
async def test_create_already_exists(world, other_org):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id = await world.create_vlob(alice, realm_id, b"original")
    assert await create(alice, realm_id, vlob_id, world.ts(), b"again") == {"status": "already_exists", "reason": ""}
    # docs/protocol/DECISIONS.md: unique in the whole organization.
    other_realm = await world.create_realm(alice)
    assert await create(alice, other_realm, vlob_id, world.ts()) == {"status": "already_exists", "reason": ""}
    assert (await read(alice, vlob_id))["blob"] == b"original"
    # Free in another organization.
    other = await world.connect("alice@dev1", org=other_org)
    foreign_realm = await world.create_realm(other)
    assert await create(other, foreign_realm, vlob_id, world.ts(), b"foreign") == {"status": "ok"}
    assert (await read(alice, vlob_id))["blob"] == b"original"
    assert (await read(other, vlob_id))["blob"] == b"foreign"


@ok
async def test_create_require_greater_timestamp(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    granted_on = world.ts()
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR", timestamp=granted_on)
    for timestamp in (granted_on, granted_on - US):
        assert await create(bob, realm_id, uuid4(), timestamp) == {
            "status": "require_greater_timestamp",
            "strictly_greater_than": granted_on,
        }
    assert await create(bob, realm_id, uuid4(), granted_on + US) == {"status": "ok"}
    # The realm creator's own certificate counts too.
    own_realm = uuid4()
    created_on = world.ts()
    cert = alice.device.realm_role_certificate(realm_id=own_realm, user_id="alice", role="OWNER", timestamp=created_on)
    assert await alice.cmd("realm_create", role_certificate=cert) == {"status": "ok"}
    assert await create(alice, own_realm, uuid4(), created_on) == {
        "status": "require_greater_timestamp",
        "strictly_greater_than": created_on,
    }


# ---- vlob_read -----------------------------------------------------------------------------------


@ok
async def test_read_selection(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id, t1 = uuid4(), world.ts()
    assert await create(alice, realm_id, vlob_id, t1, b"v1") == {"status": "ok"}
    t2 = t1 + timedelta(seconds=1)
    assert await update(alice, vlob_id, 2, t2, b"v2") == {"status": "ok"}
    granted = (await read(alice, vlob_id))["author_last_role_granted_on"]

    def version(v, ts, blob):
        return {
            "status": "ok",
            "version": v,
            "blob": blob,
            "author": "alice@dev1",
            "timestamp": ts,
            "author_last_role_granted_on": granted,
        }

    v1, v2 = version(1, t1, b"v1"), version(2, t2, b"v2")
    assert await read(alice, vlob_id) == v2
    assert await read(alice, vlob_id, version=1) == v1
    assert await read(alice, vlob_id, version=2) == v2
    assert await read(alice, vlob_id, timestamp=t2 + timedelta(seconds=10)) == v2
    assert await read(alice, vlob_id, timestamp=t2) == v2
    assert await read(alice, vlob_id, timestamp=t2 - US) == v1
    assert await read(alice, vlob_id, timestamp=t1) == v1
    assert await read(alice, vlob_id, timestamp=t1 - US) == {"status": "bad_version"}
    # Version wins over timestamp.
    assert await read(alice, vlob_id, version=2, timestamp=t1) == v2
    assert await read(alice, vlob_id, version=3) == {"status": "bad_version"}
    assert await read(alice, vlob_id, version=3, timestamp=t2) == {"status": "bad_version"}


@ok
async def test_read_bad_message(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id = await world.create_vlob(alice, realm_id)
    rep = await read(alice, vlob_id, version=0)
    assert rep["status"] == "bad_message"
    assert rep["errors"] == {"version": ["Must be at least 1."]}
    # `version` and `timestamp` are required keys.
    rep = await alice.cmd("vlob_read", encryption_revision=1, vlob_id=vlob_id, version=None)
    assert rep["status"] == "bad_message"
    rep = await alice.cmd("vlob_read", encryption_revision=1, vlob_id=vlob_id, timestamp=None)
    assert rep["status"] == "bad_message"
    rep = await alice.cmd("vlob_read", encryption_revision=1, vlob_id="x", version=None, timestamp=None)
    assert rep["status"] == "bad_message"


@ok
async def test_read_not_found(world, other_org):
    alice = await world.connect("alice@dev1")
    unknown = uuid4()
    assert await read(alice, unknown) == vlob_not_found(unknown)
    other = await world.connect("alice@dev1", org=other_org)
    other_realm = await world.create_realm(other)
    foreign = await world.create_vlob(other, other_realm)
    assert await read(alice, foreign) == vlob_not_found(foreign)


@ok
async def test_read_roles_and_revision(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id = await world.create_vlob(alice, realm_id, b"data")
    assert await read(bob, vlob_id) == {"status": "not_allowed"}
    for role in ("READER", "CONTRIBUTOR", "MANAGER", "OWNER"):
        await world.grant(alice, realm_id, "bob", role)
        assert (await read(bob, vlob_id))["blob"] == b"data"
    for revision in (0, 2, 42):
        assert await read(bob, vlob_id, revision=revision) == {"status": "bad_encryption_revision"}
    await world.grant(alice, realm_id, "bob", None)
    assert await read(bob, vlob_id) == {"status": "not_allowed"}
    # Production order: the realm state first.
    assert await read(bob, vlob_id, revision=42) == {"status": "bad_encryption_revision"}


@ok
async def test_read_author_last_role_granted_on(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    g1 = world.ts()
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR", timestamp=g1)
    vlob_id = await world.create_vlob(bob, realm_id)
    assert (await read(alice, vlob_id))["author_last_role_granted_on"] == g1
    # Whatever the latest certificate of the author's user, even a removal.
    g2 = world.ts()
    await world.grant(alice, realm_id, "bob", "MANAGER", timestamp=g2)
    assert (await read(alice, vlob_id))["author_last_role_granted_on"] == g2
    g3 = world.ts()
    await world.grant(alice, realm_id, "bob", None, timestamp=g3)
    rep = await read(alice, vlob_id)
    assert rep["author"] == "bob@dev1" and rep["author_last_role_granted_on"] == g3


# ---- vlob_update ---------------------------------------------------------------------------------


@ok
async def test_update(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    realm_id = await world.create_realm(alice)
    vlob_id = await world.create_vlob(alice, realm_id, b"v1")
    t2 = world.ts()
    assert await update(alice2, vlob_id, 2, t2, b"v2") == {"status": "ok"}
    rep = await read(alice, vlob_id)
    assert (rep["version"], rep["blob"], rep["author"], rep["timestamp"]) == (2, b"v2", "alice@dev2", t2)


@ok
async def test_update_bad_message_and_timestamp(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id = await world.create_vlob(alice, realm_id)
    rep = await update(alice, vlob_id, 0, world.ts())
    assert rep["status"] == "bad_message"
    rep = await alice.cmd("vlob_update", encryption_revision=1, vlob_id=vlob_id, version=2, timestamp=world.ts())
    assert rep["status"] == "bad_message"
    timestamp = now() - timedelta(seconds=71)
    rep = await update(alice, vlob_id, 2, timestamp)
    assert rep["status"] == "bad_timestamp" and rep["client_timestamp"] == timestamp
    # Ballpark before existence.
    rep = await update(alice, uuid4(), 2, timestamp)
    assert rep["status"] == "bad_timestamp"


@ok
async def test_update_not_found(world, other_org):
    alice = await world.connect("alice@dev1")
    unknown = uuid4()
    assert await update(alice, unknown, 2, world.ts()) == vlob_not_found(unknown)
    other = await world.connect("alice@dev1", org=other_org)
    foreign = await world.create_vlob(other, await world.create_realm(other))
    assert await update(alice, foreign, 2, world.ts()) == vlob_not_found(foreign)


@ok
async def test_update_bad_version(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id = await world.create_vlob(alice, realm_id)
    assert await update(alice, vlob_id, 2, world.ts()) == {"status": "ok"}
    for version in (1, 2, 4, 42):
        assert await update(alice, vlob_id, version, world.ts()) == {"status": "bad_version"}
    assert await update(alice, vlob_id, 3, world.ts()) == {"status": "ok"}


@ok
async def test_update_roles_and_revision(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id = await world.create_vlob(alice, realm_id)
    version = 1
    assert await update(bob, vlob_id, version + 1, world.ts()) == {"status": "not_allowed"}
    await world.grant(alice, realm_id, "bob", "READER")
    assert await update(bob, vlob_id, version + 1, world.ts()) == {"status": "not_allowed"}
    # Production order: the realm state before the role.
    assert await update(bob, vlob_id, version + 1, world.ts(), revision=42) == {"status": "bad_encryption_revision"}
    for role in WRITE_ROLES:
        await world.grant(alice, realm_id, "bob", role)
        version += 1
        assert await update(bob, vlob_id, version, world.ts()) == {"status": "ok"}
    for revision in (0, 2):
        assert await update(bob, vlob_id, version + 1, world.ts(), revision=revision) == {
            "status": "bad_encryption_revision"
        }
    await world.grant(alice, realm_id, "bob", None)
    assert await update(bob, vlob_id, version + 1, world.ts()) == {"status": "not_allowed"}


@ok
async def test_update_require_greater_timestamp(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    # Well after the realm creation, so that `t1 - 1 s` still satisfies the role rule.
    vlob_id, t1 = uuid4(), world.ts() + timedelta(seconds=10)
    assert await create(alice, realm_id, vlob_id, t1) == {"status": "ok"}
    # Older than the previous version.
    assert await update(alice, vlob_id, 2, t1 - timedelta(seconds=1)) == {
        "status": "require_greater_timestamp",
        "strictly_greater_than": t1,
    }
    # Equal is accepted.
    assert await update(alice, vlob_id, 2, t1) == {"status": "ok"}
    # Not after the author's latest role certificate.
    granted_on = world.ts() + timedelta(seconds=11)
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR", timestamp=granted_on)
    assert await update(bob, vlob_id, 3, granted_on) == {
        "status": "require_greater_timestamp",
        "strictly_greater_than": granted_on,
    }
    # The role rule comes before the version rule.
    assert await update(bob, vlob_id, 42, granted_on) == {
        "status": "require_greater_timestamp",
        "strictly_greater_than": granted_on,
    }
    assert await update(bob, vlob_id, 3, granted_on + US) == {"status": "ok"}


# ---- vlob_poll_changes ---------------------------------------------------------------------------


@ok
async def test_poll_changes(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    assert await alice.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0) == {
        "status": "ok",
        "changes": {},
        "current_checkpoint": 0,
    }
    vlob_id = await world.create_vlob(alice, realm_id)
    assert await update(alice, vlob_id, 2, world.ts()) == {"status": "ok"}
    for last in (0, 1):
        assert await alice.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=last) == {
            "status": "ok",
            "changes": {vlob_id: 2},
            "current_checkpoint": 2,
        }
    # Up to date, and beyond: the real current checkpoint.
    for last in (2, 3, 100):
        assert await alice.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=last) == {
            "status": "ok",
            "changes": {},
            "current_checkpoint": 2,
        }
    other_vlob = await world.create_vlob(alice, realm_id)
    assert await alice.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=2) == {
        "status": "ok",
        "changes": {other_vlob: 1},
        "current_checkpoint": 3,
    }
    assert await alice.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0) == {
        "status": "ok",
        "changes": {vlob_id: 2, other_vlob: 1},
        "current_checkpoint": 3,
    }
    # Checkpoints are per realm.
    other_realm = await world.create_realm(alice)
    await world.create_vlob(alice, other_realm)
    assert (await alice.cmd("vlob_poll_changes", realm_id=other_realm, last_checkpoint=0))["current_checkpoint"] == 1
    # Roles.
    assert await bob.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0) == {"status": "not_allowed"}
    await world.grant(alice, realm_id, "bob", "READER")
    assert (await bob.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0))["current_checkpoint"] == 3
    await world.grant(alice, realm_id, "bob", None)
    assert await bob.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0) == {"status": "not_allowed"}


@ok
async def test_poll_changes_errors(world, other_org):
    alice = await world.connect("alice@dev1")
    unknown = uuid4()
    assert await alice.cmd("vlob_poll_changes", realm_id=unknown, last_checkpoint=0) == realm_not_found(unknown)
    other = await world.connect("alice@dev1", org=other_org)
    foreign = await world.create_realm(other)
    assert await alice.cmd("vlob_poll_changes", realm_id=foreign, last_checkpoint=0) == realm_not_found(foreign)
    rep = await alice.cmd("vlob_poll_changes", realm_id=foreign)
    assert rep["status"] == "bad_message"
    rep = await alice.cmd("vlob_poll_changes", realm_id=foreign, last_checkpoint="0")
    assert rep["status"] == "bad_message"


# ---- vlob_list_versions --------------------------------------------------------------------------


@ok
async def test_list_versions(world, other_org):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id, t1 = uuid4(), world.ts()
    assert await create(alice, realm_id, vlob_id, t1) == {"status": "ok"}
    t2 = world.ts()
    assert await update(alice2, vlob_id, 2, t2) == {"status": "ok"}
    expected = {"status": "ok", "versions": {1: [t1, "alice@dev1"], 2: [t2, "alice@dev2"]}}
    assert await alice.cmd("vlob_list_versions", vlob_id=vlob_id) == expected
    assert await bob.cmd("vlob_list_versions", vlob_id=vlob_id) == {"status": "not_allowed"}
    for role in ("READER", "CONTRIBUTOR", "MANAGER", "OWNER"):
        await world.grant(alice, realm_id, "bob", role)
        assert await bob.cmd("vlob_list_versions", vlob_id=vlob_id) == expected
    await world.grant(alice, realm_id, "bob", None)
    assert await bob.cmd("vlob_list_versions", vlob_id=vlob_id) == {"status": "not_allowed"}
    unknown = uuid4()
    assert await alice.cmd("vlob_list_versions", vlob_id=unknown) == vlob_not_found(unknown)
    other = await world.connect("alice@dev1", org=other_org)
    assert await other.cmd("vlob_list_versions", vlob_id=vlob_id) == vlob_not_found(vlob_id)
    rep = await alice.cmd("vlob_list_versions", vlob_id=42)
    assert rep["status"] == "bad_message"


# ---- events --------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["alice@dev1", "bob@dev1"])
@ok
async def test_vlobs_updated_events(world, writer):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    bob = await world.connect("bob@dev1")
    bob2 = await world.connect("bob@dev2")
    carol = await world.connect("carol@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR")
    other_realm = await world.create_realm(alice)
    for client in (alice, alice2, bob, bob2, carol):
        await client.subscribe()
    author = {"alice@dev1": alice, "bob@dev1": bob}[writer]
    vlob_id = await world.create_vlob(author, realm_id)
    assert await update(author, vlob_id, 2, world.ts()) == {"status": "ok"}
    other_vlob = await world.create_vlob(alice, other_realm)
    created = {"event": "realm.vlobs_updated", "realm_id": realm_id, "checkpoint": 1, "src_id": vlob_id, "src_version": 1}
    updated = {**created, "checkpoint": 2, "src_version": 2}
    in_other_realm = {
        "event": "realm.vlobs_updated",
        "realm_id": other_realm,
        "checkpoint": 1,
        "src_id": other_vlob,
        "src_version": 1,
    }
    # Not to the writing device; to the other devices of members; not to non-members.
    for client in (alice, alice2, bob, bob2):
        expected = []
        if client is not author:
            expected += [created, updated]
        if client.user_id == "alice" and client is not alice:
            expected.append(in_other_realm)
        await world.expect_events(client, *expected)
    await world.sync(carol)
