"""block_create, block_read (docs/protocol/commands.md §11, docs/protocol/storage.md §2)."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher

from parsec.backend.block import BlockComponent
from parsec.backend.block_cache import ENTRY_OVERHEAD
from parsec.blockstore.base import BlockStoreError, MetadataBlockStore, in_process
from tests.backend_realm.conftest import world_with_limits

ok = pytest_twisted.ensureDeferred

MIB = 1024 * 1024
WRITE_ROLES = ["OWNER", "MANAGER", "CONTRIBUTOR"]


class FakeBlockStore:
    """Wraps the server's blockstore; fails on demand."""

    def __init__(self, inner: Any, error: Exception | None = None) -> None:
        self.inner = inner
        self.in_process = in_process(inner)  # it stands for the server's store: cached alike
        self.error = error or BlockStoreError("FAKE", "node unreachable")
        self.fail_create = False
        self.fail_read = False
        self.creates: list[Any] = []
        # When set: `create` waits on a Deferred that only a cancellation ends.
        self.hang = False
        self.create_called: defer.Deferred[None] = defer.Deferred()
        self.create_cancelled: defer.Deferred[None] = defer.Deferred()
        self.waiter: defer.Deferred[None] | None = None

    async def create(self, organization_id: str, block_id: Any, block: bytes) -> None:
        self.creates.append(block_id)
        if self.hang:
            self.hang = False  # only the first call waits
            self.waiter = defer.Deferred(lambda d: self.create_cancelled.callback(None))
            self.create_called.callback(None)
            await self.waiter
        if self.fail_create:
            raise self.error
        await self.inner.create(organization_id, block_id, block)

    async def read(self, organization_id: str, block_id: Any) -> bytes:
        if self.fail_read:
            raise self.error
        return await self.inner.read(organization_id, block_id)


@pytest.fixture
def fake_blockstore(world):
    original = world.app.blockstore
    fake = FakeBlockStore(original)
    world.app.blockstore = fake
    yield fake
    world.app.blockstore = original


@pytest.fixture
def warnings_logged():
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "block_id" in event and str(event.get("log_format", "")).startswith("Block "):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


async def create(client, realm_id, block_id, block=b"data") -> dict:
    return await client.cmd("block_create", block_id=block_id, realm_id=realm_id, block=block)


# ---- block_create / block_read -------------------------------------------------------------------


@ok
async def test_create_and_read(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    assert await create(alice, realm_id, block_id, b"Hodi ho !") == {"status": "ok"}
    assert await alice2.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"Hodi ho !"}
    # The empty block is a block.
    empty_id = uuid4()
    assert await create(alice, realm_id, empty_id, b"") == {"status": "ok"}
    assert await alice.cmd("block_read", block_id=empty_id) == {"status": "ok", "block": b""}


@ok
async def test_bad_message(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    for fields in (
        {"realm_id": realm_id, "block": b""},
        {"block_id": uuid4(), "block": b""},
        {"block_id": uuid4(), "realm_id": realm_id},
        {"block_id": "x", "realm_id": realm_id, "block": b""},
        {"block_id": uuid4(), "realm_id": realm_id, "block": "str"},
    ):
        rep = await alice.cmd("block_create", **fields)
        assert rep["status"] == "bad_message", fields
    for fields in ({}, {"block_id": 42}):
        rep = await alice.cmd("block_read", **fields)
        assert rep["status"] == "bad_message", fields


@ok
async def test_create_not_found(world, other_org):
    alice = await world.connect("alice@dev1")
    assert await create(alice, uuid4(), uuid4()) == {"status": "not_found"}
    other = await world.connect("alice@dev1", org=other_org)
    foreign_realm = await world.create_realm(other)
    assert await create(alice, foreign_realm, uuid4()) == {"status": "not_found"}


@ok
async def test_roles(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    assert await create(alice, realm_id, block_id, b"data") == {"status": "ok"}
    assert await create(bob, realm_id, uuid4()) == {"status": "not_allowed"}
    assert await bob.cmd("block_read", block_id=block_id) == {"status": "not_allowed"}
    await world.grant(alice, realm_id, "bob", "READER")
    assert await create(bob, realm_id, uuid4()) == {"status": "not_allowed"}
    assert await bob.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"data"}
    for role in WRITE_ROLES:
        await world.grant(alice, realm_id, "bob", role)
        own = uuid4()
        assert await create(bob, realm_id, own, role.encode()) == {"status": "ok"}
        assert await bob.cmd("block_read", block_id=own) == {"status": "ok", "block": role.encode()}
        assert await bob.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"data"}
    await world.grant(alice, realm_id, "bob", None)
    assert await create(bob, realm_id, uuid4()) == {"status": "not_allowed"}
    assert await bob.cmd("block_read", block_id=block_id) == {"status": "not_allowed"}


