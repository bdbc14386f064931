"""realm_update_roles (docs/protocol/commands.md §9.5): every status, the role matrix, causality."""

from __future__ import annotations

import itertools
from datetime import timedelta
from uuid import uuid4

import pytest
import pytest_twisted

from tests.orgs import now

ok = pytest_twisted.ensureDeferred

ROLES = ["OWNER", "MANAGER", "CONTRIBUTOR", "READER", None]


def realm_not_found(realm_id) -> dict:
    return {"status": "not_found", "reason": f"Realm `{realm_id.hex}` doesn't exist"}


async def revoke(world, user_id: str) -> None:
    admin = await world.connect("alice@dev1")
    cert = admin.device.revoked_user_certificate(user_id=user_id, timestamp=now())
    assert await admin.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}


# ---- statuses ----------------------------------------------------------------------------------


@ok
async def test_outsider_author_refused_before_schema(world):
    alice = await world.connect("alice@dev1")
    zoe = await world.connect("zoe@dev1")
    realm_id = await world.create_realm(zoe)
    expected = {"status": "not_allowed", "reason": "Outsider user cannot share realm"}
    # Garbage and missing fields: still refused on the profile.
    assert await zoe.cmd("realm_update_roles") == expected
    assert await zoe.cmd("realm_update_roles", role_certificate=42) == expected
    # A valid request too, even on the outsider's own realm.
    assert await world.share(zoe, realm_id, "alice", "READER") == expected
    assert await alice.cmd("realm_status", realm_id=realm_id) == {"status": "not_allowed"}


