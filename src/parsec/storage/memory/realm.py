"""In-memory realms, vlobs, blocks metadata and messages."""

from __future__ import annotations

from uuid import UUID

from parsec.storage.memory.organization import MemoryDatastore


class MemoryRealmStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store

    async def get_realms_for_user(self, organization_id: str, user_id: str) -> dict[UUID, str]:
        return {}


class MemoryVlobStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store


class MemoryBlockStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store


class MemoryMessageStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store
