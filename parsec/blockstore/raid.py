"""RAID0 / RAID1 / RAID5 over any blockstores (docs/protocol/storage.md §2.2-2.4).

* RAID0: the whole block on node `block_id.int % N` (UUID bytes as a big-endian integer).
* RAID1: the whole block on every node; a read returns the first node that answers.
* RAID5: N >= 3 nodes, k = N - 1 data chunks of `uint32_be(len) || block || zero padding`,
  bytewise XOR parity always on the last node; one missing chunk is rebuilt at read.

Requests to the nodes run concurrently; once the outcome is known the requests still running
are cancelled ("losers"). Nodes that completed a write before a failure keep it (harmless:
writes are idempotent).
"""

from __future__ import annotations

import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar

from twisted.internet.defer import Deferred, DeferredQueue
from twisted.logger import Logger
from twisted.python.failure import Failure

from parsec.blockstore.base import BlockStore, BlockStoreError, log_block_error

_log = Logger(namespace="parsec.blockstore")

T = TypeVar("T")

_LENGTH_PREFIX_SIZE = 4


# --- RAID5 layout -----------------------------------------------------------------------------


def xor_chunks(chunks: Sequence[bytes], size: int) -> bytes:
    """Bytewise XOR of `chunks`, each taken as zero-padded (or truncated) to `size` bytes."""
    accumulator = 0
    for chunk in chunks:
        # Little-endian integers: a short chunk is implicitly padded with zeros on the right.
        accumulator ^= int.from_bytes(chunk[:size], "little")
    return accumulator.to_bytes(size, "little")