@ok
async def test_bad_message(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    cert = world.role_certificate(alice, realm_id, "bob", "READER")
    # `recipient_message` is a required key (nil allowed).
    rep = await alice.cmd("realm_update_roles", role_certificate=cert)
    assert rep["status"] == "bad_message"
    assert rep["errors"] == {"recipient_message": ["Missing data for required field."]}
    rep = await alice.cmd("realm_update_roles", role_certificate=cert, recipient_message="str")
    assert rep["status"] == "bad_message"
    rep = await alice.cmd("realm_update_roles", recipient_message=None)
    assert rep["status"] == "bad_message"


@ok
async def test_invalid_certification(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    bob = world.org.devices["bob@dev1"]
    forged = bob.realm_role_certificate(
        realm_id=realm_id, user_id="carol", role="READER", timestamp=world.ts(), author="alice@dev1"
    )
    assert await alice.cmd("realm_update_roles", role_certificate=forged, recipient_message=None) == {
        "status": "invalid_certification",
        "reason": "Invalid certification data (Signature was forged or corrupt).",
    }
    rep = await alice.cmd("realm_update_roles", role_certificate=b"", recipient_message=None)
    assert rep["status"] == "invalid_certification"


@ok
async def test_bad_timestamp(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    for delta in (timedelta(seconds=-70), timedelta(seconds=51)):
        timestamp = now() + delta
        rep = await world.share(alice, realm_id, "bob", "READER", timestamp=timestamp)
        assert rep["status"] == "bad_timestamp"
        assert set(rep) == {
            "status",
            "ballpark_client_early_offset",
            "ballpark_client_late_offset",
            "backend_timestamp",
            "client_timestamp",
        }
        assert rep["client_timestamp"] == timestamp
        assert rep["ballpark_client_early_offset"] == 50.0
        assert rep["ballpark_client_late_offset"] == 70.0


@ok
async def test_self_signed(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    for role in ROLES:
        assert await world.share(alice, realm_id, "alice", role) == {
            "status": "invalid_data",
            "reason": "Realm role certificate cannot be self-signed.",
        }


@ok
async def test_unknown_user_and_realm(world, other_org):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    assert await world.share(alice, realm_id, "nobody", "READER") == {
        "status": "not_found",
        "reason": "User `nobody` doesn't exist",
    }
    unknown = uuid4()
    assert await world.share(alice, unknown, "bob", "READER") == realm_not_found(unknown)
    # User of another organization / realm of another organization.
    other_alice = await world.connect("alice@dev1", org=other_org)
    await other_org.new_user("alice@dev1", "dave@dev1")
    assert await world.share(alice, realm_id, "dave", "READER") == {
        "status": "not_found",
        "reason": "User `dave` doesn't exist",
    }
    other_realm = await world.create_realm(other_alice)
    assert await world.share(alice, other_realm, "bob", "READER") == realm_not_found(other_realm)


@ok
async def test_incompatible_profile(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    for role in ("OWNER", "MANAGER"):
        assert await world.share(alice, realm_id, "zoe", role) == {
            "status": "incompatible_profile",
            "reason": "User with OUTSIDER profile cannot be MANAGER or OWNER",
        }
    # Checked before the realm (production order).
    unknown = uuid4()
    rep = await world.share(alice, unknown, "zoe", "MANAGER")
    assert rep["status"] == "incompatible_profile"
    for role in ("READER", "CONTRIBUTOR", None):
        await world.grant(alice, realm_id, "zoe", role)


@pytest.mark.parametrize("api_version", [(2, 7), (3, 0), (3, 1)])
@ok
async def test_user_revoked(world, api_version):
    """API 3.1 status, sent to every 2.x/3.x client alike."""
    alice = await world.connect("alice@dev1", api_version=api_version)
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "READER")
    await revoke(world, "bob")
    for role in ROLES:  # granting, changing and removing
        assert await world.share(alice, realm_id, "bob", role) == {"status": "user_revoked"}
    # Checked after the profile (production order) and before the realm.
    await world.new_user("yann@dev1", profile="OUTSIDER")
    await revoke(world, "yann")
    assert (await world.share(alice, realm_id, "yann", "OWNER"))["status"] == "incompatible_profile"
    assert await world.share(alice, realm_id, "yann", "READER") == {"status": "user_revoked"}
    assert await world.share(alice, uuid4(), "yann", "READER") == {"status": "user_revoked"}


@ok
async def test_in_maintenance(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "READER")
    rep = await alice.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=realm_id,
        encryption_revision=2,
        timestamp=world.ts(),
        per_participant_message={"alice": b"a", "bob": b"b"},
    )
    assert rep == {"status": "ok"}
    for user_id, role in (("bob", "CONTRIBUTOR"), ("bob", None), ("carol", "READER"), ("bob", "READER")):
        assert await world.share(alice, realm_id, user_id, role) == {"status": "in_maintenance"}
    rep = await alice.cmd("realm_finish_reencryption_maintenance", realm_id=realm_id, encryption_revision=2)
    assert rep == {"status": "ok"}
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR")


@ok
async def test_already_granted(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    # Removing a role never given.
    assert await world.share(alice, realm_id, "bob", None) == {"status": "already_granted"}
    await world.grant(alice, realm_id, "bob", "READER")
    assert await world.share(alice, realm_id, "bob", "READER") == {"status": "already_granted"}
    await world.grant(alice, realm_id, "bob", None)
    assert await world.share(alice, realm_id, "bob", None) == {"status": "already_granted"}


@ok
async def test_owner_gives_and_removes_every_role(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    for role in ("READER", "CONTRIBUTOR", "MANAGER", "OWNER", "READER", "OWNER"):
        await world.grant(alice, realm_id, "bob", role)
        assert (await bob.cmd("realm_status", realm_id=realm_id))["status"] == "ok"
    await world.grant(alice, realm_id, "bob", None)
    assert await bob.cmd("realm_get_role_certificates", realm_id=realm_id) == {"status": "not_allowed"}


# ---- the role matrix ---------------------------------------------------------------------------


def expected_status(author_role, target_role, new_role) -> str:
    """Independent statement of the rule (docs/protocol/commands.md §9.5 steps 11-12)."""
    if author_role == "OWNER":
        allowed = True
    elif author_role == "MANAGER":
        allowed = target_role not in ("OWNER", "MANAGER") and new_role not in ("OWNER", "MANAGER")
    else:
        allowed = False
    if not allowed:
        return "not_allowed"
    if new_role == target_role:
        return "already_granted"
    return "ok"


@pytest.mark.parametrize("author_role", ROLES, ids=lambda r: str(r))
@ok
async def test_role_matrix(world, author_role):
    """author role x target's current role x new role, each on a fresh realm owned by alice,
    with bob as the author and carol as the target."""
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    carol = await world.connect("carol@dev1")
    for target_role, new_role in itertools.product(ROLES, ROLES):
        realm_id = await world.create_realm(alice)
        if author_role is not None:
            await world.grant(alice, realm_id, "bob", author_role)
        if target_role is not None:
            await world.grant(alice, realm_id, "carol", target_role)
        rep = await world.share(bob, realm_id, "carol", new_role)
        expected = expected_status(author_role, target_role, new_role)
        assert rep == {"status": expected}, (author_role, target_role, new_role)
        # The target's access follows the outcome.
        final_role = new_role if expected == "ok" else target_role
        rep = await carol.cmd("realm_status", realm_id=realm_id)
        assert rep["status"] == ("ok" if final_role is not None else "not_allowed"), (
            author_role,
            target_role,
            new_role,
        )


# ---- causality ---------------------------------------------------------------------------------


@ok
async def test_require_greater_than_previous_certificate(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    granted_on = world.ts()
    await world.grant(alice, realm_id, "bob", "READER", timestamp=granted_on)
    for timestamp in (granted_on, granted_on - timedelta(seconds=1)):
        assert await world.share(alice, realm_id, "bob", "CONTRIBUTOR", timestamp=timestamp) == {
            "status": "require_greater_timestamp",
            "strictly_greater_than": granted_on,
        }
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR", timestamp=granted_on + timedelta(microseconds=1))


@ok
async def test_require_greater_than_target_vlob_write(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR")
    before = world.ts()
    written_on = world.ts()
    rep = await bob.cmd(
        "vlob_create", realm_id=realm_id, encryption_revision=1, vlob_id=uuid4(), timestamp=written_on, blob=b"x"
    )
    assert rep == {"status": "ok"}
    # Demoting to READER (or removing) before the write is refused ...
    for role in ("READER", None):
        assert await world.share(alice, realm_id, "bob", role, timestamp=before) == {
            "status": "require_greater_timestamp",
            "strictly_greater_than": written_on,
        }
    # ... while roles that keep write access don't care about vlob writes.
    await world.grant(alice, realm_id, "bob", "MANAGER", timestamp=before)
    # After the write it is fine.
    await world.grant(alice, realm_id, "bob", "READER")


@ok
async def test_require_greater_than_target_role_change(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "MANAGER")
    before = world.ts()
    ref = world.ts()
    await world.grant(bob, realm_id, "carol", "READER", timestamp=ref)
    # Removing bob's management rights before he granted a role is refused.
    for role in ("CONTRIBUTOR", "READER", None):
        assert await world.share(alice, realm_id, "bob", role, timestamp=before) == {
            "status": "require_greater_timestamp",
            "strictly_greater_than": ref,
        }
    # OWNER keeps management rights.
    await world.grant(alice, realm_id, "bob", "OWNER", timestamp=before)
    await world.grant(alice, realm_id, "bob", None)


# ---- effects: messages and events --------------------------------------------------------------


@ok
async def test_message_and_events(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    bob = await world.connect("bob@dev1")
    bob2 = await world.connect("bob@dev2")
    carol = await world.connect("carol@dev1")
    for client in (alice, alice2, bob, bob2, carol):
        await client.subscribe()
    realm_id = await world.create_realm(alice)
    created = {"event": "realm.roles_updated", "realm_id": realm_id, "role": "OWNER"}
    await world.expect_events(alice, created)
    await world.expect_events(alice2, created)

    granted_on = world.ts()
    await world.grant(alice, realm_id, "bob", "MANAGER", timestamp=granted_on, message=b"welcome")
    for client in (bob, bob2):
        await world.expect_events(
            client,
            {"event": "realm.roles_updated", "realm_id": realm_id, "role": "MANAGER"},
            {"event": "message.received", "index": 1},
        )
    assert await bob2.cmd("message_get", offset=0) == {
        "status": "ok",
        "messages": [{"count": 1, "sender": "alice@dev1", "timestamp": granted_on, "body": b"welcome"}],
    }
    # The author and unrelated users hear nothing.
    for client in (alice, alice2, carol):
        await world.sync(client)

    # nil and empty messages store nothing.
    await world.grant(alice, realm_id, "bob", "READER", message=b"")
    await world.grant(alice, realm_id, "bob", None, message=None)
    for client in (bob, bob2):
        await world.expect_events(
            client,
            {"event": "realm.roles_updated", "realm_id": realm_id, "role": "READER"},
            {"event": "realm.roles_updated", "realm_id": realm_id, "role": None},
        )
    assert len((await bob.cmd("message_get", offset=0))["messages"]) == 1
