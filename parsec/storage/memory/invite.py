"""In-memory invitations and conduits (docs/protocol/invitations.md)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

import attrs

from parsec.backend import bus as events
from parsec.backend.conduit import (
    ConduitListenCtx,
    ConduitSlots,
    answer_after_deletion,
    conduit_listen,
    conduit_talk,
)
from parsec.backend.models import HumanHandle, Invitation
from parsec.backend.storage import (
    AlreadyDeletedError,
    AlreadyMemberError,
    NotFoundError,
)
from parsec.storage.memory.organization import MemoryDatastore, email_used_by_active_user


@attrs.define
class _Entry:
    invitation: Invitation
    conduit: ConduitSlots = attrs.field(factory=ConduitSlots)


class MemoryInviteStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store

    def _entries(self, organization_id: str) -> dict[UUID, _Entry]:
        return self._store.domain(organization_id, "invitations", dict)

    def _pending(self, organization_id: str, greeter_user_id: str) -> dict[UUID, _Entry]:
        """The greeter's invitations not deleted (deleted ones stay in `_entries`): what a new
        invitation and the greeter's list look at, without a scan of every invitation the
        organization ever had."""
        by_greeter: dict[str, dict[UUID, _Entry]] = self._store.domain(organization_id, "pending_invitations", dict)
        return by_greeter.setdefault(greeter_user_id, {})

    async def info(self, organization_id: str, token: UUID) -> Invitation:
        try:
            return self._entries(organization_id)[token].invitation
        except KeyError:
            raise NotFoundError() from None

    async def new(
        self,
        organization_id: str,
        greeter_user_id: str,
        greeter_human_handle: HumanHandle | None,
        type: str,
        claimer_email: str | None,
        created_on: datetime,
    ) -> Invitation:
        entries = self._entries(organization_id)
        if type == "USER":
            assert claimer_email is not None
            if email_used_by_active_user(self._store.get(organization_id), claimer_email, created_on):
                raise AlreadyMemberError()
        pending = self._pending(organization_id, greeter_user_id)
        for entry in pending.values():
            inv = entry.invitation
            if inv.type == type and inv.claimer_email == claimer_email:
                self._store.publish(events.invite_status_changed(organization_id, greeter_user_id, inv.token, "IDLE"))
                return inv
        invitation = Invitation(
            token=uuid4(),
            type=type,
            greeter_user_id=greeter_user_id,
            greeter_human_handle=greeter_human_handle,
            created_on=created_on,
            claimer_email=claimer_email,
        )
        entries[invitation.token] = pending[invitation.token] = _Entry(invitation)
        self._store.publish(events.invite_status_changed(organization_id, greeter_user_id, invitation.token, "IDLE"))
        return invitation

    async def delete(
        self, organization_id: str, greeter_user_id: str, token: UUID, on: datetime, reason: str
    ) -> None:
        entry = self._entries(organization_id).get(token)
        if entry is None or entry.invitation.greeter_user_id != greeter_user_id:
            raise NotFoundError()
        if entry.invitation.is_deleted:
            raise AlreadyDeletedError()
        entry.invitation = attrs.evolve(entry.invitation, deleted_on=on, deleted_reason=reason)
        del self._pending(organization_id, greeter_user_id)[token]
        self._store.publish(events.invite_status_changed(organization_id, greeter_user_id, token, "DELETED"))

    async def list(self, organization_id: str, greeter_user_id: str) -> list[Invitation]:
        invitations = [e.invitation for e in self._pending(organization_id, greeter_user_id).values()]
        return sorted(invitations, key=lambda inv: inv.created_on)

    def _locate(
        self, organization_id: str, token: UUID, greeter_user_id: str | None, *, deleted_ok: bool = False
    ) -> _Entry:
        try:
            entry = self._entries(organization_id)[token]
        except (KeyError, NotFoundError):
            raise NotFoundError() from None
        if greeter_user_id is not None and entry.invitation.greeter_user_id != greeter_user_id:
            raise NotFoundError()
        if entry.invitation.is_deleted and not deleted_ok:
            raise AlreadyDeletedError()
        return entry

    async def conduit_talk(
        self,
        organization_id: str,
        token: UUID,
        greeter_user_id: str | None,
        state: str,
        payload: bytes,
    ) -> ConduitListenCtx:
        entry = self._locate(organization_id, token, greeter_user_id)
        listen_ctx = conduit_talk(entry.conduit, greeter_user_id is not None, state, payload)
        self._store.publish(events.invite_conduit_updated(organization_id, token))
        return listen_ctx

    async def conduit_listen(
        self, organization_id: str, token: UUID, greeter_user_id: str | None, ctx: ConduitListenCtx
    ) -> tuple[bytes | None, bool]:
        entry = self._locate(organization_id, token, greeter_user_id, deleted_ok=True)
        if entry.invitation.is_deleted:
            answer = answer_after_deletion(entry.conduit, ctx)
            if answer is None:
                raise AlreadyDeletedError()
            return answer, False
        peer_payload, changed = conduit_listen(entry.conduit, ctx)
        if changed:
            self._store.publish(events.invite_conduit_updated(organization_id, token))
        return peer_payload, changed
