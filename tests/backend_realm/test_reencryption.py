"""Re-encryption maintenance: realm_start/finish_reencryption_maintenance (§9.6, §9.7),
vlob_maintenance_get/save_reencryption_batch (§10.7, §10.8) and the vlob/block rules during a
maintenance (§10.1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
import pytest_twisted

from tests.orgs import now

ok = pytest_twisted.ensureDeferred


def realm_not_found(realm_id) -> dict:
    return {"status": "not_found", "reason": f"Realm `{realm_id.hex}` doesn't exist"}


def not_in_maintenance(realm_id) -> dict:
    return {"status": "not_in_maintenance", "reason": f"Realm `{realm_id.hex}` not under maintenance"}


async def start(world, client, realm_id, revision=2, messages=None, timestamp=None) -> dict:
    return await client.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=realm_id,
        encryption_revision=revision,
        timestamp=timestamp or world.ts(),
        per_participant_message=messages if messages is not None else {client.user_id: b"key"},
    )


async def finish(client, realm_id, revision=2) -> dict:
    return await client.cmd("realm_finish_reencryption_maintenance", realm_id=realm_id, encryption_revision=revision)


async def get_batch(client, realm_id, revision=2, size=100) -> dict:
    return await client.cmd(
        "vlob_maintenance_get_reencryption_batch", realm_id=realm_id, encryption_revision=revision, size=size
    )


async def save_batch(client, realm_id, batch, revision=2) -> dict:
    return await client.cmd(
        "vlob_maintenance_save_reencryption_batch", realm_id=realm_id, encryption_revision=revision, batch=batch
    )


async def read(client, vlob_id, revision, version=None, timestamp=None) -> dict:
    return await client.cmd(
        "vlob_read", encryption_revision=revision, vlob_id=vlob_id, version=version, timestamp=timestamp
    )


# ---- realm_start_reencryption_maintenance --------------------------------------------------------


@ok
async def test_start_ok_messages_and_status(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "READER")
    timestamp = world.ts()
    rep = await start(world, alice, realm_id, messages={"alice": b"for alice", "bob": b"for bob"}, timestamp=timestamp)
    assert rep == {"status": "ok"}
    assert await bob.cmd("realm_status", realm_id=realm_id) == {
        "status": "ok",
        "in_maintenance": True,
        "maintenance_type": "REENCRYPTION",
        "maintenance_started_on": timestamp,
        "maintenance_started_by": "alice@dev1",
        "encryption_revision": 2,
    }
    assert await bob.cmd("message_get", offset=0) == {
        "status": "ok",
        "messages": [{"count": 1, "sender": "alice@dev1", "timestamp": timestamp, "body": b"for bob"}],
    }
    assert await alice.cmd("message_get", offset=0) == {
        "status": "ok",
        "messages": [{"count": 1, "sender": "alice@dev1", "timestamp": timestamp, "body": b"for alice"}],
    }
    # A second start, whatever the revision.
    for revision in (2, 3):
        assert await start(world, alice, realm_id, revision, {"alice": b"", "bob": b""}) == {"status": "in_maintenance"}


@ok
async def test_start_bad_message(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    rep = await alice.cmd(
        "realm_start_reencryption_maintenance", realm_id=realm_id, encryption_revision=2, timestamp=world.ts()
    )
    assert rep["status"] == "bad_message"
    rep = await start(world, alice, realm_id, messages={"not a valid user id!": b"x"})
    assert rep["status"] == "bad_message"
    rep = await start(world, alice, realm_id, messages={"alice": "not bytes"})
    assert rep["status"] == "bad_message"


@ok
async def test_start_bad_timestamp(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    timestamp = datetime(2000, 1, 1, tzinfo=UTC)
    rep = await start(world, alice, realm_id, timestamp=timestamp)
    assert rep["status"] == "bad_timestamp"
    assert rep["client_timestamp"] == timestamp
    assert set(rep) == {
        "status",
        "ballpark_client_early_offset",
        "ballpark_client_late_offset",
        "backend_timestamp",
        "client_timestamp",
    }
    # Checked before the realm exists.
    rep = await start(world, alice, uuid4(), timestamp=timestamp)
    assert rep["status"] == "bad_timestamp"


@ok
async def test_start_not_found(world, other_org):
    alice = await world.connect("alice@dev1")
    unknown = uuid4()
    assert await start(world, alice, unknown) == realm_not_found(unknown)
    other = await world.connect("alice@dev1", org=other_org)
    other_realm = await world.create_realm(other)
    assert await start(world, alice, other_realm) == realm_not_found(other_realm)


@ok
async def test_start_bad_encryption_revision(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    for revision in (0, 1, 3, 42):
        assert await start(world, alice, realm_id, revision) == {"status": "bad_encryption_revision"}


@pytest.mark.parametrize("role", ["MANAGER", "CONTRIBUTOR", "READER", None], ids=str)
@ok
async def test_start_and_finish_need_owner(world, role):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    if role is not None:
        await world.grant(alice, realm_id, "bob", role)
    participants = {"alice": b"", "bob": b""} if role is not None else {"alice": b""}
    assert await start(world, bob, realm_id, messages=participants) == {"status": "not_allowed"}
    assert await start(world, alice, realm_id, messages=participants) == {"status": "ok"}
    assert await finish(bob, realm_id) == {"status": "not_allowed"}
    assert await get_batch(bob, realm_id) == {"status": "not_allowed"}
    assert await save_batch(bob, realm_id, []) == {"status": "not_allowed"}
    assert await finish(alice, realm_id) == {"status": "ok"}


@ok
async def test_start_participants_mismatch(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "READER")
    await world.grant(alice, realm_id, "carol", "READER")
    await world.grant(alice, realm_id, "carol", None)  # former member
    await world.grant(alice, realm_id, "zoe", "READER")
    # zoe becomes a revoked member.
    cert = alice.device.revoked_user_certificate(user_id="zoe", timestamp=now())
    assert await alice.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    mismatch = {"status": "participants_mismatch", "reason": "Realm participants and message recipients mismatch"}
    for messages in (
        {},
        {"alice": b""},  # missing bob
        {"alice": b"", "bob": b"", "carol": b""},  # former member
        {"alice": b"", "bob": b"", "nobody": b""},  # unknown user
        {"alice": b"", "bob": b"", "zoe": b""},  # revoked member
    ):
        assert await start(world, alice, realm_id, messages=messages) == mismatch
    assert await start(world, alice, realm_id, messages={"bob": b"", "alice": b""}) == {"status": "ok"}


# ---- realm_finish_reencryption_maintenance -------------------------------------------------------


@ok
async def test_finish_statuses(world, other_org):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    await world.create_vlob(alice, realm_id, b"a")
    await world.create_vlob(alice, realm_id, b"b")
    unknown = uuid4()
    assert await finish(alice, unknown) == realm_not_found(unknown)
    other = await world.connect("alice@dev1", org=other_org)
    assert await finish(other, realm_id) == realm_not_found(realm_id)
    for revision in (1, 2, 3):
        assert await finish(alice, realm_id, revision) == not_in_maintenance(realm_id)
    assert await start(world, alice, realm_id) == {"status": "ok"}
    for revision in (1, 3):
        assert await finish(alice, realm_id, revision) == {"status": "bad_encryption_revision"}
    not_over = {"status": "maintenance_error", "reason": "Reencryption operations are not over"}
    assert await finish(alice, realm_id) == not_over
    batch = (await get_batch(alice, realm_id, size=1))["batch"]
    assert await save_batch(alice, realm_id, [{**batch[0], "blob": b"A"}]) == {"status": "ok", "total": 2, "done": 1}
    assert await finish(alice, realm_id) == not_over
    batch = (await get_batch(alice, realm_id))["batch"]
    assert await save_batch(alice, realm_id, [{**batch[0], "blob": b"B"}]) == {"status": "ok", "total": 2, "done": 2}
    assert await finish(alice, realm_id) == {"status": "ok"}
    assert await alice.cmd("realm_status", realm_id=realm_id) == {
        "status": "ok",
        "in_maintenance": False,
        "maintenance_type": None,
        "maintenance_started_on": None,
        "maintenance_started_by": None,
        "encryption_revision": 2,
    }
    assert await finish(alice, realm_id) == not_in_maintenance(realm_id)
    rep = await alice.cmd("realm_finish_reencryption_maintenance", realm_id=realm_id)
    assert rep["status"] == "bad_message"


@ok
async def test_finish_realm_without_vlobs(world):
    """docs/protocol/DECISIONS.md: nothing to re-encrypt means finished."""
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    assert await start(world, alice, realm_id) == {"status": "ok"}
    assert await get_batch(alice, realm_id) == {"status": "ok", "batch": []}
    assert await save_batch(alice, realm_id, []) == {"status": "ok", "total": 0, "done": 0}
    assert await finish(alice, realm_id) == {"status": "ok"}
    # And again, at the next revision.
    assert await start(world, alice, realm_id, 3) == {"status": "ok"}
    assert await finish(alice, realm_id, 3) == {"status": "ok"}


# ---- batches -------------------------------------------------------------------------------------


@ok
async def test_batch_statuses(world, other_org):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    for cmd_call in (lambda r, rev: get_batch(alice, r, rev), lambda r, rev: save_batch(alice, r, [], rev)):
        assert await cmd_call(realm_id, 1) == not_in_maintenance(realm_id)
        assert await cmd_call(realm_id, 2) == not_in_maintenance(realm_id)
        unknown = uuid4()
        assert await cmd_call(unknown, 2) == realm_not_found(unknown)
    assert await start(world, alice, realm_id) == {"status": "ok"}
    for revision in (1, 3):
        assert await get_batch(alice, realm_id, revision) == {"status": "bad_encryption_revision"}
        assert await save_batch(alice, realm_id, [], revision) == {"status": "bad_encryption_revision"}
    # Size bounds.
    rep = await get_batch(alice, realm_id, size=1001)
    assert rep["status"] == "bad_message"
    rep = await get_batch(alice, realm_id, size=-1)
    assert rep["status"] == "bad_message"
    assert await get_batch(alice, realm_id, size=1000) == {"status": "ok", "batch": []}
    rep = await save_batch(alice, realm_id, [{"vlob_id": uuid4(), "version": "one", "blob": b""}])
    assert rep["status"] == "bad_message"
    other = await world.connect("alice@dev1", org=other_org)
    assert await get_batch(other, realm_id) == realm_not_found(realm_id)


@ok
async def test_batches(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR")
    v1 = await world.create_vlob(alice, realm_id, b"v1 r1")
    v2 = await world.create_vlob(bob, realm_id, b"v2 r1")
    t_update = world.ts()
    rep = await alice.cmd(
        "vlob_update", encryption_revision=1, vlob_id=v1, version=2, timestamp=t_update, blob=b"v1 r1 bis"
    )
    assert rep == {"status": "ok"}
    other_realm = await world.create_realm(alice)
    foreign = await world.create_vlob(alice, other_realm, b"foreign")
    versions_before = await alice.cmd("vlob_list_versions", vlob_id=v1)

    assert await start(world, alice, realm_id, messages={"alice": b"", "bob": b""}) == {"status": "ok"}
    assert await get_batch(alice, realm_id, size=0) == {"status": "ok", "batch": []}
    first = await get_batch(alice, realm_id, size=2)
    assert first["status"] == "ok" and len(first["batch"]) == 2
    everything = (await get_batch(alice, realm_id, size=100))["batch"]
    expected_atoms = {(v1, 1, b"v1 r1"), (v1, 2, b"v1 r1 bis"), (v2, 1, b"v2 r1")}
    assert {(e["vlob_id"], e["version"], e["blob"]) for e in everything} == expected_atoms
    # Stable order: asking again gives the same first entries.
    assert (await get_batch(alice, realm_id, size=2))["batch"] == first["batch"]

    def reencrypted(entries):
        return [{**e, "blob": e["blob"].replace(b"r1", b"r2")} for e in entries]

    assert await save_batch(alice, realm_id, reencrypted(first["batch"])) == {"status": "ok", "total": 3, "done": 2}
    rest = await get_batch(alice, realm_id, size=2)
    assert len(rest["batch"]) == 1
    assert rest["batch"][0] not in first["batch"]
    # Unknown vlob, unknown version, a vlob of another realm, and duplicates are ignored;
    # first write wins.
    junk = [
        {"vlob_id": uuid4(), "version": 1, "blob": b"junk"},
        {"vlob_id": v1, "version": 3, "blob": b"junk"},
        {"vlob_id": v2, "version": 0, "blob": b"junk"},
        {"vlob_id": foreign, "version": 1, "blob": b"junk"},
        {**first["batch"][0], "blob": b"junk"},
    ]
    for _ in range(2):
        assert await save_batch(alice, realm_id, reencrypted(rest["batch"]) + junk) == {
            "status": "ok",
            "total": 3,
            "done": 3,
        }
    assert await save_batch(alice, realm_id, []) == {"status": "ok", "total": 3, "done": 3}
    assert await get_batch(alice, realm_id) == {"status": "ok", "batch": []}
    assert await finish(alice, realm_id) == {"status": "ok"}

    # Revision 2 serves the re-encrypted blobs with the original authors and timestamps.
    for vlob_id, version, blob in expected_atoms:
        rep = await read(bob, vlob_id, 2, version=version)
        assert rep["status"] == "ok"
        assert rep["blob"] == blob.replace(b"r1", b"r2")
    rep = await read(alice, v1, 2)
    assert rep["version"] == 2 and rep["timestamp"] == t_update and rep["author"] == "alice@dev1"
    assert (await read(alice, v2, 2))["author"] == "bob@dev1"
    assert await alice.cmd("vlob_list_versions", vlob_id=v1) == versions_before
    # The old revision is gone; the other realm is untouched.
    assert await read(alice, v1, 1) == {"status": "bad_encryption_revision"}
    assert (await read(alice, foreign, 1))["blob"] == b"foreign"
    # Writes go on at revision 2.
    rep = await alice.cmd("vlob_update", encryption_revision=2, vlob_id=v1, version=3, timestamp=world.ts(), blob=b"3")
    assert rep == {"status": "ok"}
    rep = await alice.cmd("vlob_update", encryption_revision=1, vlob_id=v1, version=4, timestamp=world.ts(), blob=b"4")
    assert rep == {"status": "bad_encryption_revision"}


# ---- vlob and block rules during a re-encryption ------------------------------------------------


@ok
async def test_vlob_and_block_commands_during_reencryption(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    vlob_id = await world.create_vlob(alice, realm_id, b"v1")
    block_id = uuid4()
    assert await alice.cmd("block_create", block_id=block_id, realm_id=realm_id, block=b"data") == {"status": "ok"}
    assert await start(world, alice, realm_id) == {"status": "ok"}

    # Reads: previous revision only.
    rep = await read(alice, vlob_id, 1)
    assert rep["status"] == "ok" and rep["blob"] == b"v1"
    assert await read(alice, vlob_id, 2) == {"status": "in_maintenance"}
    assert await read(alice, vlob_id, 3) == {"status": "bad_encryption_revision"}
    assert await read(alice, vlob_id, 0) == {"status": "bad_encryption_revision"}
    rep = await alice.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0)
    assert rep == {"status": "ok", "changes": {vlob_id: 1}, "current_checkpoint": 1}
    rep = await alice.cmd("vlob_list_versions", vlob_id=vlob_id)
    assert rep["status"] == "ok" and list(rep["versions"]) == [1]
    # Writes: refused whatever the revision.
    for revision in (1, 2, 3):
        rep = await alice.cmd(
            "vlob_create", realm_id=realm_id, encryption_revision=revision, vlob_id=uuid4(), timestamp=world.ts(), blob=b""
        )
        assert rep == {"status": "in_maintenance"}
        rep = await alice.cmd(
            "vlob_update", encryption_revision=revision, vlob_id=vlob_id, version=2, timestamp=world.ts(), blob=b""
        )
        assert rep == {"status": "in_maintenance"}
    # Blocks: read allowed, create refused.
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"data"}
    assert await alice.cmd("block_create", block_id=uuid4(), realm_id=realm_id, block=b"x") == {
        "status": "in_maintenance"
    }
    # Other realms are not affected.
    other = await world.create_realm(alice)
    await world.create_vlob(alice, other)


# ---- events --------------------------------------------------------------------------------------


@ok
async def test_maintenance_events(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    bob = await world.connect("bob@dev1")
    carol = await world.connect("carol@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "READER")
    for client in (alice, alice2, bob, carol):
        await client.subscribe()
    assert await start(world, alice, realm_id, messages={"alice": b"a", "bob": b"b"}) == {"status": "ok"}
    started = {"event": "realm.maintenance_started", "realm_id": realm_id, "encryption_revision": 2}
    # maintenance_started before the message events; the author device hears only its message.
    await world.expect_events(alice2, started, {"event": "message.received", "index": 1})
    await world.expect_events(bob, started, {"event": "message.received", "index": 1})
    await world.expect_events(alice, {"event": "message.received", "index": 1})
    await world.sync(carol)
    assert await finish(alice, realm_id) == {"status": "ok"}
    finished = {"event": "realm.maintenance_finished", "realm_id": realm_id, "encryption_revision": 2}
    await world.expect_events(alice2, finished)
    await world.expect_events(bob, finished)
    await world.sync(alice)
    await world.sync(carol)


@ok
async def test_timestamp_of_start_is_the_request_timestamp(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    timestamp = now() - timedelta(seconds=30)  # in the ballpark, but not "now"
    assert await start(world, alice, realm_id, timestamp=timestamp) == {"status": "ok"}
    rep = await alice.cmd("realm_status", realm_id=realm_id)
    assert rep["maintenance_started_on"] == timestamp
    assert (await alice.cmd("message_get", offset=0))["messages"][0]["timestamp"] == timestamp
