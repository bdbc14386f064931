"""organization_stats sizes and realm counts (docs/protocol/commands.md §5.2) as realms, vlobs and blocks are
written, and realm_stats alongside."""

from __future__ import annotations

from uuid import uuid4

import pytest_twisted

ok = pytest_twisted.ensureDeferred


async def stats(client) -> tuple[int, int, int]:
    rep = await client.cmd("organization_stats")
    assert rep["status"] == "ok", rep
    return rep["data_size"], rep["metadata_size"], rep["realms"]


@ok
async def test_sizes_and_realms(world, other_org):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    assert await stats(alice) == (0, 0, 0)
    realm_id = await world.create_realm(alice)
    assert await stats(alice) == (0, 0, 1)
    await world.create_realm(bob)
    assert await stats(alice) == (0, 0, 2)
    vlob_id = await world.create_vlob(alice, realm_id, b"1234")
    assert await stats(alice) == (0, 4, 2)
    rep = await alice.cmd("block_create", block_id=uuid4(), realm_id=realm_id, block=b"1234")
    assert rep == {"status": "ok"}
    assert await stats(alice) == (4, 4, 2)
    rep = await alice.cmd(
        "vlob_update", encryption_revision=1, vlob_id=vlob_id, version=2, timestamp=world.ts(), blob=b"12345678"
    )
    assert rep == {"status": "ok"}
    assert await stats(alice) == (4, 12, 2)
    # Refused writes count nothing.
    rep = await alice.cmd("block_create", block_id=uuid4(), realm_id=uuid4(), block=b"1234")
    assert rep == {"status": "not_found"}
    assert await stats(alice) == (4, 12, 2)
    # Organizations are isolated.
    other = await world.connect("alice@dev1", org=other_org)
    assert await stats(other) == (0, 0, 0)
    # Non admins are refused.
    assert await bob.cmd("organization_stats") == {"status": "not_allowed", "reason": "User `bob` is not admin"}


@ok
async def test_reencrypted_copies(world):
    """Production semantics: organization metadata counts every stored vlob version, re-encrypted
    copies included; realm_stats counts each version once, as written."""
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    await world.create_vlob(alice, realm_id, b"1234")
    rep = await alice.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=realm_id,
        encryption_revision=2,
        timestamp=world.ts(),
        per_participant_message={"alice": b""},
    )
    assert rep == {"status": "ok"}
    batch = (
        await alice.cmd(
            "vlob_maintenance_get_reencryption_batch", realm_id=realm_id, encryption_revision=2, size=10
        )
    )["batch"]
    rep = await alice.cmd(
        "vlob_maintenance_save_reencryption_batch",
        realm_id=realm_id,
        encryption_revision=2,
        batch=[{**entry, "blob": b"123456"} for entry in batch],
    )
    assert rep == {"status": "ok", "total": 1, "done": 1}
    assert await stats(alice) == (0, 10, 1)
    assert await alice.cmd("realm_stats", realm_id=realm_id) == {"status": "ok", "blocks_size": 0, "vlobs_size": 4}