@ok
async def test_already_exists(world, other_org):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    assert await create(alice, realm_id, block_id, b"original") == {"status": "ok"}
    assert await create(alice, realm_id, block_id, b"other") == {"status": "already_exists"}
    other_realm = await world.create_realm(alice)
    assert await create(alice, other_realm, block_id, b"other") == {"status": "already_exists"}
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"original"}
    # Production order: the role is checked before the id.
    await world.grant(alice, realm_id, "bob", "READER")
    assert await create(bob, realm_id, block_id) == {"status": "not_allowed"}
    # The same id lives independently in another organization.
    other = await world.connect("alice@dev1", org=other_org)
    foreign_realm = await world.create_realm(other)
    assert await other.cmd("block_read", block_id=block_id) == {"status": "not_found"}
    assert await create(other, foreign_realm, block_id, b"foreign") == {"status": "ok"}
    assert await other.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"foreign"}
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"original"}


@ok
async def test_read_not_found(world):
    alice = await world.connect("alice@dev1")
    assert await alice.cmd("block_read", block_id=uuid4()) == {"status": "not_found"}


@ok
async def test_create_in_maintenance(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "READER")
    block_id = uuid4()
    assert await create(alice, realm_id, block_id) == {"status": "ok"}
    rep = await alice.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=realm_id,
        encryption_revision=2,
        timestamp=world.ts(),
        per_participant_message={"alice": b"", "bob": b""},
    )
    assert rep == {"status": "ok"}
    assert await create(alice, realm_id, uuid4()) == {"status": "in_maintenance"}
    # Production order: maintenance before role, and before the id.
    assert await create(bob, realm_id, uuid4()) == {"status": "in_maintenance"}
    assert await create(alice, realm_id, block_id) == {"status": "in_maintenance"}
    assert await bob.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"data"}


# ---- size limit ----------------------------------------------------------------------------------


@ok
async def test_one_mib_block(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    block = bytes(range(256)) * (MIB // 256)
    assert len(block) == MIB
    assert await create(alice, realm_id, block_id, block) == {"status": "ok"}
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": block}
    assert await alice.cmd("realm_stats", realm_id=realm_id) == {"status": "ok", "blocks_size": MIB, "vlobs_size": 0}


@ok
async def test_block_over_one_mib_closes_the_connection(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    rep = await create(alice, realm_id, block_id, b"x" * (MIB + 1))
    assert rep == {"status": "invalid_msg_format", "reason": "Invalid message format"}
    code, _clean = await alice.ws.wait_closed()
    assert code == 1000
    # Nothing stored.
    alice = await world.connect("alice@dev1")
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "not_found"}


# ---- blockstore failures -------------------------------------------------------------------------


@ok
async def test_blockstore_create_failure(world, fake_blockstore, warnings_logged):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    fake_blockstore.fail_create = True
    assert await create(alice, realm_id, block_id) == {"status": "timeout"}
    assert fake_blockstore.creates == [block_id]
    assert [e["block_id"] for e in warnings_logged] == [str(block_id)]
    assert warnings_logged[0]["organization_id"] == "CoolOrg"
    # No metadata was recorded: the id is still free.
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "not_found"}
    assert await alice.cmd("realm_stats", realm_id=realm_id) == {"status": "ok", "blocks_size": 0, "vlobs_size": 0}
    fake_blockstore.fail_create = False
    assert await create(alice, realm_id, block_id) == {"status": "ok"}
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"data"}


@ok
async def test_blockstore_not_called_when_metadata_refuses(world, fake_blockstore):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    assert await create(alice, realm_id, block_id) == {"status": "ok"}
    assert await create(alice, realm_id, block_id) == {"status": "already_exists"}
    assert await create(bob, realm_id, uuid4()) == {"status": "not_allowed"}
    assert await create(alice, uuid4(), uuid4()) == {"status": "not_found"}
    assert fake_blockstore.creates == [block_id]


@ok
async def test_blockstore_read_failure(world, fake_blockstore, warnings_logged):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    assert await create(alice, realm_id, block_id) == {"status": "ok"}
    fake_blockstore.fail_read = True
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "timeout"}
    assert [e["block_id"] for e in warnings_logged] == [str(block_id)]
    # Unknown blocks are still `not_found` (metadata checked first).
    assert await alice.cmd("block_read", block_id=uuid4()) == {"status": "not_found"}
    fake_blockstore.fail_read = False
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"data"}


