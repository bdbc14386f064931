"""A bounded cache of block bytes in the server process, in front of a blockstore outside it.

Why it is safe: a block id, once recorded, always carries the same bytes. A second creation of
the id is refused (`already_exists`), and nothing changes or deletes a block. So bytes read
once from the store can be served again from memory, by any instance, for as long as they are
kept. The cache replaces only the bytes: every read still has its rules checked by the storage
(the reader's role in the block's realm, the realm's maintenance, the block being recorded),
as without it, in one statement.

What it saves: the blockstore's request, which is most of a read. On the POSTGRESQL
blockstore that is the database reading the block's TOAST chunks and the two copies of the
bytes on our side (libpq's result, then the `bytes` made of it). On S3 and Swift it is an
HTTP request to the object store. Blocks enter the cache when they are read, not when they are
created. An upload therefore costs no memory beyond its own request, and the 16 concurrent
512 KiB uploads of the benchmark keep their RSS.

Its bound is the limit `block_cache_bytes` (`--block-cache-size`, 0: no cache), counted on the
blocks' lengths plus `ENTRY_OVERHEAD` for each entry. The least recently used blocks leave
first. The memory blockstore (MOCKED) gets no cache: its blocks are already in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from uuid import UUID

# What an entry costs besides its bytes: the key tuple and its UUID, the ordered dict's slot
# and links, the bytes object's header (sys.getsizeof and tracemalloc put it at 250-300 bytes
# with the organization id shared).
ENTRY_OVERHEAD = 300


class BlockCache:
    """Least-recently-used block bytes, at most `capacity` bytes counted (see the module doc).

    Not thread-safe: used from the reactor thread only."""

    __slots__ = ("capacity", "size", "hits", "misses", "evictions", "_entries")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0  # bytes counted for the entries held
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[tuple[str, UUID], bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, organization_id: str, block_id: UUID) -> bytes | None:
        key = (organization_id, block_id)
        block = self._entries.get(key)
        if block is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return block

    def put(self, organization_id: str, block_id: UUID, block: bytes) -> None:
        """Keep `block` (bytes just read from the store), evicting the least recently used
        entries to make room. A block that would take more than the whole capacity is not
        kept."""
        cost = len(block) + ENTRY_OVERHEAD
        if cost > self.capacity:
            return
        if type(block) is not bytes:
            # Never a view pinning a larger buffer, nor a buffer someone may change (the
            # stores return bytes: then nothing is copied).
            block = bytes(block)
        key = (organization_id, block_id)
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.size -= len(previous) + ENTRY_OVERHEAD
        entries = self._entries
        while self.size + cost > self.capacity:
            _, evicted = entries.popitem(last=False)
            self.size -= len(evicted) + ENTRY_OVERHEAD
            self.evictions += 1
        entries[key] = block
        self.size += cost
