"""RAID failure rules (docs/protocol/storage.md §2.2-2.4, docs/protocol/DECISIONS.md) with in-memory fake nodes."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred

from parsec.blockstore.base import BlockStoreError
from parsec.blockstore.config import parse_blockstore_params
from parsec.blockstore.factory import BlockStoreUnavailableError, build_blockstore
from parsec.blockstore.memory import MemoryBlockStore
from parsec.blockstore.raid import RAID0BlockStore, RAID1BlockStore, RAID5BlockStore, split_raid5

from .conftest import FakeStore

ORG = "org42"
BLOCK = os.urandom(1000)


def error_events(logs: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [event for event in logs if text in event.get("log_format", "")]


# --- memory store -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_memory_store(captured_logs: list[dict[str, Any]]) -> None:
    store = MemoryBlockStore()
    await store.start()
    block_id = uuid.uuid4()
    await store.create(ORG, block_id, b"v1")
    await store.create(ORG, block_id, b"v1")  # idempotent
    assert await store.read(ORG, block_id) == b"v1"
    await store.create(ORG, block_id, b"")
    assert await store.read(ORG, block_id) == b""
    with pytest.raises(BlockStoreError, match="MOCKED: block not found"):
        await store.read("other-org", block_id)
    (event,) = error_events(captured_logs, "Block read error")
    assert event["organization_id"] == "other-org" and event["block_id"] == str(block_id)
    assert event["store"] == "MOCKED"
    await store.stop()


# --- RAID0 -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_raid0_node_failure_is_a_failure(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:3]
    raid = RAID0BlockStore(nodes)
    block_id = uuid.uuid4()
    target = nodes[block_id.int % 3]
    target.fail_create = True
    with pytest.raises(BlockStoreError):
        await raid.create(ORG, block_id, BLOCK)
    target.fail_create = False
    await raid.create(ORG, block_id, BLOCK)
    assert [node.creates for node in nodes] == [2 if node is target else 0 for node in nodes]
    target.fail_read = True
    with pytest.raises(BlockStoreError):
        await raid.read(ORG, block_id)


# --- RAID1 -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_raid1_one_node_failing_on_read(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:3]
    raid = RAID1BlockStore(nodes)
    block_id = uuid.uuid4()
    await raid.create(ORG, block_id, BLOCK)
    for failing in nodes:
        failing.fail_read = True
        assert await raid.read(ORG, block_id) == BLOCK
        failing.fail_read = False


@pytest_twisted.ensureDeferred
async def test_raid1_read_fails_only_when_all_nodes_fail(
    fake_stores: list[FakeStore], captured_logs: list[dict[str, Any]]
) -> None:
    nodes = fake_stores[:2]
    raid = RAID1BlockStore(nodes)
    block_id = uuid.uuid4()
    await raid.create(ORG, block_id, BLOCK)
    nodes[0].fail_read = True
    nodes[1].blocks.clear()  # the other copy is lost
    with pytest.raises(BlockStoreError) as excinfo:
        await raid.read(ORG, block_id)
    message = str(excinfo.value)
    assert message.startswith("RAID1: All nodes have failed (node 0: fake0: read refused")
    assert "node 1: fake1: block not found" in message
    assert "\n" not in message
    raid_events = [e for e in error_events(captured_logs, "Block read error") if e["store"] == "RAID1"]
    assert len(raid_events) == 1 and raid_events[0]["block_id"] == str(block_id)


@pytest_twisted.ensureDeferred
async def test_raid1_empty_block_is_valid(fake_stores: list[FakeStore]) -> None:
    # docs/protocol/DECISIONS.md: the reference took a 0-byte block read back for a failed node.
    raid = RAID1BlockStore(fake_stores[:2])
    block_id = uuid.uuid4()
    await raid.create(ORG, block_id, b"")
    assert await raid.read(ORG, block_id) == b""


@pytest_twisted.ensureDeferred
async def test_raid1_read_returns_first_answer_and_cancels_the_others(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:3]
    raid = RAID1BlockStore(nodes)
    block_id = uuid.uuid4()
    await raid.create(ORG, block_id, BLOCK)
    nodes[0].hang_read = True
    nodes[2].hang_read = True
    assert await raid.read(ORG, block_id) == BLOCK
    assert [node.cancelled for node in nodes] == [1, 0, 1]


@pytest_twisted.ensureDeferred
async def test_raid1_create_default_any_failure_fails(
    fake_stores: list[FakeStore], captured_logs: list[dict[str, Any]]
) -> None:
    nodes = fake_stores[:3]
    raid = RAID1BlockStore(nodes)
    block_id = uuid.uuid4()
    nodes[1].fail_create = True
    nodes[2].hang_create = True
    with pytest.raises(BlockStoreError, match="^RAID1: A node have failed"):
        await raid.create(ORG, block_id, BLOCK)
    assert nodes[2].cancelled == 1  # the remaining write was cancelled
    assert nodes[0].blocks == {(ORG, block_id): BLOCK}  # a copy written before the failure stays
    assert [e["store"] for e in error_events(captured_logs, "Block create error")] == ["RAID1"]


@pytest_twisted.ensureDeferred
async def test_raid1_create_partial_ok(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:3]
    raid = RAID1BlockStore(nodes, partial_create_ok=True)
    block_id = uuid.uuid4()
    nodes[0].fail_create = True
    nodes[1].fail_create = True
    await raid.create(ORG, block_id, BLOCK)
    assert await raid.read(ORG, block_id) == BLOCK
    nodes[2].fail_create = True
    with pytest.raises(BlockStoreError, match="^RAID1: All nodes have failed"):
        await raid.create(ORG, uuid.uuid4(), BLOCK)


@pytest_twisted.ensureDeferred
async def test_raid1_create_overwrites_a_previous_copy(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:2]
    block_id = uuid.uuid4()
    await nodes[1].create(ORG, block_id, b"stale")
    await RAID1BlockStore(nodes).create(ORG, block_id, BLOCK)
    assert [node.blocks[(ORG, block_id)] for node in nodes] == [BLOCK, BLOCK]


# --- RAID5 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", [0, 1, 2, 3])
@pytest_twisted.ensureDeferred
async def test_raid5_one_node_failing_on_read(fake_stores: list[FakeStore], failing: int) -> None:
    nodes = fake_stores[:4]
    raid = RAID5BlockStore(nodes)
    for block in (BLOCK, b"", b"x"):
        block_id = uuid.uuid4()
        await raid.create(ORG, block_id, block)
        nodes[failing].fail_read = True
        assert await raid.read(ORG, block_id) == block
        nodes[failing].fail_read = False
    # the parity is read only when a data node failed
    assert nodes[3].reads == (3 if failing < 3 else 0)


@pytest.mark.parametrize("failing", [(0, 1), (0, 3), (1, 2), (2, 3)])
@pytest_twisted.ensureDeferred
async def test_raid5_two_nodes_failing_on_read(
    fake_stores: list[FakeStore], failing: tuple[int, int], captured_logs: list[dict[str, Any]]
) -> None:
    nodes = fake_stores[:4]
    raid = RAID5BlockStore(nodes)
    block_id = uuid.uuid4()
    await raid.create(ORG, block_id, BLOCK)
    for index in failing:
        nodes[index].fail_read = True
    if failing == (2, 3):
        # the parity is not needed while the data nodes answer
        nodes[3].fail_read = True
        nodes[2].fail_read = False
        assert await raid.read(ORG, block_id) == BLOCK
        return
    with pytest.raises(BlockStoreError, match="^RAID5: More than 1 nodes have failed"):
        await raid.read(ORG, block_id)
    assert [e["store"] for e in error_events(captured_logs, "Block read error") if e["store"] == "RAID5"] == [
        "RAID5"
    ]


@pytest_twisted.ensureDeferred
async def test_raid5_second_failure_cancels_pending_reads(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:5]
    raid = RAID5BlockStore(nodes)
    block_id = uuid.uuid4()
    await raid.create(ORG, block_id, BLOCK)
    nodes[0].fail_read = True
    nodes[1].fail_read = True
    nodes[2].hang_read = True
    with pytest.raises(BlockStoreError):
        await raid.read(ORG, block_id)
    assert nodes[2].cancelled == 1


@pytest_twisted.ensureDeferred
async def test_raid5_layout_on_nodes(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:3]
    block_id = uuid.uuid4()
    await RAID5BlockStore(nodes).create(ORG, block_id, BLOCK)
    assert [node.blocks[(ORG, block_id)] for node in nodes] == split_raid5(BLOCK, 3)


@pytest_twisted.ensureDeferred
async def test_raid5_create_default_any_failure_fails(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:3]
    nodes[2].fail_create = True
    nodes[1].hang_create = True
    with pytest.raises(BlockStoreError, match="^RAID5: A node have failed"):
        await RAID5BlockStore(nodes).create(ORG, uuid.uuid4(), BLOCK)
    assert nodes[1].cancelled == 1


@pytest_twisted.ensureDeferred
async def test_raid5_create_partial_ok(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:4]
    raid = RAID5BlockStore(nodes, partial_create_ok=True)
    block_id = uuid.uuid4()
    nodes[1].fail_create = True
    await raid.create(ORG, block_id, BLOCK)
    nodes[1].fail_create = False
    nodes[1].fail_read = True
    assert await raid.read(ORG, block_id) == BLOCK
    nodes[0].fail_create = True
    nodes[1].fail_create = True
    nodes[2].hang_create = True
    with pytest.raises(BlockStoreError, match="^RAID5: More than 1 nodes have failed"):
        await raid.create(ORG, uuid.uuid4(), BLOCK)
    assert nodes[2].cancelled == 1


def test_raid5_needs_three_nodes() -> None:
    with pytest.raises(ValueError, match="RAID5 block store needs at least 3 nodes"):
        RAID5BlockStore([MemoryBlockStore(), MemoryBlockStore()])


@pytest_twisted.ensureDeferred
async def test_cancelling_a_raid_read_cancels_its_nodes(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:3]
    for node in nodes:
        node.hang_read = True
    for raid in (RAID1BlockStore(nodes), RAID5BlockStore(nodes)):
        before = [node.cancelled for node in nodes]
        deferred = Deferred.fromCoroutine(raid.read(ORG, uuid.uuid4()))
        deferred.cancel()
        with pytest.raises(CancelledError):
            await deferred
        cancelled = [node.cancelled - count for node, count in zip(nodes, before, strict=True)]
        assert cancelled == ([1, 1, 1] if isinstance(raid, RAID1BlockStore) else [1, 1, 0])


# --- start / stop, factory --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_raid_start_fails_if_a_node_fails_and_stops_them(fake_stores: list[FakeStore]) -> None:
    nodes = fake_stores[:2]
    nodes[1].fail_start = True
    raid = RAID1BlockStore(nodes)
    with pytest.raises(BlockStoreError) as excinfo:
        await raid.start()
    assert str(excinfo.value) == "RAID1: start-up check failed (node 1: fake1: start refused by the test)"
    assert [node.stopped for node in nodes] == [1, 1]


def test_factory() -> None:
    assert isinstance(build_blockstore(parse_blockstore_params(["MOCKED"])), MemoryBlockStore)
    raid = build_blockstore(parse_blockstore_params(["RAID5:0:MOCKED", "RAID5:1:MOCKED", "RAID5:2:MOCKED"]))
    assert isinstance(raid, RAID5BlockStore) and len(raid.nodes) == 3
    raid1 = build_blockstore(parse_blockstore_params(["RAID1:0:MOCKED"]))
    assert isinstance(raid1, RAID1BlockStore) and not raid1.partial_create_ok
    with pytest.raises(BlockStoreUnavailableError, match="PostgreSQL block store is not available"):
        build_blockstore(parse_blockstore_params(["POSTGRESQL"]))
    with pytest.raises(BlockStoreUnavailableError):
        build_blockstore(parse_blockstore_params(["RAID1:0:MOCKED", "RAID1:1:POSTGRESQL"]))
