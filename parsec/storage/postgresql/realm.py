"""PostgreSQL realms: creation, roles, re-encryption maintenance, member reads.

How every statement applies `parsec.backend.realm_rules` and locks the realm row:
`parsec.storage.postgresql.realm_common`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from parsec.api.ids import user_of
from parsec.backend import bus as events
from parsec.backend import realm_rules as rules
from parsec.backend.models import RealmGrant, RealmStats, RealmStatus
from parsec.backend.realm_rules import RoleUpdateFacts
from parsec.backend.storage import (
    DEFAULT_MESSAGE_BOUNDS,
    AlreadyExistsError,
    MessageBounds,
    MessageBoxFullError,
)
from parsec.storage.postgresql.connection import PreparedStatement
from parsec.storage.postgresql.events import Notify, sql_bigint, sql_text
from parsec.storage.postgresql.realm_common import (
    LOCK_REALM,
    PgRealmScopedStorage,
    RuleMismatchError,
    int4,
    realm_state,
)

__all__ = ["PgRealmStorage"]

# The events of these writes, published by the statements themselves (see
# parsec.storage.postgresql.events): each is evaluated once per row of the CTE that wrote.
_ROLES_UPDATED = Notify("roles")
_MESSAGE_RECEIVED = Notify("msg", {"index": sql_bigint("message_count")})
_MAINTENANCE = Notify("maintenance")
# One per recipient (user ids are at most 32 characters: 128 UTF-8 bytes).
_MESSAGES_RECEIVED = Notify(
    "msgs", {"recipient": sql_text("user_id", 128), "index": sql_bigint("message_count")}
)

_REALM_CREATE = PreparedStatement(f"""
WITH new_realm AS (
    INSERT INTO realm (organization_id, realm_id, created_on)
    VALUES (%(org)s::text, %(realm)s::uuid, %(ts)s::timestamptz)
    ON CONFLICT DO NOTHING
    RETURNING organization_id, realm_id, created_on
), first_revision AS (
    INSERT INTO vlob_encryption_revision (organization_id, realm_id, encryption_revision, started_on, started_by)
    SELECT organization_id, realm_id, 1, created_on, %(author)s::text FROM new_realm
), first_grant AS (
    INSERT INTO realm_role (organization_id, realm_id, user_id, role, certificate, certified_by, certified_on)
    SELECT organization_id, realm_id, %(user)s::text, %(role)s::text, %(certificate)s::bytea, %(author)s::text,
           created_on
    FROM new_realm
), first_member AS (
    INSERT INTO realm_user (organization_id, realm_id, user_id, role, role_certified_on, last_role_change)
    SELECT organization_id, realm_id, %(user)s::text, %(role)s::text, created_on,
           CASE WHEN %(self_granted)s::boolean THEN created_on END
    FROM new_realm
)
SELECT EXISTS (SELECT 1 FROM new_realm), (SELECT {_ROLES_UPDATED.sql} FROM new_realm)
""")

# realm_status, realm_stats, realm_get_role_certificates: the member check's facts, then the
# answer (computed for members only).
_REALM_MEMBER = PreparedStatement("""
SELECT r.encryption_revision, r.maintenance_type, ru.role,
       r.maintenance_started_on, r.maintenance_started_by, r.vlobs_size,
       CASE WHEN %(want_blocks)s::boolean AND ru.role IS NOT NULL THEN (
           SELECT coalesce(sum(b.size), 0) FROM block AS b
           WHERE b.organization_id = r.organization_id AND b.realm_id = r.realm_id
       ) END,
       CASE WHEN %(want_certificates)s::boolean AND ru.role IS NOT NULL THEN (
           SELECT array_agg(rr.certificate ORDER BY rr.certified_on, rr.seq) FROM realm_role AS rr
           WHERE rr.organization_id = r.organization_id AND rr.realm_id = r.realm_id
       ) END
FROM (VALUES (1)) AS one
LEFT JOIN realm AS r ON r.organization_id = %(org)s::text AND r.realm_id = %(realm)s::uuid
LEFT JOIN realm_user AS ru
    ON ru.organization_id = r.organization_id AND ru.realm_id = r.realm_id AND ru.user_id = %(user)s::text