def raid5_chunk_size(block_size: int, data_chunks: int) -> int:
    return -(-(block_size + _LENGTH_PREFIX_SIZE) // data_chunks)


def split_raid5(block: bytes, nodes: int) -> list[bytes]:
    """The `nodes` pieces of `block`: nodes - 1 data chunks, then the parity."""
    if nodes < 3:
        raise ValueError("RAID5 needs at least 3 nodes")
    data_chunks = nodes - 1
    size = raid5_chunk_size(len(block), data_chunks)
    payload = len(block).to_bytes(_LENGTH_PREFIX_SIZE, "big") + block
    payload += bytes(size * data_chunks - len(payload))
    chunks = [payload[i * size : (i + 1) * size] for i in range(data_chunks)]
    return [*chunks, xor_chunks(chunks, size)]


def rebuild_raid5(data: Sequence[bytes | None], parity: bytes | None) -> bytes:
    """The block from the data chunks (in node order), at most one of them missing (None).

    A missing chunk is the XOR of the parity and the other chunks. Chunks of an unexpected size
    are not detected: the result is then garbage, as in the reference (the client, which
    decrypts the block, notices).
    """
    missing = [index for index, chunk in enumerate(data) if chunk is None]
    if len(missing) > 1:
        raise ValueError("more than one data chunk missing")
    if missing:
        if parity is None:
            raise ValueError("a data chunk is missing and the parity too")
        present = [chunk for chunk in data if chunk is not None]
        rebuilt = xor_chunks([parity, *present], len(parity))
        chunks = [rebuilt if chunk is None else chunk for chunk in data]
    else:
        chunks = [chunk for chunk in data if chunk is not None]
    payload = b"".join(chunks)
    length = int.from_bytes(payload[:_LENGTH_PREFIX_SIZE], "big")
    return payload[_LENGTH_PREFIX_SIZE : _LENGTH_PREFIX_SIZE + length]


# --- concurrency ------------------------------------------------------------------------------


class _Concurrent:
    """Run node operations concurrently and hand back their outcomes as they complete."""

    def __init__(self) -> None:
        self._outcomes: DeferredQueue[tuple[int, Any]] = DeferredQueue()
        self._running: dict[int, Deferred[Any]] = {}
        self.outstanding = 0  # spawned operations whose outcome has not been taken by `next`

    def spawn(self, node: int, operation: Coroutine[Any, Any, Any]) -> None:
        deferred = Deferred.fromCoroutine(operation)
        self.outstanding += 1
        self._running[node] = deferred
        # May run at once: a memory store completes synchronously.
        deferred.addBoth(self._completed, node)

    def _completed(self, outcome: Any, node: int) -> None:
        # Returning None consumes failures: a cancelled loser is never an unhandled error.
        if self._running.pop(node, None) is not None:
            self._outcomes.put((node, outcome))

    async def next(self) -> tuple[int, Any]:
        """(node, result or Failure) of the next operation to complete."""
        outcome = await self._outcomes.get()
        self.outstanding -= 1
        return outcome

    def cancel_all(self) -> None:
        running = list(self._running.values())
        self._running.clear()
        for deferred in running:
            deferred.cancel()


def _reason(failure: Failure) -> str:
    if failure.check(BlockStoreError):
        return str(failure.value)
    return f"{type(failure.value).__name__}: {failure.getErrorMessage()}"


def _details(failures: dict[int, Failure]) -> str:
    return "; ".join(f"node {node}: {_reason(failure)}" for node, failure in sorted(failures.items()))


def _check_failure(failure: Failure, kind: str, node: int) -> None:
    if not failure.check(BlockStoreError):
        # A bug rather than a storage fault: keep the traceback.
        _log.failure(
            "Unexpected error in RAID node {node} during block {kind}", failure, node=node, kind=kind
        )


class _RaidBlockStore:
    raid_type: str

    def __init__(self, nodes: Sequence[BlockStore], partial_create_ok: bool = False) -> None:
        if not nodes:
            raise ValueError(f"{self.raid_type} needs at least one node")
        self.nodes: tuple[BlockStore, ...] = tuple(nodes)
        self.partial_create_ok = partial_create_ok

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.nodes)!r})"

    def _fail(
        self,
        kind: Literal["read", "create"],
        organization_id: str,
        block_id: uuid.UUID,
        summary: str,
        failures: dict[int, Failure],
    ) -> BlockStoreError:
        error = BlockStoreError(self.raid_type, f"{summary} ({_details(failures)})")
        log_block_error(kind, error, organization_id, block_id)
        return error

    async def _on_all_nodes(
        self, what: str, operations: list[Coroutine[Any, Any, None]]
    ) -> dict[int, Failure]:
        concurrent = _Concurrent()
        for node, operation in enumerate(operations):
            concurrent.spawn(node, operation)
        failures: dict[int, Failure] = {}
        while concurrent.outstanding:
            node, outcome = await concurrent.next()
            if isinstance(outcome, Failure):
                _check_failure(outcome, what, node)
                failures[node] = outcome
        return failures

    async def start(self) -> None:
        """Every node must pass its start-up check (a RAID is not started degraded)."""
        failures = await self._on_all_nodes("start", [node.start() for node in self.nodes])
        if failures:
            await self.stop()
            raise BlockStoreError(self.raid_type, f"start-up check failed ({_details(failures)})")

    def _nodes_that_may_fail(self) -> int:
        """How many nodes may be down while every block can still be read."""
        return 0

    async def check(self) -> None:
        """Ready while every block can be read: at most `_nodes_that_may_fail()` nodes down."""
        failures = await self._on_all_nodes("check", [node.check() for node in self.nodes])
        if len(failures) > self._nodes_that_may_fail():
            raise BlockStoreError(self.raid_type, _details(failures))

    async def stop(self) -> None:
        failures = await self._on_all_nodes("stop", [node.stop() for node in self.nodes])
        for node, failure in failures.items():
            _log.warn("Error while stopping RAID node {node}: {reason}", node=node, reason=_reason(failure))

    async def _create_everywhere(
        self, organization_id: str, block_id: uuid.UUID, pieces: Sequence[bytes], tolerated: int
    ) -> None:
        """Write pieces[i] on node i; fail as soon as more than `tolerated` nodes failed."""
        concurrent = _Concurrent()
        for node, (store, piece) in enumerate(zip(self.nodes, pieces, strict=True)):
            concurrent.spawn(node, store.create(organization_id, block_id, piece))
        failures: dict[int, Failure] = {}
        try:
            while concurrent.outstanding:
                node, outcome = await concurrent.next()
                if not isinstance(outcome, Failure):
                    continue
                _check_failure(outcome, "create", node)
                failures[node] = outcome
                if len(failures) > tolerated:
                    if tolerated == 0:
                        summary = "A node have failed"
                    elif len(failures) == len(self.nodes):
                        summary = "All nodes have failed"
                    else:
                        summary = f"More than {tolerated} nodes have failed"
                    raise self._fail("create", organization_id, block_id, summary, failures)
        finally:
            concurrent.cancel_all()


