"""PostgreSQL invitations and conduits (`InviteStorage`, behaviour of parsec.storage.memory.invite).

Round trips: `info`, `new`, `delete`, `list` are one statement each. The conduit is driven by
the pure functions of parsec.backend.conduit on the invitation row locked `FOR UPDATE`:
* `conduit_talk`: `BEGIN; SELECT ... FOR UPDATE`, then `UPDATE ...; NOTIFY; COMMIT` (2 round
  trips);
* `conduit_listen`: a plain read first (1 round trip); only when the read shows that this
  side must advance the conduit, the locked path above (3 round trips in that case, once per
  step). Deciding "nothing to do yet" from a committed snapshot is as good as deciding it
  under the lock an instant earlier.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
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
from parsec.backend.storage import AlreadyDeletedError, AlreadyMemberError, NotFoundError
from parsec.storage.postgresql.connection import PgConnection, PreparedStatement
from parsec.storage.postgresql.events import Notify, sql_uuid
from parsec.storage.postgresql.pool import PostgreSQLPool
from parsec.storage.postgresql.user import storable

T = TypeVar("T")

_INVITATION_COLUMNS = """
    i.token, i.type, i.greeter_user_id, u.human_email, u.human_label, i.created_on,
    i.claimer_email, i.deleted_on, i.deleted_reason
"""
_GREETER_JOIN = "JOIN user_ u ON u.organization_id = i.organization_id AND u.user_id = i.greeter_user_id"

# The invited handshake reads this once per claimer connection: prepared.
_INFO = PreparedStatement(
    f"""
SELECT {_INVITATION_COLUMNS}
FROM invitation i {_GREETER_JOIN}
WHERE i.organization_id = %(org)s AND i.token = %(token)s
"""
)

# `invite.status_changed` IDLE (created or reused), DELETED; `invite.conduit_updated`: published
# by the statements that write.
_IDLE = Notify("idle", {"token": sql_uuid("coalesce(p.token, c.token)")})
_DELETED = Notify("deleted")
_CONDUIT_UPDATED = Notify("conduit")

# Idempotent per (greeter, type, claimer e-mail) among pending invitations. Two concurrent
# identical requests may both miss `pending`: the partial unique index makes the loser insert
# nothing, and it runs the statement again to read the winner's row.
_NEW = f"""
WITH member AS (
    SELECT %(type)s = 'USER' AND EXISTS (
        SELECT 1 FROM user_
        WHERE organization_id = %(org)s AND human_email = %(email)s::text
          AND (revoked_on IS NULL OR revoked_on > %(now)s)
    ) AS already
), pending AS (
    SELECT token, created_on FROM invitation
    WHERE organization_id = %(org)s AND greeter_user_id = %(greeter)s AND type = %(type)s
      AND coalesce(claimer_email, '') = coalesce(%(email)s::text, '') AND deleted_on IS NULL
    ORDER BY seq
    LIMIT 1
), created AS (
    INSERT INTO invitation (organization_id, token, type, greeter_user_id, claimer_email, created_on)
    SELECT %(org)s, %(token)s, %(type)s, %(greeter)s, %(email)s, %(now)s
    FROM member
    WHERE NOT member.already AND NOT EXISTS (SELECT 1 FROM pending)
    ON CONFLICT (organization_id, greeter_user_id, type, (md5(coalesce(claimer_email, ''))))
        WHERE deleted_on IS NULL DO NOTHING
    RETURNING token, created_on
)
SELECT m.already, p.token, p.created_on, c.token, c.created_on,
       CASE WHEN coalesce(p.token, c.token) IS NOT NULL THEN {_IDLE.sql} END