""")

_UPDATE_ROLES = LOCK_REALM + f"""
WITH facts AS MATERIALIZED (
    SELECT target.profile AS target_profile,
           target.revoked_on IS NOT NULL AS target_revoked,
           r.encryption_revision, r.maintenance_type,
           author_ru.role AS author_role,
           target_ru.role AS target_role,
           target_ru.role_certified_on AS target_granted_on,
           target_ru.last_vlob_update AS target_last_vlob_update,
           target_ru.last_role_change AS target_last_role_change,
           -- The message fits in the target's unread bounds (MessageBounds).
           NOT %(has_message)s OR (
               target.message_count - target.message_read < %(pending_count)s
               AND %(message_size)s + (
                   SELECT coalesce(sum(octet_length(m.body)), 0) FROM message AS m
                   WHERE m.organization_id = target.organization_id AND m.recipient = target.user_id
                     AND m.message_index > target.message_read
               ) <= %(pending_size)s
           ) AS inbox_ok
    FROM (VALUES (1)) AS one
    LEFT JOIN user_ AS target ON target.organization_id = %(org)s AND target.user_id = %(user)s
    LEFT JOIN realm AS r ON r.organization_id = %(org)s AND r.realm_id = %(realm)s
    LEFT JOIN realm_user AS author_ru
        ON author_ru.organization_id = r.organization_id AND author_ru.realm_id = r.realm_id
       AND author_ru.user_id = %(author_user)s
    LEFT JOIN realm_user AS target_ru
        ON target_ru.organization_id = r.organization_id AND target_ru.realm_id = r.realm_id
       AND target_ru.user_id = %(user)s
), allowed AS MATERIALIZED (
    -- realm_rules.check_update_roles, rule by rule.
    SELECT 1 FROM facts
    WHERE target_profile IS NOT NULL
      AND NOT (target_profile = 'OUTSIDER' AND %(new_is_management)s)
      AND NOT target_revoked
      AND encryption_revision IS NOT NULL
      AND maintenance_type IS NULL
      AND CASE WHEN %(new_is_management)s OR coalesce(target_role = ANY(%(management_roles)s), false)
               THEN coalesce(author_role = %(owner)s, false)
               ELSE coalesce(author_role = ANY(%(management_roles)s), false) END
      AND target_role IS DISTINCT FROM %(role)s
      AND (target_granted_on IS NULL OR target_granted_on < %(ts)s)
      AND (NOT %(new_is_no_write)s OR target_last_vlob_update IS NULL OR target_last_vlob_update < %(ts)s)
      AND (NOT %(new_is_no_management)s OR target_last_role_change IS NULL
           OR target_last_role_change < %(ts)s)
      AND inbox_ok
), new_grant AS (
    INSERT INTO realm_role (organization_id, realm_id, user_id, role, certificate, certified_by, certified_on)
    SELECT %(org)s, %(realm)s, %(user)s, %(role)s, %(certificate)s, %(author)s, %(ts)s FROM allowed
), target_member AS (
    INSERT INTO realm_user AS ru (organization_id, realm_id, user_id, role, role_certified_on, last_role_change)
    SELECT %(org)s, %(realm)s, %(user)s, %(role)s, %(ts)s,
           CASE WHEN %(self_granted)s THEN %(ts)s::timestamptz END
    FROM allowed
    ON CONFLICT (organization_id, realm_id, user_id) DO UPDATE
    SET role = excluded.role,
        role_certified_on = excluded.role_certified_on,
        last_role_change = greatest(ru.last_role_change, excluded.last_role_change)
), author_member AS (
    UPDATE realm_user SET last_role_change = greatest(last_role_change, %(ts)s)
    WHERE organization_id = %(org)s AND realm_id = %(realm)s AND user_id = %(author_user)s
      AND NOT %(self_granted)s AND EXISTS (SELECT 1 FROM allowed)
), inbox AS (
    UPDATE user_ SET message_count = message_count + 1
    WHERE organization_id = %(org)s AND user_id = %(user)s
      AND %(has_message)s AND EXISTS (SELECT 1 FROM allowed)
    RETURNING message_count
), new_message AS (
    INSERT INTO message (organization_id, recipient, message_index, sender, sent_on, body)
    SELECT %(org)s, %(user)s, message_count, %(author)s, %(ts)s, %(message)s FROM inbox
)
SELECT facts.*, EXISTS (SELECT 1 FROM allowed), (SELECT message_count FROM inbox),
       (SELECT {_ROLES_UPDATED.sql} FROM allowed), (SELECT {_MESSAGE_RECEIVED.sql} FROM inbox)