@pytest.mark.allow_logged_failures
@ok
async def test_blockstore_unexpected_error_is_a_timeout(world, fake_blockstore, logged_failures):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    fake_blockstore.error = RuntimeError("bug in a blockstore")
    fake_blockstore.fail_create = True
    assert await create(alice, realm_id, uuid4()) == {"status": "timeout"}
    assert len(logged_failures) == 1


async def wait_readable(client, block_id) -> dict:
    """The block as soon as its creation is recorded (bounded poll, no timing asserted)."""
    deadline = reactor.seconds() + 10
    while True:
        rep = await client.cmd("block_read", block_id=block_id)
        if rep["status"] != "not_found" or reactor.seconds() > deadline:
            return rep
        await task.deferLater(reactor, 0.02, lambda: None)


@ok
async def test_connection_closed_during_blockstore_write(world, fake_blockstore, logged_failures):
    """The write is not cut short (its bytes could land after the claim ended): it completes
    and is recorded; the client's retry then gets `already_exists`, as after a lost reply."""
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    fake_blockstore.hang = True
    alice.send("block_create", block_id=block_id, realm_id=realm_id, block=b"data")
    await fake_blockstore.create_called
    await alice.close()
    assert not fake_blockstore.create_cancelled.called
    fake_blockstore.waiter.callback(None)
    other = await world.connect("alice@dev2")
    assert await wait_readable(other, block_id) == {"status": "ok", "block": b"data"}
    retry = await world.connect("alice@dev1")
    assert await create(retry, realm_id, block_id) == {"status": "already_exists"}
    assert logged_failures == []


@ok
async def test_concurrent_creations_of_one_id(world, fake_blockstore):
    """Another device's creation of an id being created is refused before it writes
    (`timeout`: try again later), so the `ok` is given on the first writer's bytes."""
    alice = await world.connect("alice@dev1")
    mallory = await world.connect("alice@dev2")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    fake_blockstore.hang = True
    alice.send("block_create", block_id=block_id, realm_id=realm_id, block=b"mine")
    await fake_blockstore.create_called
    # Nothing is held while the first write waits: other requests go through.
    assert await create(mallory, realm_id, block_id, b"evil") == {"status": "timeout"}
    assert await create(mallory, realm_id, uuid4()) == {"status": "ok"}
    fake_blockstore.waiter.callback(None)
    assert await alice.recv() == {"status": "ok"}
    assert fake_blockstore.creates.count(block_id) == 1
    assert await mallory.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"mine"}
    assert await create(mallory, realm_id, block_id, b"evil") == {"status": "already_exists"}
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"mine"}
    assert (await alice.cmd("realm_stats", realm_id=realm_id))["blocks_size"] == 8


@ok
async def test_same_device_may_retry_at_once(world, fake_blockstore):
    """A failed write keeps its claim against other devices, not against its own device."""
    alice = await world.connect("alice@dev1")
    other = await world.connect("alice@dev2")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    fake_blockstore.fail_create = True
    assert await create(alice, realm_id, block_id) == {"status": "timeout"}
    fake_blockstore.fail_create = False
    assert await create(other, realm_id, block_id, b"other") == {"status": "timeout"}
    assert await create(alice, realm_id, block_id) == {"status": "ok"}
    assert await other.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"data"}


async def contributor_write_hanging(world, fake_blockstore, data: bytes):
    """bob, a CONTRIBUTOR of alice's new realm, creates a block whose bytes are being written
    (the fake blockstore holds the write until `fake_blockstore.waiter` fires)."""
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR")
    block_id = uuid4()
    fake_blockstore.hang = True
    bob.send("block_create", block_id=block_id, realm_id=realm_id, block=data)
    await fake_blockstore.create_called
    return alice, bob, realm_id, block_id


@pytest.mark.parametrize("change", ["role_removed", "maintenance_started"])
@ok
async def test_writer_no_longer_allowed_when_recording(world, fake_blockstore, change):
    """Role and maintenance are checked again when the block is recorded."""
    alice, bob, realm_id, block_id = await contributor_write_hanging(world, fake_blockstore, b"late")
    if change == "role_removed":
        await world.grant(alice, realm_id, "bob", "READER")
        expected = {"status": "not_allowed"}
    else:
        rep = await alice.cmd(
            "realm_start_reencryption_maintenance",
            realm_id=realm_id,
            encryption_revision=2,
            timestamp=world.ts(),
            per_participant_message={"alice": b"m", "bob": b"m"},
        )
        assert rep == {"status": "ok"}, rep
        expected = {"status": "in_maintenance"}
    fake_blockstore.waiter.callback(None)
    assert await bob.recv() == expected
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "not_found"}
    assert (await alice.cmd("realm_stats", realm_id=realm_id))["blocks_size"] == 0