FROM member m LEFT JOIN pending p ON true LEFT JOIN created c ON true
"""

_DELETE = f"""
WITH target AS (
    SELECT 1 FROM invitation
    WHERE organization_id = %(org)s AND token = %(token)s AND greeter_user_id = %(greeter)s
), deleted AS (
    UPDATE invitation SET deleted_on = %(on)s, deleted_reason = %(reason)s
    WHERE organization_id = %(org)s AND token = %(token)s AND greeter_user_id = %(greeter)s
      AND deleted_on IS NULL
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM target), EXISTS (SELECT 1 FROM deleted), (SELECT {_DELETED.sql} FROM deleted)
"""

_LIST = f"""
SELECT {_INVITATION_COLUMNS}
FROM invitation i {_GREETER_JOIN}
WHERE i.organization_id = %(org)s AND i.greeter_user_id = %(greeter)s AND i.deleted_on IS NULL
ORDER BY i.created_on, i.seq
"""

_CONDUIT_COLUMNS = "greeter_user_id, deleted_on, conduit_state, conduit_greeter_payload, conduit_claimer_payload"
_CONDUIT_WHERE = "organization_id = %(org)s AND token = %(token)s"
_CONDUIT_READ = f"SELECT {_CONDUIT_COLUMNS} FROM invitation WHERE {_CONDUIT_WHERE}"
_CONDUIT_LOCK = f"BEGIN; SELECT {_CONDUIT_COLUMNS} FROM invitation WHERE {_CONDUIT_WHERE} FOR UPDATE"
_CONDUIT_WRITE = f"""
UPDATE invitation
SET conduit_state = %(state)s, conduit_greeter_payload = %(greeter_payload)s,
    conduit_claimer_payload = %(claimer_payload)s
WHERE {_CONDUIT_WHERE};
"""
_CONDUIT_NOTIFY = f"SELECT {_CONDUIT_UPDATED.sql};\n"

_RACE_RETRIES = 5


_ANY_TOKEN = UUID(int=0)  # placeholder: the statement fills in the invitation's token


def _invitation_from_row(row: tuple[Any, ...]) -> Invitation:
    token, type_, greeter, email, label, created_on, claimer_email, deleted_on, deleted_reason = row
    return Invitation(
        token=token,
        type=type_,
        greeter_user_id=greeter,
        greeter_human_handle=(email, label) if email is not None else None,
        created_on=created_on,
        claimer_email=claimer_email,
        deleted_on=deleted_on,
        deleted_reason=deleted_reason,
    )


def _slots(row: tuple[Any, ...] | None, greeter_user_id: str | None) -> ConduitSlots:
    """The conduit of an invitation row, after memory's `_locate` checks."""
    if row is None:
        raise NotFoundError()
    greeter, deleted_on, state, greeter_payload, claimer_payload = row
    if greeter_user_id is not None and greeter != greeter_user_id:
        raise NotFoundError()
    if deleted_on is not None:
        raise AlreadyDeletedError()
    return ConduitSlots(state=state, greeter_payload=greeter_payload, claimer_payload=claimer_payload)


def _answer_if_deleted(
    row: tuple[Any, ...] | None, greeter_user_id: str | None, ctx: ConduitListenCtx
) -> bytes | None:
    """For a deleted invitation: what its frozen conduit still answers this listener
    (`answer_after_deletion`), else AlreadyDeletedError. None when the row is not a deleted
    invitation of this greeter (`_slots` then decides)."""
    if row is None:
        return None
    greeter, deleted_on, state, greeter_payload, claimer_payload = row
    if deleted_on is None or (greeter_user_id is not None and greeter != greeter_user_id):
        return None
    slots = ConduitSlots(state=state, greeter_payload=greeter_payload, claimer_payload=claimer_payload)
    answer = answer_after_deletion(slots, ctx)
    if answer is None:
        raise AlreadyDeletedError()
    return answer


