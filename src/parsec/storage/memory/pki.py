"""In-memory PKI enrollments."""

from __future__ import annotations

from parsec.storage.memory.organization import MemoryDatastore


class MemoryPkiStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store