# ---- the POSTGRESQL blockstore: a creation is one statement ---------------------------------------


async def wait_for_lock_waits(cursor: Any, count: int) -> None:
    """Until `count` sessions wait for a lock (bounded poll, no timing asserted)."""
    deadline = reactor.seconds() + 10
    while reactor.seconds() < deadline:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        if cursor.fetchone()[0] >= count:
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{count} sessions never waited for a lock")


@pytest.mark.storage("postgresql")
@ok
async def test_racing_creations_in_one_statement(world):
    """Two devices create one id at the same moment, inside the database: the second waits for
    the first's commit and gets `already_exists`; the block holds the bytes of the `ok`."""
    import psycopg2

    alice = await world.connect("alice@dev1")
    other = await world.connect("alice@dev2")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    locker = psycopg2.connect(world.app.config.db_url)
    try:
        cursor = locker.cursor()
        # The realm row locked as a maintenance start locks it: both creations wait in their
        # statement, and go on together once it is released.
        cursor.execute("SELECT 1 FROM realm WHERE realm_id = %s FOR NO KEY UPDATE", (str(realm_id),))
        alice.send("block_create", block_id=block_id, realm_id=realm_id, block=b"alice's")
        other.send("block_create", block_id=block_id, realm_id=realm_id, block=b"other's")
        watcher = psycopg2.connect(world.app.config.db_url)
        try:
            watcher.autocommit = True
            await wait_for_lock_waits(watcher.cursor(), 2)
        finally:
            watcher.close()
        locker.commit()
    finally:
        locker.close()
    replies = {"alice's": await alice.recv(), "other's": await other.recv()}
    assert sorted(rep["status"] for rep in replies.values()) == ["already_exists", "ok"], replies
    (winner,) = [data for data, rep in replies.items() if rep["status"] == "ok"]
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": winner.encode()}
    assert (await alice.cmd("realm_stats", realm_id=realm_id))["blocks_size"] == len(winner)


@pytest.mark.storage("postgresql")
@ok
async def test_one_statement_creation_respects_a_three_step_claim(world, fake_blockstore):
    """A creation in one statement meets the claim of a three-step creation in progress (another
    instance's, say): refused (`timeout`) while the claim stands."""
    alice = await world.connect("alice@dev1")
    other = await world.connect("alice@dev2")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    fake_blockstore.hang = True
    alice.send("block_create", block_id=block_id, realm_id=realm_id, block=b"mine")
    await fake_blockstore.create_called
    world.app.blockstore = fake_blockstore.inner  # the POSTGRESQL blockstore: one statement
    assert await create(other, realm_id, block_id, b"evil") == {"status": "timeout"}
    assert await create(other, realm_id, uuid4(), b"free id") == {"status": "ok"}
    world.app.blockstore = fake_blockstore
    fake_blockstore.waiter.callback(None)
    assert await alice.recv() == {"status": "ok"}
    world.app.blockstore = fake_blockstore.inner
    assert await create(other, realm_id, block_id, b"evil") == {"status": "already_exists"}
    assert await other.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"mine"}


@ok
async def test_bytes_of_a_refused_creation_do_not_stay(world, fake_blockstore):
    """Bytes written by a creation refused when recording belong to no block: the next
    creation of the id stores its own."""
    alice, bob, realm_id, block_id = await contributor_write_hanging(world, fake_blockstore, b"refused")
    await world.grant(alice, realm_id, "bob", "READER")
    fake_blockstore.waiter.callback(None)
    assert await bob.recv() == {"status": "not_allowed"}
    world.app.blockstore = fake_blockstore.inner  # on PostgreSQL: the one-statement creation
    assert await create(alice, realm_id, block_id, b"accepted") == {"status": "ok"}
    assert await bob.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"accepted"}


# ---- the cache of block bytes (parsec.backend.block_cache) ------------------------------------


