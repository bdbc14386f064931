"""realm_create, realm_status, realm_stats, realm_get_role_certificates (docs/protocol/commands.md §9.1-§9.4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
import pytest_twisted

from tests.api.certgen import realm_role_certificate

ok = pytest_twisted.ensureDeferred

FROZEN_NOW = datetime(2024, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)


def not_found(realm_id) -> dict:
    return {"status": "not_found", "reason": f"Realm `{realm_id.hex}` doesn't exist"}


FRESH_STATUS = {
    "status": "ok",
    "in_maintenance": False,
    "maintenance_type": None,
    "maintenance_started_on": None,
    "maintenance_started_by": None,
    "encryption_revision": 1,
}


# ---- realm_create ------------------------------------------------------------------------------


@pytest.mark.parametrize("device_id", ["alice@dev1", "bob@dev1", "zoe@dev1"])  # ADMIN, STANDARD, OUTSIDER
@ok
async def test_create_ok_any_profile(world, device_id):
    client = await world.connect(device_id)
    realm_id = await world.create_realm(client)
    assert await client.cmd("realm_status", realm_id=realm_id) == FRESH_STATUS


@ok
async def test_create_bad_message(world):
    alice = await world.connect("alice@dev1")
    rep = await alice.cmd("realm_create")
    assert rep["status"] == "bad_message"
    assert rep["errors"] == {"role_certificate": ["Missing data for required field."]}
    rep = await alice.cmd("realm_create", role_certificate="not bytes")
    assert rep["status"] == "bad_message"


@ok
async def test_create_invalid_certification(world):
    alice = await world.connect("alice@dev1")
    bob = world.org.devices["bob@dev1"]
    realm_id = uuid4()
    # Signed by another user's key.
    forged = bob.realm_role_certificate(
        realm_id=realm_id, user_id="alice", role="OWNER", timestamp=world.ts(), author="alice@dev1"
    )
    assert await alice.cmd("realm_create", role_certificate=forged) == {
        "status": "invalid_certification",
        "reason": "Invalid certification data (Signature was forged or corrupt).",
    }
    # Right key, wrong author field.
    wrong_author = alice.device.realm_role_certificate(
        realm_id=realm_id, user_id="alice", role="OWNER", timestamp=world.ts(), author="alice@dev2"
    )
    assert await alice.cmd("realm_create", role_certificate=wrong_author) == {
        "status": "invalid_certification",
        "reason": "Invalid certification data (Invalid author: expected `alice@dev1`, got `alice@dev2`).",
    }
    garbage = await alice.cmd("realm_create", role_certificate=b"garbage")
    assert garbage["status"] == "invalid_certification"
    # Nothing was created.
    assert await alice.cmd("realm_status", realm_id=realm_id) == not_found(realm_id)


@ok
async def test_create_invalid_data(world):
    alice = await world.connect("alice@dev1")
    realm_id = uuid4()
    cert = alice.device.realm_role_certificate(realm_id=realm_id, user_id="bob", role="OWNER", timestamp=world.ts())
    assert await alice.cmd("realm_create", role_certificate=cert) == {
        "status": "invalid_data",
        "reason": "Initial realm role certificate must be self-signed.",
    }
    for role in ("MANAGER", "CONTRIBUTOR", "READER", None):
        cert = alice.device.realm_role_certificate(
            realm_id=realm_id, user_id="alice", role=role, timestamp=world.ts()
        )
        assert await alice.cmd("realm_create", role_certificate=cert) == {
            "status": "invalid_data",
            "reason": "Initial realm role certificate must set OWNER role.",
        }
    assert await alice.cmd("realm_status", realm_id=realm_id) == not_found(realm_id)


@pytest.mark.parametrize(
    "offset, accepted",
    [
        (timedelta(seconds=-70), False),
        (timedelta(seconds=-70) + US, True),
        (timedelta(seconds=50), False),
        (timedelta(seconds=50) - US, True),
        (timedelta(days=-365), False),
    ],
)
@ok
async def test_create_ballpark(world, offset, accepted):
    alice = await world.connect("alice@dev1")
    world.app.now = lambda: FROZEN_NOW
    timestamp = FROZEN_NOW + offset
    cert = alice.device.realm_role_certificate(realm_id=uuid4(), user_id="alice", role="OWNER", timestamp=timestamp)
    rep = await alice.cmd("realm_create", role_certificate=cert)
    if accepted:
        assert rep == {"status": "ok"}
    else:
        assert rep == {
            "status": "bad_timestamp",
            "ballpark_client_early_offset": 50.0,
            "ballpark_client_late_offset": 70.0,
            "backend_timestamp": FROZEN_NOW,
            "client_timestamp": timestamp,
        }


@ok
async def test_create_already_exists(world, other_org):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    cert = alice.device.realm_role_certificate(realm_id=realm_id, user_id="alice", role="OWNER", timestamp=world.ts())
    assert await alice.cmd("realm_create", role_certificate=cert) == {"status": "already_exists"}
    # Also for another user of the organization.
    cert = bob.device.realm_role_certificate(realm_id=realm_id, user_id="bob", role="OWNER", timestamp=world.ts())
    assert await bob.cmd("realm_create", role_certificate=cert) == {"status": "already_exists"}
    assert await bob.cmd("realm_status", realm_id=realm_id) == {"status": "not_allowed"}
    # The same id is free in another organization.
    other = await world.connect("alice@dev1", org=other_org)
    assert await world.create_realm(other, realm_id) == realm_id


# ---- realm_status / realm_stats / realm_get_role_certificates: common errors -------------------


@pytest.mark.parametrize("cmd", ["realm_status", "realm_stats", "realm_get_role_certificates"])
@ok
async def test_read_commands_errors(world, other_org, cmd):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)

    assert (await alice.cmd(cmd, realm_id=realm_id))["status"] == "ok"
    # Another device of the member.
    alice2 = await world.connect("alice@dev2")
    assert (await alice2.cmd(cmd, realm_id=realm_id))["status"] == "ok"
    # Not a member.
    assert await bob.cmd(cmd, realm_id=realm_id) == {"status": "not_allowed"}
    # Unknown realm, and a realm of another organization.
    unknown = uuid4()
    assert await alice.cmd(cmd, realm_id=unknown) == not_found(unknown)
    other = await world.connect("alice@dev1", org=other_org)
    assert await other.cmd(cmd, realm_id=realm_id) == not_found(realm_id)
    # Malformed.
    rep = await alice.cmd(cmd, realm_id="not an uuid")
    assert rep["status"] == "bad_message"
    rep = await alice.cmd(cmd)
    assert rep["status"] == "bad_message"

    # Any role is enough; removing it removes access.
    for role in ("READER", "CONTRIBUTOR", "MANAGER", "OWNER"):
        await world.grant(alice, realm_id, "bob", role)
        assert (await bob.cmd(cmd, realm_id=realm_id))["status"] == "ok"
    await world.grant(alice, realm_id, "bob", None)
    assert await bob.cmd(cmd, realm_id=realm_id) == {"status": "not_allowed"}


@ok
async def test_status_as_reader(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "READER")
    assert await bob.cmd("realm_status", realm_id=realm_id) == FRESH_STATUS


@ok
async def test_get_role_certificates(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = uuid4()
    creation = alice.device.realm_role_certificate(
        realm_id=realm_id, user_id="alice", role="OWNER", timestamp=world.ts()
    )
    assert await alice.cmd("realm_create", role_certificate=creation) == {"status": "ok"}
    assert await alice.cmd("realm_get_role_certificates", realm_id=realm_id) == {
        "status": "ok",
        "certificates": [creation],
    }

    c3 = world.role_certificate(alice, realm_id, "bob", "MANAGER")
    c4 = world.role_certificate(alice, realm_id, "carol", "READER")
    c5 = world.role_certificate(bob, realm_id, "carol", "CONTRIBUTOR")
    c6 = world.role_certificate(alice, realm_id, "bob", None)
    for author, cert in ((alice, c3), (alice, c4), (bob, c5), (alice, c6)):
        assert await author.cmd("realm_update_roles", role_certificate=cert, recipient_message=None) == {
            "status": "ok"
        }
    carol = await world.connect("carol@dev1")
    expected = {"status": "ok", "certificates": [creation, c3, c4, c5, c6]}
    assert await alice.cmd("realm_get_role_certificates", realm_id=realm_id) == expected
    assert await carol.cmd("realm_get_role_certificates", realm_id=realm_id) == expected
    # bob's role was removed.
    assert await bob.cmd("realm_get_role_certificates", realm_id=realm_id) == {"status": "not_allowed"}


@ok
async def test_realm_stats(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    assert await alice.cmd("realm_stats", realm_id=realm_id) == {"status": "ok", "blocks_size": 0, "vlobs_size": 0}
    rep = await alice.cmd("block_create", block_id=uuid4(), realm_id=realm_id, block=b"1234")
    assert rep == {"status": "ok"}
    assert await alice.cmd("realm_stats", realm_id=realm_id) == {"status": "ok", "blocks_size": 4, "vlobs_size": 0}
    vlob_id = await world.create_vlob(alice, realm_id, b"1234")
    assert await alice.cmd("realm_stats", realm_id=realm_id) == {"status": "ok", "blocks_size": 4, "vlobs_size": 4}
    # Every version counts.
    rep = await alice.cmd(
        "vlob_update", encryption_revision=1, vlob_id=vlob_id, version=2, timestamp=world.ts(), blob=b"123456"
    )
    assert rep == {"status": "ok"}
    assert await alice.cmd("realm_stats", realm_id=realm_id) == {"status": "ok", "blocks_size": 4, "vlobs_size": 10}
    # Other realms are not counted.
    other_realm = await world.create_realm(alice)
    assert await alice.cmd("realm_stats", realm_id=other_realm) == {"status": "ok", "blocks_size": 0, "vlobs_size": 0}


@ok
async def test_role_certificate_with_unknown_fields_and_odd_types(world):
    """The realm role certificate is checked by the shared certificate loader: a certificate
    whose `role` is not a known role is refused as invalid certification."""
    alice = await world.connect("alice@dev1")
    cert = realm_role_certificate(
        alice.device.signing_key,
        author="alice@dev1",
        realm_id=uuid4(),
        user_id="alice",
        role="KING",
        timestamp=world.ts(),
    )
    rep = await alice.cmd("realm_create", role_certificate=cert)
    assert rep["status"] == "invalid_certification"
