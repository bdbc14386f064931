"""In-memory invitations and conduits."""

from __future__ import annotations

from uuid import UUID

from parsec.backend.models import Invitation
from parsec.backend.storage import NotFoundError
from parsec.storage.memory.organization import MemoryDatastore


class MemoryInviteStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store

    def _invitations(self, organization_id: str) -> dict[UUID, Invitation]:
        return self._store.domain(organization_id, "invitations", dict)

    async def info(self, organization_id: str, token: UUID) -> Invitation:
        try:
            return self._invitations(organization_id)[token]
        except KeyError:
            raise NotFoundError() from None
