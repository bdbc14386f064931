"""The MOCKED storage: every domain in process memory (lost on exit)."""

from __future__ import annotations

from parsec.backend.bus import EventBus
from parsec.backend.storage import Storage
from parsec.storage.memory.invite import MemoryInviteStorage
from parsec.storage.memory.organization import (
    MemoryDatastore,
    MemoryOrganizationStorage,
    MemoryUserStorage,
)
from parsec.storage.memory.pki import MemoryPkiStorage
from parsec.storage.memory.realm import (
    MemoryBlockStorage,
    MemoryMessageStorage,
    MemoryRealmStorage,
    MemoryVlobStorage,
)


def build_memory_storage(bus: EventBus) -> Storage:
    """The storage; its writes publish their events on `bus`."""
    store = MemoryDatastore(bus)
    return Storage(
        organization=MemoryOrganizationStorage(store),
        user=MemoryUserStorage(store),
        invite=MemoryInviteStorage(store),
        realm=MemoryRealmStorage(store),
        vlob=MemoryVlobStorage(store),
        block=MemoryBlockStorage(store),
        message=MemoryMessageStorage(store),
        pki=MemoryPkiStorage(store),
    )
