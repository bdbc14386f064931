"""In-memory blockstore (`MOCKED`): lost on restart, for development and tests."""

from __future__ import annotations

import uuid

from parsec.blockstore.base import BlockStoreError, log_block_error


class MemoryBlockStore:
    description = "MOCKED"
    in_process = True  # parsec.blockstore.base.in_process: its bytes need no cache

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, uuid.UUID], bytes] = {}

    def __repr__(self) -> str:
        return "MemoryBlockStore()"

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        try:
            return self._blocks[(organization_id, block_id)]
        except KeyError:
            error = BlockStoreError(self.description, "block not found")
            log_block_error("read", error, organization_id, block_id)
            raise error from None

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        self._blocks[(organization_id, block_id)] = bytes(block)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def check(self) -> None:
        pass