FROM facts
"""

# The recipients' user_ rows are locked in user-id order (ORDER BY runs before the row locks):
# two re-encryptions of different realms sharing participants cannot deadlock.
_START_REENCRYPTION = LOCK_REALM + f"""
WITH facts AS MATERIALIZED (
    SELECT r.encryption_revision, r.maintenance_type, ru.role AS author_role,
           CASE WHEN r.realm_id IS NOT NULL THEN (
               SELECT coalesce(array_agg(p.user_id), '{{}}') FROM realm_user AS p
               JOIN user_ AS u ON u.organization_id = p.organization_id AND u.user_id = p.user_id
               WHERE p.organization_id = r.organization_id AND p.realm_id = r.realm_id
                 AND p.role IS NOT NULL AND (u.revoked_on IS NULL OR u.revoked_on > %(now)s)
           ) END AS participants,
           -- Each message fits in its recipient's unread bounds (MessageBounds).
           (
               SELECT coalesce(bool_and(
                   u.message_count - u.message_read < %(pending_count)s
                   AND octet_length(m.body) + (
                       SELECT coalesce(sum(octet_length(old.body)), 0) FROM message AS old
                       WHERE old.organization_id = u.organization_id AND old.recipient = u.user_id
                         AND old.message_index > u.message_read
                   ) <= %(pending_size)s
               ), true)
               FROM unnest(%(recipients)s::text[], %(bodies)s::bytea[]) AS m (user_id, body)
               JOIN user_ AS u ON u.organization_id = %(org)s AND u.user_id = m.user_id
           ) AS inboxes_ok
    FROM (VALUES (1)) AS one
    LEFT JOIN realm AS r ON r.organization_id = %(org)s AND r.realm_id = %(realm)s
    LEFT JOIN realm_user AS ru
        ON ru.organization_id = r.organization_id AND ru.realm_id = r.realm_id
       AND ru.user_id = %(author_user)s
), allowed AS MATERIALIZED (
    -- realm_rules.check_start_reencryption (set equality as mutual inclusion), then the
    -- recipients' unread bounds.
    SELECT 1 FROM facts
    WHERE encryption_revision IS NOT NULL
      AND maintenance_type IS NULL
      AND encryption_revision + 1 = %(revision)s
      AND coalesce(author_role = %(owner)s, false)
      AND participants <@ %(recipients)s::text[] AND participants @> %(recipients)s::text[]
      AND inboxes_ok
), maintenance AS (
    UPDATE realm
    SET encryption_revision = %(revision)s, maintenance_type = %(reencryption)s,
        maintenance_started_by = %(author)s, maintenance_started_on = %(ts)s
    WHERE organization_id = %(org)s AND realm_id = %(realm)s AND EXISTS (SELECT 1 FROM allowed)
), new_revision AS (
    INSERT INTO vlob_encryption_revision (organization_id, realm_id, encryption_revision, started_on, started_by)
    SELECT %(org)s, %(realm)s, %(revision)s, %(ts)s, %(author)s FROM allowed
), recipients AS MATERIALIZED (
    SELECT u.user_id FROM user_ AS u
    WHERE u.organization_id = %(org)s AND u.user_id = ANY(%(recipients)s::text[])
      AND EXISTS (SELECT 1 FROM allowed)
    ORDER BY u.user_id
    FOR NO KEY UPDATE
), inbox AS (
    UPDATE user_ AS u SET message_count = u.message_count + 1
    FROM recipients
    WHERE u.organization_id = %(org)s AND u.user_id = recipients.user_id
    RETURNING u.user_id, u.message_count
), new_messages AS (
    INSERT INTO message (organization_id, recipient, message_index, sender, sent_on, body)
    SELECT %(org)s, inbox.user_id, inbox.message_count, %(author)s, %(ts)s, m.body
    FROM inbox
    JOIN unnest(%(recipients)s::text[], %(bodies)s::bytea[]) AS m (user_id, body) ON m.user_id = inbox.user_id
), messages_received AS MATERIALIZED (
    -- After realm.maintenance_started (evaluated first, in the final SELECT), in the order of
    -- the request's recipients.
    SELECT {_MESSAGES_RECEIVED.sql}
    FROM (SELECT inbox.user_id, inbox.message_count FROM inbox
          JOIN unnest(%(recipients)s::text[]) WITH ORDINALITY AS r (user_id, position)
              ON r.user_id = inbox.user_id
          ORDER BY r.position) AS ordered
)
SELECT facts.*, EXISTS (SELECT 1 FROM allowed),
       (SELECT array_agg(user_id) FROM inbox), (SELECT array_agg(message_count) FROM inbox),
       (SELECT {_MAINTENANCE.sql} FROM allowed), (SELECT count(*) FROM messages_received)
