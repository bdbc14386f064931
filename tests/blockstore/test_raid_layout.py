"""RAID layouts (docs/protocol/storage.md §2.2-2.4), property-tested against an independent, naive model."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from parsec.blockstore.memory import MemoryBlockStore
from parsec.blockstore.raid import (
    RAID0BlockStore,
    RAID1BlockStore,
    RAID5BlockStore,
    rebuild_raid5,
    split_raid5,
)

ORG = "org"
nodes_st = st.integers(min_value=3, max_value=16)
blocks_st = st.binary(max_size=256) | st.sampled_from([b"", b"\x00", b"\xff" * 4096])
block_ids = st.uuids()


def run(coroutine: Any) -> Any:
    """Memory stores complete synchronously: so does any RAID over them."""
    result: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(result.append)
    assert result, "did not complete synchronously"
    if isinstance(result[0], Failure):
        result[0].raiseException()
    return result[0]


def naive_raid5(block: bytes, nodes: int) -> list[bytes]:
    """docs/protocol/storage.md §2.4, written as plainly as possible."""
    k = nodes - 1
    size = (len(block) + 4 + k - 1) // k
    payload = bytearray(len(block).to_bytes(4, "big") + block)
    while len(payload) < size * k:
        payload.append(0)
    chunks = [bytes(payload[i * size : (i + 1) * size]) for i in range(k)]
    parity = bytearray(size)
    for chunk in chunks:
        for i, byte in enumerate(chunk):
            parity[i] ^= byte
    return [*chunks, bytes(parity)]


@settings(max_examples=300, deadline=None, database=None)
@given(block=blocks_st, nodes=nodes_st)
def test_raid5_split_matches_the_specification(block: bytes, nodes: int) -> None:
    pieces = split_raid5(block, nodes)
    assert pieces == naive_raid5(block, nodes)
    k = nodes - 1
    assert len(pieces) == nodes
    assert {len(piece) for piece in pieces} == {-(-(len(block) + 4) // k)}


@settings(max_examples=300, deadline=None, database=None)
@given(block=blocks_st, nodes=nodes_st, data=st.data())
def test_raid5_rebuilds_any_single_missing_data_chunk(block: bytes, nodes: int, data: st.DataObject) -> None:
    pieces = split_raid5(block, nodes)
    chunks: list[bytes | None] = list(pieces[:-1])
    assert rebuild_raid5(chunks, None) == block
    assert rebuild_raid5(chunks, pieces[-1]) == block
    missing = data.draw(st.integers(min_value=0, max_value=nodes - 2))
    chunks[missing] = None
    assert rebuild_raid5(chunks, pieces[-1]) == block


@settings(max_examples=150, deadline=None, database=None)
@given(block=blocks_st, nodes=nodes_st, block_id=block_ids, data=st.data())
def test_raid5_store_layout_and_degraded_reads(
    block: bytes, nodes: int, block_id: uuid.UUID, data: st.DataObject
) -> None:
    stores = [MemoryBlockStore() for _ in range(nodes)]
    raid = RAID5BlockStore(stores)
    run(raid.create(ORG, block_id, block))
    # node i holds chunk i, the last node the parity: never rotated
    assert [run(store.read(ORG, block_id)) for store in stores] == naive_raid5(block, nodes)
    assert run(raid.read(ORG, block_id)) == block
    # any single node lost (parity included): still byte for byte
    lost = data.draw(st.integers(min_value=0, max_value=nodes - 1))
    del stores[lost]._blocks[(ORG, block_id)]
    assert run(raid.read(ORG, block_id)) == block


@settings(max_examples=100, deadline=None, database=None)
@given(block=blocks_st, nodes=st.integers(min_value=1, max_value=16), block_id=block_ids)
def test_raid0_puts_the_whole_block_on_one_node(block: bytes, nodes: int, block_id: uuid.UUID) -> None:
    stores = [MemoryBlockStore() for _ in range(nodes)]
    raid = RAID0BlockStore(stores)
    run(raid.create(ORG, block_id, block))
    expected = int.from_bytes(block_id.bytes, "big") % nodes
    holders = [index for index, store in enumerate(stores) if store._blocks]
    assert holders == [expected]
    assert run(raid.read(ORG, block_id)) == block


@settings(max_examples=100, deadline=None, database=None)
@given(block=blocks_st, nodes=st.integers(min_value=1, max_value=16), block_id=block_ids)
def test_raid1_mirrors(block: bytes, nodes: int, block_id: uuid.UUID) -> None:
    stores = [MemoryBlockStore() for _ in range(nodes)]
    raid = RAID1BlockStore(stores)
    run(raid.create(ORG, block_id, block))
    assert all(run(store.read(ORG, block_id)) == block for store in stores)
    assert run(raid.read(ORG, block_id)) == block


def test_raid0_uses_the_uuid_as_a_big_endian_integer() -> None:
    block_id = uuid.UUID("0694a21176354e8295e28a543e5887f9")
    stores = [MemoryBlockStore() for _ in range(7)]
    run(RAID0BlockStore(stores).create(ORG, block_id, b"x"))
    assert (ORG, block_id) in stores[0x0694A21176354E8295E28A543E5887F9 % 7]._blocks


def test_raid5_known_vector() -> None:
    # 3 nodes, "abc": payload 00 00 00 03 61 62 63 + 1 byte padding, chunks of 4 bytes
    assert split_raid5(b"abc", 3) == [b"\x00\x00\x00\x03", b"abc\x00", b"abc\x03"]
    assert split_raid5(b"", 3) == [b"\x00\x00", b"\x00\x00", b"\x00\x00"]


def test_raid5_wrong_sized_chunk_is_not_detected() -> None:
    # The reference returns a corrupted block rather than an error: so do we (no crash).
    pieces = split_raid5(b"hello world", 4)
    corrupted = rebuild_raid5([pieces[0], pieces[1][:-1], None], pieces[3])
    assert isinstance(corrupted, bytes)
