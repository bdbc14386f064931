"""VlobStorage + BlockStorage contract (the events of each write included)."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

import pytest
import pytest_twisted

from parsec.backend import storage as st
from parsec.backend.models import RealmStats, ReencryptionBatchEntry, VlobChanges, VlobVersion, VlobWrite
from tests.storage_contract.conftest import make_world

ok = pytest_twisted.ensureDeferred


async def start_reencryption(world, realm_id, revision=2, author="alice@dev1"):
    now = world.ts()
    users = await _participants(world, realm_id)
    await world.realm.start_reencryption_maintenance(
        world.org, author, realm_id, revision, {u: b"key" for u in users}, now, now
    )


async def _participants(world, realm_id):
    certificates = await world.realm.get_role_certificates(world.org, "alice", realm_id)
    current: dict[str, str] = {}
    for c in certificates:
        user, role = c.split(b":")[2:4]
        current[user.decode()] = role.decode()
    return [u for u, r in current.items() if r != "None"]


# ---- vlob_create -------------------------------------------------------------------------------


@ok
async def test_vlob_create(world, backend):
    realm_id = await world.create_realm("alice@dev1")
    other_realm = await world.create_realm("carol@dev1")
    t_bob = world.ts()
    await world.share(realm_id, "alice@dev1", "bob", "READER", timestamp=t_bob)

    async def create(author, vlob_id=None, revision=1, timestamp=None, realm=realm_id, blob=b"blob"):
        return await world.vlob.create(
            world.org, author, realm, revision, vlob_id or uuid4(), timestamp or world.ts(), blob
        )

    with pytest.raises(st.RealmNotFoundError):
        await create("alice@dev1", realm=uuid4())
    for revision in (0, 2, 42):
        with pytest.raises(st.BadEncryptionRevisionError):
            await create("bob@dev1", revision=revision)  # realm state before role
    with pytest.raises(st.NotAllowedError):
        await create("bob@dev1")  # READER
    with pytest.raises(st.NotAllowedError):
        await create("carol@dev1")  # not a member
    vlob_id = uuid4()
    assert await create("alice@dev2", vlob_id, blob=b"1234") == VlobWrite(realm_id=realm_id, checkpoint=1)
    # The id is unique in the organization, whatever the realm.
    with pytest.raises(st.AlreadyExistsError):
        await create("alice@dev1", vlob_id)
    with pytest.raises(st.AlreadyExistsError):
        await create("carol@dev1", vlob_id, realm=other_realm)
    other = await make_world(backend)
    other_realm_elsewhere = await other.create_realm("alice@dev1")
    assert await other.vlob.create(
        other.org, "alice@dev1", other_realm_elsewhere, 1, vlob_id, other.ts(), b"x"
    ) == VlobWrite(other_realm_elsewhere, 1)

    # Write roles, and the causality rule against the author's latest role certificate.
    for role in ("CONTRIBUTOR", "MANAGER", "OWNER"):
        granted = world.ts()
        await world.share(realm_id, "alice@dev1", "bob", role, timestamp=granted)
        for timestamp in (granted, granted - timedelta(seconds=5)):
            with pytest.raises(st.RequireGreaterTimestampError) as exc:
                await create("bob@dev2", timestamp=timestamp)
            assert exc.value.strictly_greater_than == granted
        await create("bob@dev2", timestamp=granted + timedelta(microseconds=1), blob=b"12")
    await world.share(realm_id, "alice@dev1", "bob", None)
    with pytest.raises(st.NotAllowedError):
        await create("bob@dev1")
    assert await create("alice@dev1") == VlobWrite(realm_id, 5)
    assert await world.realm.get_stats(world.org, "alice", realm_id) == RealmStats(blocks_size=0, vlobs_size=14)

    await start_reencryption(world, realm_id)
    for revision in (1, 2):
        with pytest.raises(st.InMaintenanceError):
            await create("alice@dev1", revision=revision)


# ---- vlob_update -------------------------------------------------------------------------------


@ok
async def test_vlob_update(world, backend):
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "READER")
    vlob_id = uuid4()
    t1 = world.ts()
    await world.vlob.create(world.org, "alice@dev1", realm_id, 1, vlob_id, t1, b"v1")

    async def update(author, version, timestamp=None, revision=1, vlob=vlob_id, blob=b"data"):
        return await world.vlob.update(world.org, author, revision, vlob, version, timestamp or world.ts(), blob)

    with pytest.raises(st.VlobNotFoundError):
        await update("alice@dev1", 2, vlob=uuid4())
    other = await make_world(backend)
    with pytest.raises(st.VlobNotFoundError):
        await other.vlob.update(other.org, "alice@dev1", 1, vlob_id, 2, other.ts(), b"x")
    with pytest.raises(st.BadEncryptionRevisionError):
        await update("bob@dev1", 2, revision=42)
    with pytest.raises(st.NotAllowedError):
        await update("bob@dev1", 2)
    with pytest.raises(st.NotAllowedError):
        await update("carol@dev1", 2)
    for version in (1, 3, 42, 2**40):
        with pytest.raises(st.BadVersionError):
            await update("alice@dev1", version)
    # Equal timestamps are accepted, older ones are not (after the version rule).
    with pytest.raises(st.RequireGreaterTimestampError) as exc:
        await update("alice@dev1", 2, timestamp=t1 - timedelta(seconds=1))
    assert exc.value.strictly_greater_than == t1
    with pytest.raises(st.BadVersionError):
        await update("alice@dev1", 3, timestamp=t1 - timedelta(seconds=1))
    assert await update("alice@dev2", 2, timestamp=t1, blob=b"v2") == VlobWrite(realm_id, 2)
    t_bob = world.ts()
    await world.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR", timestamp=t_bob)
    with pytest.raises(st.RequireGreaterTimestampError) as exc:
        await update("bob@dev1", 3, timestamp=t_bob)
    assert exc.value.strictly_greater_than == t_bob
    assert await update("bob@dev1", 3, blob=b"v3") == VlobWrite(realm_id, 3)
    assert await world.realm.get_stats(world.org, "bob", realm_id) == RealmStats(0, 6)

    await start_reencryption(world, realm_id)
    for revision in (1, 2):
        with pytest.raises(st.InMaintenanceError):
            await update("alice@dev1", 4, revision=revision)


# ---- vlob_read, list_versions, poll_changes ----------------------------------------------------


@ok
async def test_vlob_read_selection(world):
    realm_id = await world.create_realm("alice@dev1")
    granted = world.ts()
    await world.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR", timestamp=granted)
    vlob_id = uuid4()
    t1, t2 = world.ts(), world.ts()
    await world.vlob.create(world.org, "alice@dev2", realm_id, 1, vlob_id, t1, b"v1")
    await world.vlob.update(world.org, "bob@dev1", 1, vlob_id, 2, t2, b"v2")
    alice_granted = (await world.realm.get_role_certificates(world.org, "alice", realm_id))[0]
    assert alice_granted

    async def read(version=None, timestamp=None, user="carol", revision=1):
        return await world.vlob.read(world.org, user, revision, vlob_id, version, timestamp)

    with pytest.raises(st.NotAllowedError):
        await read()
    await world.share(realm_id, "alice@dev1", "carol", "READER")
    v2 = VlobVersion(2, b"v2", "bob@dev1", t2, author_last_role_granted_on=granted)
    v1 = await read(version=1)
    assert (v1.version, v1.blob, v1.author, v1.timestamp) == (1, b"v1", "alice@dev2", t1)
    assert v1.author_last_role_granted_on < granted  # alice's creation grant
    assert await read() == v2
    assert await read(timestamp=t2 + timedelta(seconds=1)) == v2
    assert await read(timestamp=t2) == v2
    assert await read(timestamp=t2 - timedelta(microseconds=1)) == v1
    assert await read(timestamp=t1) == v1
    assert await read(version=1, timestamp=t2) == v1  # version wins
    assert await read(version=2, timestamp=t1 - timedelta(days=1)) == v2
    for kwargs in ({"timestamp": t1 - timedelta(microseconds=1)}, {"version": 3}, {"version": 0}, {"version": 2**40}):
        with pytest.raises(st.BadVersionError):
            await read(**kwargs)
    with pytest.raises(st.VlobNotFoundError):
        await world.vlob.read(world.org, "carol", 1, uuid4(), None, None)
    with pytest.raises(st.BadEncryptionRevisionError):
        await read(revision=42)
    # author_last_role_granted_on follows the author's latest certificate, even a removal.
    removed = world.ts()
    await world.share(realm_id, "alice@dev1", "bob", None, timestamp=removed)
    assert (await read()).author_last_role_granted_on == removed
    with pytest.raises(st.NotAllowedError):
        await read(user="bob")

    assert await world.vlob.list_versions(world.org, "carol", vlob_id) == {
        1: (t1, "alice@dev2"),
        2: (t2, "bob@dev1"),
    }
    with pytest.raises(st.VlobNotFoundError):
        await world.vlob.list_versions(world.org, "carol", uuid4())
    with pytest.raises(st.NotAllowedError):
        await world.vlob.list_versions(world.org, "bob", vlob_id)


@ok
async def test_poll_changes(world):
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "READER")

    async def poll(last, user="bob", realm=realm_id):
        return await world.vlob.poll_changes(world.org, user, realm, last)

    assert await poll(0) == VlobChanges(0, {})
    a = await world.create_vlob("alice@dev1", realm_id)
    b = await world.create_vlob("alice@dev1", realm_id)
    await world.vlob.update(world.org, "alice@dev2", 1, a, 2, world.ts(), b"a2")
    await world.vlob.update(world.org, "alice@dev2", 1, a, 3, world.ts(), b"a3")
    assert await poll(0) == VlobChanges(4, {a: 3, b: 1})
    assert await poll(-5) == VlobChanges(4, {a: 3, b: 1})
    assert await poll(1) == VlobChanges(4, {a: 3, b: 1})
    assert await poll(2) == VlobChanges(4, {a: 3})
    assert await poll(4) == VlobChanges(4, {})
    assert await poll(100) == VlobChanges(4, {})  # the real current checkpoint, not an echo
    with pytest.raises(st.RealmNotFoundError):
        await poll(0, realm=uuid4())
    with pytest.raises(st.NotAllowedError):
        await poll(0, user="carol")
    await start_reencryption(world, realm_id)
    assert await poll(3) == VlobChanges(4, {a: 3})  # allowed during re-encryption


# ---- re-encryption batches ---------------------------------------------------------------------


@ok
async def test_reencryption_batches(world):
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "MANAGER")
    other_realm = await world.create_realm("alice@dev1")
    t1, t2, t3 = world.ts(), world.ts(), world.ts()
    a, b, foreign = uuid4(), uuid4(), uuid4()
    await world.vlob.create(world.org, "alice@dev1", realm_id, 1, a, t1, b"a1")
    await world.vlob.update(world.org, "bob@dev1", 1, a, 2, t2, b"a2")
    await world.vlob.create(world.org, "bob@dev2", realm_id, 1, b, t3, b"b1")
    await world.vlob.create(world.org, "alice@dev1", other_realm, 1, foreign, world.ts(), b"f1")

    async def get(size=100, revision=2, user="alice", realm=realm_id):
        return await world.vlob.get_reencryption_batch(world.org, user, realm, revision, size)

    async def save(entries, revision=2, user="alice", realm=realm_id):
        return await world.vlob.save_reencryption_batch(world.org, user, realm, revision, entries)

    # Outside maintenance.
    with pytest.raises(st.NotInMaintenanceError):
        await get(revision=1)
    with pytest.raises(st.NotInMaintenanceError):
        await save([], revision=1)
    await start_reencryption(world, realm_id)
    with pytest.raises(st.RealmNotFoundError):
        await get(realm=uuid4())
    with pytest.raises(st.RealmNotFoundError):
        await save([], realm=uuid4())
    for revision in (1, 3, -1, 2**40):
        with pytest.raises(st.BadEncryptionRevisionError):
            await get(revision=revision, user="bob")  # state before role
        with pytest.raises(st.BadEncryptionRevisionError):
            await save([], revision=revision)
    with pytest.raises(st.NotAllowedError):
        await get(user="bob")
    with pytest.raises(st.NotAllowedError):
        await save([], user="bob")
    with pytest.raises(st.NotAllowedError):
        await get(user="carol")

    everything = await get()
    assert sorted((e.vlob_id, e.version, e.blob) for e in everything) == sorted(
        [(a, 1, b"a1"), (a, 2, b"a2"), (b, 1, b"b1")]
    )
    assert await get(size=0) == []
    first = await get(size=2)
    assert len(first) == 2 and await get(size=2) == first  # stable
    assert await save([ReencryptionBatchEntry(e.vlob_id, e.version, e.blob.upper()) for e in first]) == (3, 2)
    rest = await get(size=2)
    assert len(rest) == 1 and rest[0] not in first
    (last,) = rest
    junk = [
        ReencryptionBatchEntry(uuid4(), 1, b"unknown vlob"),
        ReencryptionBatchEntry(last.vlob_id, 9, b"unknown version"),
        ReencryptionBatchEntry(last.vlob_id, 0, b"version 0"),
        ReencryptionBatchEntry(last.vlob_id, 2**40, b"huge version"),
        ReencryptionBatchEntry(foreign, 1, b"other realm"),
        ReencryptionBatchEntry(first[0].vlob_id, first[0].version, b"already done"),
    ]
    # Within a batch, the first entry of a version wins.
    batch = [*junk, ReencryptionBatchEntry(last.vlob_id, last.version, last.blob.upper()),
             ReencryptionBatchEntry(last.vlob_id, last.version, b"second")]
    assert await save(batch) == (3, 3)
    assert await save(batch) == (3, 3)
    assert await save([]) == (3, 3)
    assert await get() == []

    # During the re-encryption, reads serve revision 1.
    assert (await world.vlob.read(world.org, "bob", 1, a, None, None)).blob == b"a2"
    assert (await world.vlob.read(world.org, "bob", None, a, None, None)).blob == b"a2"
    with pytest.raises(st.InMaintenanceError):
        await world.vlob.read(world.org, "bob", 2, a, None, None)
    with pytest.raises(st.BadEncryptionRevisionError):
        await world.vlob.read(world.org, "bob", 3, a, None, None)

    await world.realm.finish_reencryption_maintenance(world.org, "alice@dev1", realm_id, 2)
    read = await world.vlob.read(world.org, "bob", 2, a, None, None)
    assert (read.version, read.blob, read.author, read.timestamp) == (2, b"A2", "bob@dev1", t2)
    assert (await world.vlob.read(world.org, "bob", 2, b, None, None)).blob == b"B1"
    with pytest.raises(st.BadEncryptionRevisionError):
        await world.vlob.read(world.org, "bob", 1, a, None, None)
    assert await world.vlob.list_versions(world.org, "bob", a) == {1: (t1, "alice@dev1"), 2: (t2, "bob@dev1")}
    # realm_stats counts each version once, as written.
    assert await world.realm.get_stats(world.org, "bob", realm_id) == RealmStats(0, 6)
    # Writes resume at the new revision.
    assert await world.vlob.update(world.org, "alice@dev1", 2, a, 3, world.ts(), b"a3") == VlobWrite(realm_id, 4)
    with pytest.raises(st.BadEncryptionRevisionError):
        await world.vlob.update(world.org, "alice@dev1", 1, a, 4, world.ts(), b"a4")


@ok
async def test_finish_requires_every_version(world):
    realm_id = await world.create_realm("alice@dev1")
    await world.create_vlob("alice@dev1", realm_id)
    await world.create_vlob("alice@dev1", realm_id)
    await start_reencryption(world, realm_id)
    with pytest.raises(st.MaintenanceError):
        await world.realm.finish_reencryption_maintenance(world.org, "alice@dev1", realm_id, 2)
    (entry,) = await world.vlob.get_reencryption_batch(world.org, "alice", realm_id, 2, 1)
    assert await world.vlob.save_reencryption_batch(world.org, "alice", realm_id, 2, [entry]) == (2, 1)
    with pytest.raises(st.MaintenanceError):
        await world.realm.finish_reencryption_maintenance(world.org, "alice@dev1", realm_id, 2)
    batch = await world.vlob.get_reencryption_batch(world.org, "alice", realm_id, 2, 10)
    assert await world.vlob.save_reencryption_batch(world.org, "alice", realm_id, 2, batch) == (2, 2)
    await world.realm.finish_reencryption_maintenance(world.org, "alice@dev1", realm_id, 2)


@ok
async def test_reencryption_out_of_order_then_update(world):
    # Versions re-encrypted in any order, over several batches: the next update still needs
    # exactly the latest version + 1, and a read without version serves the latest.
    realm_id = await world.create_realm("alice@dev1")
    vlob_id = uuid4()
    await world.vlob.create(world.org, "alice@dev1", realm_id, 1, vlob_id, world.ts(), b"v1")
    for version in range(2, 6):
        await world.vlob.update(world.org, "alice@dev1", 1, vlob_id, version, world.ts(), b"v%d" % version)
    await start_reencryption(world, realm_id)
    by_version = {e.version: e for e in await world.vlob.get_reencryption_batch(world.org, "alice", realm_id, 2, 10)}
    for versions in ([4], [5, 2, 1], [3]):
        batch = [ReencryptionBatchEntry(vlob_id, v, by_version[v].blob.upper()) for v in versions]
        await world.vlob.save_reencryption_batch(world.org, "alice", realm_id, 2, batch)
    await world.realm.finish_reencryption_maintenance(world.org, "alice@dev1", realm_id, 2)
    assert (await world.vlob.read(world.org, "alice", 2, vlob_id, None, None)).blob == b"V5"
    for version in (5, 4, 7):
        with pytest.raises(st.BadVersionError):
            await world.vlob.update(world.org, "alice@dev1", 2, vlob_id, version, world.ts(), b"bad")
    assert await world.vlob.update(world.org, "alice@dev1", 2, vlob_id, 6, world.ts(), b"v6") == VlobWrite(
        realm_id, 6
    )
    read = await world.vlob.read(world.org, "alice", 2, vlob_id, None, None)
    assert (read.version, read.blob) == (6, b"v6")
    assert list(await world.vlob.list_versions(world.org, "alice", vlob_id)) == [1, 2, 3, 4, 5, 6]


# ---- blocks ------------------------------------------------------------------------------------


CLAIM = 300.0  # seconds a claim holds (the block_create_claim limit)


async def create_block(world, author, realm_id, block_id, size):
    claim = await world.block.claim_create(world.org, author, realm_id, block_id, world.ts(), CLAIM)
    await world.block.record_create(world.org, author, realm_id, block_id, size, world.ts(), claim)


@ok
async def test_blocks(world, backend):
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "READER")
    block_id = uuid4()

    async def claim(author, realm, block):
        return await world.block.claim_create(world.org, author, realm, block, world.ts(), CLAIM)

    with pytest.raises(st.RealmNotFoundError):
        await claim("alice@dev1", uuid4(), block_id)
    with pytest.raises(st.NotAllowedError):
        await claim("bob@dev1", realm_id, block_id)
    with pytest.raises(st.NotAllowedError):
        await claim("carol@dev1", realm_id, block_id)
    held = await claim("alice@dev2", realm_id, block_id)
    with pytest.raises(st.RealmNotFoundError):
        await world.block.record_create(world.org, "alice@dev2", uuid4(), block_id, 4, world.ts(), held)
    # That refusal ended the claim: claim again.
    held = await claim("alice@dev2", realm_id, block_id)
    await world.block.record_create(world.org, "alice@dev2", realm_id, block_id, 4, world.ts(), held)
    with pytest.raises(st.AlreadyExistsError):
        await world.block.record_create(world.org, "alice@dev2", realm_id, block_id, 4, world.ts(), held)
    with pytest.raises(st.AlreadyExistsError):
        await claim("alice@dev1", realm_id, block_id)
    other_realm = await world.create_realm("carol@dev1")
    with pytest.raises(st.AlreadyExistsError):  # unique in the organization
        await claim("carol@dev1", other_realm, block_id)
    await create_block(world, "carol@dev1", other_realm, uuid4(), 7)
    assert await world.realm.get_stats(world.org, "bob", realm_id) == RealmStats(blocks_size=4, vlobs_size=0)

    await world.block.check_read(world.org, "bob", block_id)
    with pytest.raises(st.NotAllowedError):
        await world.block.check_read(world.org, "carol", block_id)
    with pytest.raises(st.BlockNotFoundError):
        await world.block.check_read(world.org, "bob", uuid4())

    other = await make_world(backend)
    with pytest.raises(st.BlockNotFoundError):
        await other.block.check_read(other.org, "alice", block_id)
    other_realm_elsewhere = await other.create_realm("alice@dev1")
    await create_block(other, "alice@dev1", other_realm_elsewhere, block_id, 1)

    await start_reencryption(world, realm_id)
    await world.block.check_read(world.org, "bob", block_id)  # allowed during re-encryption
    with pytest.raises(st.InMaintenanceError):
        await claim("bob@dev1", realm_id, uuid4())  # state before role
    with pytest.raises(st.InMaintenanceError):
        await claim("alice@dev1", realm_id, block_id)


@ok
async def test_block_claims(world):
    """Racing creations of one id: one claim at a time; the same device may claim again (a
    retry), another device only once the claim expired; a superseded claim records nothing."""
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR")
    block_id = uuid4()
    start = world.ts()

    async def claim(author, at):
        return await world.block.claim_create(world.org, author, realm_id, block_id, at, CLAIM)

    first = await claim("bob@dev1", start)
    for author in ("alice@dev1", "bob@dev2"):  # another device, even of the same user
        with pytest.raises(st.BlockClaimedError):
            await claim(author, start + timedelta(seconds=CLAIM - 1))
    retry = await claim("bob@dev1", start + timedelta(seconds=1))
    assert retry != first
    # Expired: another device takes it over.
    taken = await claim("alice@dev1", start + timedelta(seconds=CLAIM + 2))
    for superseded in (first, retry):
        with pytest.raises(st.BlockClaimedError):
            await world.block.record_create(world.org, "bob@dev1", realm_id, block_id, 5, world.ts(), superseded)
    await world.block.record_create(world.org, "alice@dev1", realm_id, block_id, 3, world.ts(), taken)
    with pytest.raises(st.AlreadyExistsError):
        await claim("bob@dev1", world.ts())
    assert await world.realm.get_stats(world.org, "bob", realm_id) == RealmStats(blocks_size=3, vlobs_size=0)


@ok
async def test_block_record_rechecks_role_and_maintenance(world):
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR")
    lost_role, in_maintenance = uuid4(), uuid4()

    async def claim(author, block_id):
        return await world.block.claim_create(world.org, author, realm_id, block_id, world.ts(), CLAIM)

    # The writer's role goes away between the claim and the record.
    held = await claim("bob@dev1", lost_role)
    await world.share(realm_id, "alice@dev1", "bob", "READER")
    with pytest.raises(st.NotAllowedError):
        await world.block.record_create(world.org, "bob@dev1", realm_id, lost_role, 5, world.ts(), held)
    # A maintenance starts between the claim and the record.
    held = await claim("alice@dev1", in_maintenance)
    await start_reencryption(world, realm_id)
    with pytest.raises(st.InMaintenanceError):
        await world.block.record_create(world.org, "alice@dev1", realm_id, in_maintenance, 5, world.ts(), held)
    assert await world.realm.get_stats(world.org, "alice", realm_id) == RealmStats(blocks_size=0, vlobs_size=0)
    # Nothing was recorded and the refusals ended the claims: not even a trace.
    for block_id in (lost_role, in_maintenance):
        with pytest.raises(st.BlockNotFoundError):
            await world.block.check_read(world.org, "alice", block_id)


# ---- events ------------------------------------------------------------------------------------


@ok
async def test_vlob_writes_publish_their_events(world):
    realm_id = await world.create_realm("alice@dev1")
    await world.share(realm_id, "alice@dev1", "bob", "CONTRIBUTOR")
    vlob_id = uuid4()
    create = world.vlob.create(world.org, "bob@dev2", realm_id, 1, vlob_id, world.ts(), b"v1")
    assert await world.published(create) == (
        VlobWrite(realm_id, 1),
        [
            (
                "realm.vlobs_updated",
                {"author": "bob@dev2", "realm_id": realm_id, "checkpoint": 1, "src_id": vlob_id, "src_version": 1},
            )
        ],
    )
    error, events = await world.published(
        world.vlob.create(world.org, "bob@dev2", realm_id, 1, vlob_id, world.ts(), b"v1")
    )
    assert isinstance(error, st.AlreadyExistsError) and events == []
    # The update finds the realm from the vlob.
    update = world.vlob.update(world.org, "alice@dev1", 1, vlob_id, 2, world.ts(), b"v2")
    assert await world.published(update) == (
        VlobWrite(realm_id, 2),
        [
            (
                "realm.vlobs_updated",
                {"author": "alice@dev1", "realm_id": realm_id, "checkpoint": 2, "src_id": vlob_id, "src_version": 2},
            )
        ],
    )
    error, events = await world.published(world.vlob.update(world.org, "alice@dev1", 1, vlob_id, 2, world.ts(), b"x"))
    assert isinstance(error, st.BadVersionError) and events == []

    # Reads, block metadata and re-encryption batches publish nothing.
    block_id = uuid4()
    claim, events = await world.published(
        world.block.claim_create(world.org, "bob@dev1", realm_id, block_id, world.ts(), CLAIM)
    )
    assert isinstance(claim, UUID) and events == []
    for call in (
        world.vlob.read(world.org, "bob", 1, vlob_id, None, None),
        world.vlob.poll_changes(world.org, "bob", realm_id, 0),
        world.vlob.list_versions(world.org, "bob", vlob_id),
        world.block.record_create(world.org, "bob@dev1", realm_id, block_id, 4, world.ts(), claim),
        world.block.check_read(world.org, "bob", block_id),
    ):
        result, events = await world.published(call)
        assert not isinstance(result, Exception) and events == [], result
    await start_reencryption(world, realm_id)
    for call in (
        world.vlob.get_reencryption_batch(world.org, "alice", realm_id, 2, 10),
        world.vlob.save_reencryption_batch(
            world.org, "alice", realm_id, 2, [ReencryptionBatchEntry(vlob_id, 1, b"r1")]
        ),
    ):
        result, events = await world.published(call)
        assert not isinstance(result, Exception) and events == [], result