class RAID0BlockStore(_RaidBlockStore):
    raid_type = "RAID0"

    def node_for(self, block_id: uuid.UUID) -> BlockStore:
        return self.nodes[block_id.int % len(self.nodes)]

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        return await self.node_for(block_id).read(organization_id, block_id)

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        await self.node_for(block_id).create(organization_id, block_id, block)


class RAID1BlockStore(_RaidBlockStore):
    raid_type = "RAID1"

    def _nodes_that_may_fail(self) -> int:
        return len(self.nodes) - 1

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        concurrent = _Concurrent()
        for node, store in enumerate(self.nodes):
            concurrent.spawn(node, store.read(organization_id, block_id))
        failures: dict[int, Failure] = {}
        try:
            while concurrent.outstanding:
                node, outcome = await concurrent.next()
                if not isinstance(outcome, Failure):
                    # A 0-byte block is a valid block (the reference took it for a failed node).
                    block: bytes = outcome
                    return block
                _check_failure(outcome, "read", node)
                failures[node] = outcome
        finally:
            concurrent.cancel_all()
        raise self._fail("read", organization_id, block_id, "All nodes have failed", failures)

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        tolerated = len(self.nodes) - 1 if self.partial_create_ok else 0
        await self._create_everywhere(organization_id, block_id, [block] * len(self.nodes), tolerated)


class RAID5BlockStore(_RaidBlockStore):
    raid_type = "RAID5"

    def __init__(self, nodes: Sequence[BlockStore], partial_create_ok: bool = False) -> None:
        if len(nodes) < 3:
            raise ValueError("RAID5 block store needs at least 3 nodes")
        super().__init__(nodes, partial_create_ok)

    def _nodes_that_may_fail(self) -> int:
        return 1  # rebuilt from the parity

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        parity_node = len(self.nodes) - 1
        data: list[bytes | None] = [None] * parity_node
        parity: bytes | None = None
        concurrent = _Concurrent()
        for node in range(parity_node):
            concurrent.spawn(node, self.nodes[node].read(organization_id, block_id))
        failures: dict[int, Failure] = {}
        try:
            while concurrent.outstanding:
                node, outcome = await concurrent.next()
                if isinstance(outcome, Failure):
                    _check_failure(outcome, "read", node)
                    failures[node] = outcome
                    if len(failures) > 1:
                        raise self._fail(
                            "read", organization_id, block_id, "More than 1 nodes have failed", failures
                        )
                    # Degraded: the parity is needed to rebuild the missing chunk.
                    concurrent.spawn(parity_node, self.nodes[parity_node].read(organization_id, block_id))
                elif node == parity_node:
                    parity = outcome
                else:
                    data[node] = outcome
        finally:
            concurrent.cancel_all()
        return rebuild_raid5(data, parity)

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        pieces = split_raid5(block, len(self.nodes))
        await self._create_everywhere(organization_id, block_id, pieces, 1 if self.partial_create_ok else 0)