class OutsideBlockStore:
    """The server's blockstore seen as one outside the process (the memory store gets no
    cache): counts the blocks read from it."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self.reads = 0

    async def create(self, organization_id: str, block_id: Any, block: bytes) -> None:
        await self._wrapped.create(organization_id, block_id, block)

    async def read(self, organization_id: str, block_id: Any) -> bytes:
        block = bytes(await self._wrapped.read(organization_id, block_id))
        self.reads += 1
        return block


class OutsideMetadataBlockStore(OutsideBlockStore):
    """The same around the POSTGRESQL blockstore, whose one-statement reads are counted too."""

    async def read_checked(self, organization_id: str, user_id: str, block_id: Any) -> bytes:
        block = bytes(await self._wrapped.read_checked(organization_id, user_id, block_id))
        self.reads += 1  # the bytes read (a refusal by the rules reads none)
        return block

    async def create_recorded(self, *args: Any) -> None:
        await self._wrapped.create_recorded(*args)


def outside_store(world) -> OutsideBlockStore:
    store = world.app.blockstore
    wrapper = OutsideMetadataBlockStore if isinstance(store, MetadataBlockStore) else OutsideBlockStore
    outside = wrapper(store)
    world.app.blockstore = outside
    return outside


@ok
async def test_cached_reads_still_check_the_rules(world, other_org):
    store = outside_store(world)
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    assert await create(alice, realm_id, block_id, b"cached") == {"status": "ok"}
    assert store.reads == 0  # a creation does not fill the cache
    for _ in range(3):
        assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"cached"}
    assert store.reads == 1
    # Each read of the kept bytes is checked: bob has no role, then READER, then none again.
    assert await bob.cmd("block_read", block_id=block_id) == {"status": "not_allowed"}
    await world.grant(alice, realm_id, "bob", "READER")
    assert await bob.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"cached"}
    await world.grant(alice, realm_id, "bob", None)
    assert await bob.cmd("block_read", block_id=block_id) == {"status": "not_allowed"}
    # The same id in another organization is another block.
    other = await world.connect("alice@dev1", org=other_org)
    assert await other.cmd("block_read", block_id=block_id) == {"status": "not_found"}
    foreign_realm = await world.create_realm(other)
    assert await create(other, foreign_realm, block_id, b"foreign") == {"status": "ok"}
    assert await other.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"foreign"}
    assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"cached"}
    assert store.reads == 2


@ok
async def test_the_cache_keeps_the_latest_read_within_its_size(server_factory):
    capacity = 3 * (1000 + ENTRY_OVERHEAD)
    world = await world_with_limits(server_factory, block_cache_bytes=capacity)
    store = outside_store(world)
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    blocks = {uuid4(): bytes([n]) * 1000 for n in range(4)}
    for block_id, block in blocks.items():
        assert await create(alice, realm_id, block_id, block) == {"status": "ok"}
    ids = list(blocks)

    async def read(block_id: Any) -> None:
        assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": blocks[block_id]}

    for block_id in ids[:3]:
        await read(block_id)
    await read(ids[0])  # the least recently read is now ids[1]
    assert store.reads == 3
    await read(ids[3])  # evicts ids[1]
    assert store.reads == 4
    for block_id in (ids[0], ids[2], ids[3]):
        await read(block_id)
    assert store.reads == 4
    await read(ids[1])
    assert store.reads == 5
    cache = world.app.component(BlockComponent).cache
    assert cache is not None and len(cache) == 3 and cache.size <= capacity
    # A block larger than the whole cache is served and not kept.
    big_id = uuid4()
    assert await create(alice, realm_id, big_id, b"x" * capacity) == {"status": "ok"}
    for _ in range(2):
        assert (await alice.cmd("block_read", block_id=big_id))["block"] == b"x" * capacity
    assert store.reads == 7 and len(cache) == 3
    await world.close_clients()


@ok
async def test_no_cache_at_size_zero(server_factory):
    world = await world_with_limits(server_factory, block_cache_bytes=0)
    store = outside_store(world)
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    block_id = uuid4()
    assert await create(alice, realm_id, block_id) == {"status": "ok"}
    for _ in range(2):
        assert await alice.cmd("block_read", block_id=block_id) == {"status": "ok", "block": b"data"}
    assert store.reads == 2
    assert world.app.component(BlockComponent).cache is None
    await world.close_clients()


@ok
async def test_the_memory_blockstore_has_no_cache(world):
    # The memory storage runs with the memory blockstore, PostgreSQL with POSTGRESQL.
    memory = world.app.config.db_type == "MOCKED"
    assert in_process(world.app.blockstore) is memory
    assert (world.app.component(BlockComponent).cache is None) is memory