FROM facts
"""

_FINISH_REENCRYPTION = LOCK_REALM + f"""
WITH facts AS MATERIALIZED (
    SELECT r.encryption_revision, r.maintenance_type, ru.role,
           -- Every version of revision N-1 has its copy at N (true without any vlob).
           CASE WHEN r.maintenance_type IS NOT NULL THEN NOT EXISTS (
               SELECT 1 FROM vlob_atom AS old
               WHERE old.organization_id = r.organization_id AND old.realm_id = r.realm_id
                 AND old.encryption_revision = r.encryption_revision - 1
                 AND NOT EXISTS (
                     SELECT 1 FROM vlob_atom AS new
                     WHERE new.organization_id = old.organization_id AND new.vlob_id = old.vlob_id
                       AND new.encryption_revision = r.encryption_revision AND new.version = old.version
                 )
           ) ELSE true END AS over
    FROM (VALUES (1)) AS one
    LEFT JOIN realm AS r ON r.organization_id = %(org)s AND r.realm_id = %(realm)s
    LEFT JOIN realm_user AS ru
        ON ru.organization_id = r.organization_id AND ru.realm_id = r.realm_id
       AND ru.user_id = %(author_user)s
), allowed AS MATERIALIZED (
    -- realm_rules.check_finish_reencryption.
    SELECT 1 FROM facts
    WHERE encryption_revision IS NOT NULL
      AND coalesce(role = %(owner)s, false)
      AND maintenance_type IS NOT NULL
      AND encryption_revision = %(revision)s
      AND over
), finished AS (
    UPDATE realm
    SET maintenance_type = NULL, maintenance_started_by = NULL, maintenance_started_on = NULL
    WHERE organization_id = %(org)s AND realm_id = %(realm)s AND EXISTS (SELECT 1 FROM allowed)
), revision_finished AS (
    UPDATE vlob_encryption_revision SET finished_on = now()
    WHERE organization_id = %(org)s AND realm_id = %(realm)s AND encryption_revision = %(revision)s
      AND EXISTS (SELECT 1 FROM allowed)
)
SELECT facts.*, EXISTS (SELECT 1 FROM allowed), (SELECT {_MAINTENANCE.sql} FROM allowed) FROM facts
"""

_REALMS_FOR_USER = PreparedStatement("""
SELECT realm_id, role FROM realm_user
WHERE organization_id = %(org)s::text AND user_id = %(user)s::text AND role IS NOT NULL
""")


def _roles_updated(organization_id: str, grant: RealmGrant) -> events.BackendEvent:
    return events.realm_roles_updated(organization_id, grant.granted_by, grant.realm_id, grant.user_id, grant.role)


class PgRealmStorage(PgRealmScopedStorage):
    async def create(self, organization_id: str, grant: RealmGrant) -> None:
        created, _ = await self._row(
            _REALM_CREATE,
            {
                **_ROLES_UPDATED.params(_roles_updated(organization_id, grant)),
                "org": organization_id,
                "realm": grant.realm_id,
                "user": grant.user_id,
                "role": grant.role,
                "certificate": grant.certificate,
                "author": grant.granted_by,
                "ts": grant.granted_on,
                # The creator's certificate is self-signed (checked by the component); were it
                # not, its author would have no realm_user row to record the grant on.
                "self_granted": user_of(grant.granted_by) == grant.user_id,
            },
        )
        if not created:
            raise AlreadyExistsError()

    async def _member(
        self, organization_id: str, user_id: str, realm_id: UUID, *, blocks: bool = False, certificates: bool = False
    ) -> tuple[Any, ...]:
        row = await self._row(
            _REALM_MEMBER,
            {
                "org": organization_id,
                "realm": realm_id,
                "user": user_id,
                "want_blocks": blocks,
                "want_certificates": certificates,
            },
        )
        rules.check_realm_member(realm_state(row[0], row[1]), row[2])
        return row

    async def get_status(self, organization_id: str, user_id: str, realm_id: UUID) -> RealmStatus:
        revision, maintenance_type, _, started_on, started_by, *_ = await self._member(
            organization_id, user_id, realm_id
        )
        return RealmStatus(
            encryption_revision=revision,
            maintenance_type=maintenance_type,
            maintenance_started_on=started_on,
            maintenance_started_by=started_by,
        )

    async def get_stats(self, organization_id: str, user_id: str, realm_id: UUID) -> RealmStats:
        row = await self._member(organization_id, user_id, realm_id, blocks=True)
        return RealmStats(blocks_size=int(row[6]), vlobs_size=int(row[5]))

    async def get_role_certificates(self, organization_id: str, user_id: str, realm_id: UUID) -> list[bytes]:
        row = await self._member(organization_id, user_id, realm_id, certificates=True)
        return list(row[7] or [])

    async def update_roles(
        self,
        organization_id: str,
        grant: RealmGrant,
        recipient_message: bytes | None,
        bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS,
    ) -> int | None:
        author_user = user_of(grant.granted_by)
        # Production stores no message for nil nor for an empty one.
        message = recipient_message or None
        row = await self._row(
            _UPDATE_ROLES,
            {
                **_ROLES_UPDATED.params(_roles_updated(organization_id, grant)),
                **_MESSAGE_RECEIVED.params(
                    events.message_received(organization_id, grant.granted_by, grant.user_id, 0)
                ),
                "org": organization_id,
                "realm": grant.realm_id,
                "user": grant.user_id,
                "role": grant.role,
                "certificate": grant.certificate,
                "author": grant.granted_by,
                "author_user": author_user,
                "ts": grant.granted_on,
                "self_granted": author_user == grant.user_id,
                "new_is_management": grant.role in rules.MANAGEMENT_ROLES,
                "new_is_no_write": grant.role in rules.NO_WRITE_ROLES,
                "new_is_no_management": grant.role in rules.NO_MANAGEMENT_ROLES,
                "has_message": message is not None,
                "message": message,
                "message_size": len(message or b""),
                "pending_count": bounds.count,
                "pending_size": bounds.size,
            },
        )
        (
            target_profile,
            target_revoked,
            revision,
            maintenance_type,
            author_role,
            target_role,
            target_granted_on,
            target_last_vlob_update,
            target_last_role_change,
            inbox_ok,
            written,
            message_index,
            _,
            _,
        ) = row
        if written:
            return int(message_index) if message_index is not None else None
        facts = RoleUpdateFacts(
            target_profile=target_profile,
            target_revoked=bool(target_revoked),
            realm=realm_state(revision, maintenance_type),
            author_role=author_role,
            target_role=target_role,
            target_last_role_granted_on=target_granted_on,
            target_last_vlob_update=target_last_vlob_update,
            target_last_role_change=target_last_role_change,
        )
        rules.check_update_roles(facts, grant.role, grant.granted_on)
        if not inbox_ok:
            raise MessageBoxFullError()
        raise RuleMismatchError("realm_update_roles")

    async def start_reencryption_maintenance(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        encryption_revision: int,
        per_participant_message: dict[str, bytes],
        timestamp: datetime,
        now: datetime,
        bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS,
    ) -> list[tuple[str, int]]:
        recipients = list(per_participant_message)
        row = await self._row(
            _START_REENCRYPTION,
            {
                **_MAINTENANCE.params(
                    events.realm_maintenance(
                        events.REALM_MAINTENANCE_STARTED, organization_id, author, realm_id, encryption_revision
                    )
                ),
                **_MESSAGES_RECEIVED.params(events.message_received(organization_id, author, "", 0)),
                "org": organization_id,
                "realm": realm_id,
                "author": author,
                "author_user": user_of(author),
                "revision": int4(encryption_revision),
                "ts": timestamp,
                "now": now,
                "recipients": recipients,
                "bodies": [per_participant_message[r] for r in recipients],
                "pending_count": bounds.count,
                "pending_size": bounds.size,
            },
        )
        (
            revision,
            maintenance_type,
            author_role,
            participants,
            inboxes_ok,
            written,
            inbox_users,
            inbox_indexes,
            _,
            _,
        ) = row
        if written:
            indexes = dict(zip(inbox_users or [], inbox_indexes or [], strict=True))
            return [(recipient, int(indexes[recipient])) for recipient in recipients]
        rules.check_start_reencryption(
            realm_state(revision, maintenance_type), author_role, encryption_revision, participants or [], recipients
        )
        if not inboxes_ok:
            raise MessageBoxFullError()
        raise RuleMismatchError("realm_start_reencryption_maintenance")

    async def finish_reencryption_maintenance(
        self, organization_id: str, author: str, realm_id: UUID, encryption_revision: int
    ) -> None:
        revision, maintenance_type, role, over, written, _ = await self._row(
            _FINISH_REENCRYPTION,
            {
                **_MAINTENANCE.params(
                    events.realm_maintenance(
                        events.REALM_MAINTENANCE_FINISHED, organization_id, author, realm_id, encryption_revision
                    )
                ),
                "org": organization_id,
                "realm": realm_id,
                "author_user": user_of(author),
                "revision": int4(encryption_revision),
            },
        )
        if written:
            return
        rules.check_finish_reencryption(realm_state(revision, maintenance_type), role, encryption_revision, bool(over))
        raise RuleMismatchError("realm_finish_reencryption_maintenance")

    async def get_realms_for_user(self, organization_id: str, user_id: str) -> dict[UUID, str]:
        rows = await self._pool.fetch(_REALMS_FOR_USER, {"org": organization_id, "user": user_id})
        return {realm_id: role for realm_id, role in rows}