class PgInviteStorage:
    def __init__(self, pool: PostgreSQLPool) -> None:
        self._pool = pool

    async def info(self, organization_id: str, token: UUID) -> Invitation:
        row = await self._pool.fetchrow(_INFO, {"org": organization_id, "token": token})
        if row is None:
            raise NotFoundError()
        return _invitation_from_row(row)

    async def new(
        self,
        organization_id: str,
        greeter_user_id: str,
        greeter_human_handle: HumanHandle | None,
        type: str,
        claimer_email: str | None,
        created_on: datetime,
    ) -> Invitation:
        storable("claimer_email", claimer_email)
        params = {
            "org": organization_id,
            "greeter": greeter_user_id,
            "type": type,
            "email": claimer_email,
            "now": created_on,
            "token": uuid4(),
        }
        for _ in range(_RACE_RETRIES):
            # A fresh `__id__` per attempt.
            idle = events.invite_status_changed(organization_id, greeter_user_id, _ANY_TOKEN, "IDLE")
            row = await self._pool.fetchrow(_NEW, {**params, **_IDLE.params(idle)})
            assert row is not None
            already_member, pending_token, pending_on, created_token, created_on_db, _ = row
            if already_member:
                raise AlreadyMemberError()
            token, on = (pending_token, pending_on) if pending_token is not None else (created_token, created_on_db)
            if token is not None:
                return Invitation(
                    token=token,
                    type=type,
                    greeter_user_id=greeter_user_id,
                    greeter_human_handle=greeter_human_handle,
                    created_on=on,
                    claimer_email=claimer_email,
                )
        raise RuntimeError("invitation neither created nor found")

    async def delete(
        self, organization_id: str, greeter_user_id: str, token: UUID, on: datetime, reason: str
    ) -> None:
        deleted_event = events.invite_status_changed(organization_id, greeter_user_id, token, "DELETED")
        row = await self._pool.fetchrow(
            _DELETE,
            {
                "org": organization_id,
                "greeter": greeter_user_id,
                "token": token,
                "on": on,
                "reason": reason,
                **_DELETED.params(deleted_event),
            },
        )
        assert row is not None
        exists, deleted, _ = row
        if not exists:
            raise NotFoundError()
        if not deleted:
            raise AlreadyDeletedError()

    async def list(self, organization_id: str, greeter_user_id: str) -> list[Invitation]:
        rows = await self._pool.fetch(_LIST, {"org": organization_id, "greeter": greeter_user_id})
        return [_invitation_from_row(row) for row in rows]

    # ---- conduit ---------------------------------------------------------------------------

    async def _locked(
        self,
        organization_id: str,
        token: UUID,
        greeter_user_id: str | None,
        apply: Callable[[ConduitSlots], T],
        publish: Callable[[T], bool],
    ) -> T:
        """`apply` the conduit function to the row locked FOR UPDATE; write the slots back if
        they changed, publish `invite.conduit_updated` if `publish(result)`, and commit (one
        round trip for the three)."""
        where = {"org": organization_id, "token": token}
        async with self._pool.connection() as conn:
            row = await conn.fetchrow(_CONDUIT_LOCK, where)
            try:
                slots = _slots(row, greeter_user_id)
                before = attrs.evolve(slots)
                result = apply(slots)
            except BaseException:
                await _rollback(conn)
                raise
            sql = ""
            params: dict[str, Any] = dict(where)
            if slots != before:
                sql += _CONDUIT_WRITE
                params.update(
                    state=slots.state, greeter_payload=slots.greeter_payload, claimer_payload=slots.claimer_payload
                )
            if publish(result):
                sql += _CONDUIT_NOTIFY
                params.update(_CONDUIT_UPDATED.params(events.invite_conduit_updated(organization_id, token)))
            await conn.execute(sql + "COMMIT", params)
            return result

    async def conduit_talk(
        self,
        organization_id: str,
        token: UUID,
        greeter_user_id: str | None,
        state: str,
        payload: bytes,
    ) -> ConduitListenCtx:
        is_greeter = greeter_user_id is not None
        return await self._locked(
            organization_id,
            token,
            greeter_user_id,
            lambda slots: conduit_talk(slots, is_greeter, state, payload),
            lambda _: True,
        )

    async def conduit_listen(
        self, organization_id: str, token: UUID, greeter_user_id: str | None, ctx: ConduitListenCtx
    ) -> tuple[bytes | None, bool]:
        row = await self._pool.fetchrow(_CONDUIT_READ, {"org": organization_id, "token": token})
        answer = _answer_if_deleted(row, greeter_user_id, ctx)
        if answer is not None:
            return answer, False
        slots = _slots(row, greeter_user_id)
        snapshot = attrs.evolve(slots)
        result = conduit_listen(snapshot, ctx)
        if snapshot == slots:
            return result  # nothing to write: decided from the committed state
        try:
            return await self._locked(
                organization_id,
                token,
                greeter_user_id,
                lambda locked: conduit_listen(locked, ctx),
                lambda result: result[1],  # the conduit changed
            )
        except AlreadyDeletedError:
            # Deleted between the read and the lock: its frozen conduit may still answer.
            return await self.conduit_listen(organization_id, token, greeter_user_id, ctx)


async def _rollback(conn: PgConnection) -> None:
    if not conn.broken:
        await conn.execute("ROLLBACK")
