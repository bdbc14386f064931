"""parsec.backend.block_cache: least recently used first, within its size."""

from __future__ import annotations

from uuid import uuid4

from parsec.backend.block_cache import ENTRY_OVERHEAD, BlockCache


def test_lru_within_capacity() -> None:
    cache = BlockCache(3 * (100 + ENTRY_OVERHEAD))
    ids = [uuid4() for _ in range(4)]
    for n, block_id in enumerate(ids[:3]):
        cache.put("Org", block_id, bytes([n]) * 100)
    assert cache.size == 3 * (100 + ENTRY_OVERHEAD) and len(cache) == 3
    assert cache.get("Org", ids[0]) == bytes([0]) * 100  # now the most recent
    assert cache.get("Other", ids[0]) is None  # keyed by organization too
    cache.put("Org", ids[3], b"\x03" * 100)
    assert cache.get("Org", ids[1]) is None  # the least recently used left
    assert [cache.get("Org", i) is not None for i in (ids[0], ids[2], ids[3])] == [True, True, True]
    assert (cache.hits, cache.misses, cache.evictions) == (4, 2, 1)


def test_sizes_are_counted_and_replaced() -> None:
    cache = BlockCache(10_000)
    block_id = uuid4()
    cache.put("Org", block_id, b"a" * 1000)
    cache.put("Org", block_id, b"a" * 1000)  # two instances reading at once: kept once
    assert cache.size == 1000 + ENTRY_OVERHEAD and len(cache) == 1
    # A large block evicts as many as needed.
    for _ in range(5):
        cache.put("Org", uuid4(), b"b" * 1000)
    cache.put("Org", uuid4(), b"c" * 9000)
    assert len(cache) == 1 and cache.size == 9000 + ENTRY_OVERHEAD


def test_a_block_over_the_capacity_is_not_kept() -> None:
    cache = BlockCache(1000)
    cache.put("Org", uuid4(), b"x" * 1000)  # 1000 + overhead > capacity
    assert len(cache) == 0 and cache.size == 0 and cache.evictions == 0


def test_kept_as_bytes() -> None:
    cache = BlockCache(10_000)
    block_id = uuid4()
    buffer = bytearray(b"abc")
    cache.put("Org", block_id, buffer)  # type: ignore[arg-type]
    buffer[0] = ord("x")
    assert cache.get("Org", block_id) == b"abc"
    data = b"d" * 100
    cache.put("Org", block_id, data)
    assert cache.get("Org", block_id) is data  # bytes are kept as they are
