"""PostgreSQL realms, vlobs, block metadata and messages (tables of migration 0001).

Every method is ONE round trip (plus, for PREPAREd statements, one PREPARE per connection
the first time). The rules are those of `parsec.backend.realm_rules`, applied the same way by
every method:

* one statement gathers the facts the rules need (a `facts` CTE), decides in SQL whether the
  operation may proceed (an `allowed` CTE whose conditions are the rules, in SQL), performs
  the writes only from `allowed` (data-modifying CTEs chained through RETURNING, so a refused
  request writes nothing), and returns the facts together with what it wrote;
* when nothing was written, Python calls the `check_*` helper on the returned facts, which
  raises the exception of the first failing rule; if the helper finds nothing to complain
  about, the SQL and the rules disagree (a bug): `RuleMismatchError`.

Concurrency: the realm row is the write lock of everything inside the realm. Every write of
realm state (roles, realm_user, vlobs, checkpoints, maintenance, re-encrypted copies) locks it
first (`FOR NO KEY UPDATE`, which does not conflict with foreign-key checks), so the writes of
a realm are serialized and the facts a write decides on must be read as they are once the lock
is granted. Two ways, both one round trip:

* hot writes (vlob_create, vlob_update) are one PREPAREd statement whose first CTEs lock, in
  this order, the realm row, the author's realm_user row and the vlob row. In READ COMMITTED
  a row lock returns the newest committed version of the row, so these facts are current even
  when the statement waited for the lock. Everything else such a statement reads may be as of
  before the wait, which is harmless: a row created meanwhile (the author's first role, the
  vlob itself) is seen as missing, i.e. the request is ordered before that creation, and the
  vlob id's uniqueness is left to the primary key (`ON CONFLICT DO NOTHING`).
* the other writes (role updates, re-encryption start/finish/save) decide on sets of rows
  (participants, counts, a target's first role). They send two statements in one simple-query
  message, which PostgreSQL runs as one implicit transaction: `SELECT ... FROM realm ...
  FOR NO KEY UPDATE`, then the checking statement, whose snapshot is taken once the lock is
  granted and so holds every write of the previous holders (not PREPAREd: a prepared
  statement is a single statement; these requests are rare).

Hence two updates of a vlob with the same version: the second sees the first's version and
fails with BadVersionError; checkpoints are `checkpoint + 1` under the lock, gap-free, in
commit order; concurrent role updates of a realm see each other. What the realm lock does not
cover is guarded by keys and row locks: vlob and block ids are unique per organization (a lost
race is an AlreadyExistsError), message indexes come from `UPDATE user_ SET message_count =
message_count + 1` (row lock, re-evaluated on the newest row). Lock order, hence no deadlock
among these requests: realm, then realm_user / vlob rows, then user_ rows in user-id order.
Realm creation (the realm's primary key) and block metadata (a block id's primary key; realm
sizes are sums over the blocks) take no realm lock.

Reads (status, stats, certificates, vlob_read, poll, list, batches, block checks, messages) are
one PREPAREd statement without locks: its snapshot is consistent because every write is atomic.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from parsec.api.ids import user_of
from parsec.backend import realm_rules as rules
from parsec.backend.models import (
    Message,
    RealmGrant,
    RealmStats,
    RealmStatus,
    ReencryptionBatchEntry,
    VlobChanges,
    VlobVersion,
    VlobWrite,
)
from parsec.backend.realm_rules import RealmState, RoleUpdateFacts
from parsec.backend.storage import (
    AlreadyExistsError,
    BadVersionError,
    RealmNotFoundError,
)
from parsec.storage.postgresql.pool import PostgreSQLPool, PreparedStatement, Query

__all__ = [
    "PgBlockStorage",
    "PgMessageStorage",
    "PgRealmStorage",
    "PgVlobStorage",
    "RuleMismatchError",
]

_INT4_MAX = 2**31 - 1


def _int4(value: int) -> int:
    """A request integer (revision, version) for the SQL side. A value beyond the integer
    columns cannot match any row, yet PostgreSQL refuses it as soon as it meets such a column
    (even where no row is written): it becomes 0, which matches nothing either (revisions and
    versions start at 1). The rules are always applied to the real value, in Python."""
    return value if -_INT4_MAX <= value <= _INT4_MAX else 0


def _clamp(value: int, low: int, high: int) -> int:
    """A bound (checkpoint, offset) within the column's range: same rows selected."""
    return max(low, min(value, high))


class RuleMismatchError(RuntimeError):
    """The SQL refused an operation that `realm_rules` accepts on the same facts (a bug)."""

    def __init__(self, operation: str) -> None:
        super().__init__(f"{operation}: the SQL conditions and realm_rules disagree on the facts")


# Values the SQL conditions take from `realm_rules` rather than spelling them out.
_RULE_PARAMS: dict[str, Any] = {
    "owner": rules.OWNER,
    "write_roles": sorted(rules.WRITE_ROLES),
    "management_roles": sorted(rules.MANAGEMENT_ROLES),
    "reencryption": rules.REENCRYPTION,
}

# First statement of the "lock, then check with a fresh snapshot" round trips: the realm's
# write lock (nothing is locked when the realm does not exist: the next statement reports it).
_LOCK_REALM = """
SELECT 1 FROM realm WHERE organization_id = %(org)s AND realm_id = %(realm)s FOR NO KEY UPDATE;
"""


def _state(encryption_revision: int | None, maintenance_type: str | None) -> RealmState | None:
    """The realm's state from nullable columns (NULL revision = no such realm)."""
    if encryption_revision is None:
        return None
    return RealmState(encryption_revision, maintenance_type)


class _PgBase:
    def __init__(self, pool: PostgreSQLPool) -> None:
        self._pool = pool

    async def _row(self, sql: Query, params: dict[str, Any]) -> tuple[Any, ...]:
        """The single row every statement of this module returns (one round trip)."""
        row = await self._pool.fetchrow(sql, {**_RULE_PARAMS, **params})
        assert row is not None, "the statement must return its facts row"
        return row

    async def _rows(self, sql: Query, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows = await self._pool.fetch(sql, {**_RULE_PARAMS, **params})
        assert rows, "the statement must return at least its facts row"
        return rows


# ---- realms ------------------------------------------------------------------------------------

_REALM_CREATE = PreparedStatement("""
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
SELECT EXISTS (SELECT 1 FROM new_realm)
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

_UPDATE_ROLES = _LOCK_REALM + """
WITH facts AS MATERIALIZED (
    SELECT target.profile AS target_profile,
           target.revoked_on IS NOT NULL AS target_revoked,
           r.encryption_revision, r.maintenance_type,
           author_ru.role AS author_role,
           target_ru.role AS target_role,
           target_ru.role_certified_on AS target_granted_on,
           target_ru.last_vlob_update AS target_last_vlob_update,
           target_ru.last_role_change AS target_last_role_change
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
SELECT facts.*, EXISTS (SELECT 1 FROM allowed), (SELECT message_count FROM inbox)
FROM facts
"""

# The recipients' user_ rows are locked in user-id order (ORDER BY runs before the row locks):
# two re-encryptions of different realms sharing participants cannot deadlock.
_START_REENCRYPTION = _LOCK_REALM + """
WITH facts AS MATERIALIZED (
    SELECT r.encryption_revision, r.maintenance_type, ru.role AS author_role,
           CASE WHEN r.realm_id IS NOT NULL THEN (
               SELECT coalesce(array_agg(p.user_id), '{}') FROM realm_user AS p
               JOIN user_ AS u ON u.organization_id = p.organization_id AND u.user_id = p.user_id
               WHERE p.organization_id = r.organization_id AND p.realm_id = r.realm_id
                 AND p.role IS NOT NULL AND (u.revoked_on IS NULL OR u.revoked_on > %(now)s)
           ) END AS participants
    FROM (VALUES (1)) AS one
    LEFT JOIN realm AS r ON r.organization_id = %(org)s AND r.realm_id = %(realm)s
    LEFT JOIN realm_user AS ru
        ON ru.organization_id = r.organization_id AND ru.realm_id = r.realm_id
       AND ru.user_id = %(author_user)s
), allowed AS MATERIALIZED (
    -- realm_rules.check_start_reencryption (set equality as mutual inclusion).
    SELECT 1 FROM facts
    WHERE encryption_revision IS NOT NULL
      AND maintenance_type IS NULL
      AND encryption_revision + 1 = %(revision)s
      AND coalesce(author_role = %(owner)s, false)
      AND participants <@ %(recipients)s::text[] AND participants @> %(recipients)s::text[]
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
)
SELECT facts.*, EXISTS (SELECT 1 FROM allowed),
       (SELECT array_agg(user_id) FROM inbox), (SELECT array_agg(message_count) FROM inbox)
FROM facts
"""

_FINISH_REENCRYPTION = _LOCK_REALM + """
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
SELECT facts.*, EXISTS (SELECT 1 FROM allowed) FROM facts
"""

_REALMS_FOR_USER = PreparedStatement("""
SELECT realm_id, role FROM realm_user
WHERE organization_id = %(org)s::text AND user_id = %(user)s::text AND role IS NOT NULL
""")


class PgRealmStorage(_PgBase):
    async def create(self, organization_id: str, grant: RealmGrant) -> None:
        created, = await self._row(
            _REALM_CREATE,
            {
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
        rules.check_realm_member(_state(row[0], row[1]), row[2])
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
        self, organization_id: str, grant: RealmGrant, recipient_message: bytes | None
    ) -> int | None:
        author_user = user_of(grant.granted_by)
        # Production stores no message for nil nor for an empty one.
        message = recipient_message or None
        row = await self._row(
            _UPDATE_ROLES,
            {
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
            written,
            message_index,
        ) = row
        if written:
            return int(message_index) if message_index is not None else None
        facts = RoleUpdateFacts(
            target_profile=target_profile,
            target_revoked=bool(target_revoked),
            realm=_state(revision, maintenance_type),
            author_role=author_role,
            target_role=target_role,
            target_last_role_granted_on=target_granted_on,
            target_last_vlob_update=target_last_vlob_update,
            target_last_role_change=target_last_role_change,
        )
        rules.check_update_roles(facts, grant.role, grant.granted_on)
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
    ) -> list[tuple[str, int]]:
        recipients = list(per_participant_message)
        row = await self._row(
            _START_REENCRYPTION,
            {
                "org": organization_id,
                "realm": realm_id,
                "author": author,
                "author_user": user_of(author),
                "revision": _int4(encryption_revision),
                "ts": timestamp,
                "now": now,
                "recipients": recipients,
                "bodies": [per_participant_message[r] for r in recipients],
            },
        )
        revision, maintenance_type, author_role, participants, written, inbox_users, inbox_indexes = row
        if written:
            indexes = dict(zip(inbox_users or [], inbox_indexes or [], strict=True))
            return [(recipient, int(indexes[recipient])) for recipient in recipients]
        rules.check_start_reencryption(
            _state(revision, maintenance_type), author_role, encryption_revision, participants or [], recipients
        )
        raise RuleMismatchError("realm_start_reencryption_maintenance")

    async def finish_reencryption_maintenance(
        self, organization_id: str, author: str, realm_id: UUID, encryption_revision: int
    ) -> None:
        revision, maintenance_type, role, over, written = await self._row(
            _FINISH_REENCRYPTION,
            {
                "org": organization_id,
                "realm": realm_id,
                "author_user": user_of(author),
                "revision": _int4(encryption_revision),
            },
        )
        if written:
            return
        rules.check_finish_reencryption(_state(revision, maintenance_type), role, encryption_revision, bool(over))
        raise RuleMismatchError("realm_finish_reencryption_maintenance")

    async def get_realms_for_user(self, organization_id: str, user_id: str) -> dict[UUID, str]:
        rows = await self._pool.fetch(_REALMS_FOR_USER, {"org": organization_id, "user": user_id})
        return {realm_id: role for realm_id, role in rows}


# ---- vlobs -------------------------------------------------------------------------------------

# The write lock of vlob writes, as the first CTEs of their statement: the realm row, then
# the rows gated on it (a one-time EXISTS / scalar subquery on `realm_row` is evaluated before
# their scan starts), each returned in its newest committed version.
_VLOB_CREATE = PreparedStatement("""
WITH realm_row AS MATERIALIZED (
    SELECT encryption_revision, maintenance_type FROM realm
    WHERE organization_id = %(org)s::text AND realm_id = %(realm)s::uuid
    FOR NO KEY UPDATE
), author_row AS MATERIALIZED (
    SELECT role, role_certified_on FROM realm_user
    WHERE organization_id = %(org)s::text AND realm_id = %(realm)s::uuid AND user_id = %(user)s::text
      AND EXISTS (SELECT 1 FROM realm_row)
    FOR NO KEY UPDATE
), facts AS MATERIALIZED (
    SELECT r.encryption_revision, r.maintenance_type, a.role, a.role_certified_on,
           EXISTS (
               SELECT 1 FROM vlob WHERE organization_id = %(org)s::text AND vlob_id = %(vlob)s::uuid
           ) AS vlob_used
    FROM (VALUES (1)) AS one
    LEFT JOIN realm_row AS r ON true
    LEFT JOIN author_row AS a ON true
), allowed AS MATERIALIZED (
    -- realm_rules.check_vlob_create.
    SELECT encryption_revision FROM facts
    WHERE encryption_revision IS NOT NULL
      AND maintenance_type IS NULL
      AND encryption_revision = %(revision)s::integer
      AND coalesce(role = ANY(%(write_roles)s::text[]), false)
      AND (role_certified_on IS NULL OR role_certified_on < %(ts)s::timestamptz)
      AND NOT vlob_used
), new_vlob AS (
    -- A concurrent creation of the same id in another realm is caught by the primary key.
    INSERT INTO vlob (organization_id, vlob_id, realm_id, latest_version, latest_timestamp, created_on)
    SELECT %(org)s::text, %(vlob)s::uuid, %(realm)s::uuid, 1, %(ts)s::timestamptz, %(ts)s::timestamptz
    FROM allowed
    ON CONFLICT DO NOTHING
    RETURNING realm_id
), new_atom AS (
    INSERT INTO vlob_atom (organization_id, vlob_id, encryption_revision, version, realm_id, blob, author,
                           created_on)
    SELECT %(org)s::text, %(vlob)s::uuid, allowed.encryption_revision, 1, new_vlob.realm_id, %(blob)s::bytea,
           %(author)s::text, %(ts)s::timestamptz
    FROM new_vlob, allowed
), bump AS (
    UPDATE realm SET checkpoint = realm.checkpoint + 1, vlobs_size = realm.vlobs_size + %(size)s::integer
    FROM new_vlob
    WHERE realm.organization_id = %(org)s::text AND realm.realm_id = new_vlob.realm_id
    RETURNING realm.checkpoint
), change AS (
    INSERT INTO realm_vlob_update (organization_id, realm_id, checkpoint, vlob_id, version)
    SELECT %(org)s::text, %(realm)s::uuid, checkpoint, %(vlob)s::uuid, 1 FROM bump
), writer AS (
    UPDATE realm_user SET last_vlob_update = greatest(last_vlob_update, %(ts)s::timestamptz)
    WHERE organization_id = %(org)s::text AND realm_id = %(realm)s::uuid AND user_id = %(user)s::text
      AND EXISTS (SELECT 1 FROM new_vlob)
)
SELECT facts.*, EXISTS (SELECT 1 FROM allowed), (SELECT checkpoint FROM bump)
FROM facts
""")

_VLOB_UPDATE = PreparedStatement("""
WITH realm_row AS MATERIALIZED (
    SELECT realm_id, encryption_revision, maintenance_type FROM realm
    WHERE organization_id = %(org)s::text
      AND realm_id = (
          SELECT realm_id FROM vlob WHERE organization_id = %(org)s::text AND vlob_id = %(vlob)s::uuid
      )
    FOR NO KEY UPDATE
), author_row AS MATERIALIZED (
    SELECT role, role_certified_on FROM realm_user
    WHERE organization_id = %(org)s::text AND realm_id = (SELECT realm_id FROM realm_row)
      AND user_id = %(user)s::text
    FOR NO KEY UPDATE
), vlob_row AS MATERIALIZED (
    SELECT latest_version, latest_timestamp FROM vlob
    WHERE organization_id = %(org)s::text AND vlob_id = %(vlob)s::uuid AND EXISTS (SELECT 1 FROM realm_row)
    FOR NO KEY UPDATE
), facts AS MATERIALIZED (
    SELECT r.realm_id, r.encryption_revision, r.maintenance_type, a.role, a.role_certified_on,
           v.latest_version, v.latest_timestamp
    FROM (VALUES (1)) AS one
    LEFT JOIN realm_row AS r ON true
    LEFT JOIN author_row AS a ON true
    LEFT JOIN vlob_row AS v ON true
), allowed AS MATERIALIZED (
    -- realm_rules.check_vlob_update. Outside maintenance the readable revision is the current
    -- one, whose latest version vlob.latest_version/latest_timestamp describe.
    SELECT realm_id, encryption_revision FROM facts
    WHERE realm_id IS NOT NULL
      AND maintenance_type IS NULL
      AND encryption_revision = %(revision)s::integer
      AND coalesce(role = ANY(%(write_roles)s::text[]), false)
      AND (role_certified_on IS NULL OR role_certified_on < %(ts)s::timestamptz)
      AND latest_version + 1 = %(version)s::integer
      AND latest_timestamp <= %(ts)s::timestamptz
), new_version AS (
    UPDATE vlob SET latest_version = %(version)s::integer, latest_timestamp = %(ts)s::timestamptz
    FROM allowed
    WHERE vlob.organization_id = %(org)s::text AND vlob.vlob_id = %(vlob)s::uuid
      AND vlob.latest_version + 1 = %(version)s::integer
    RETURNING vlob.realm_id, allowed.encryption_revision
), new_atom AS (
    INSERT INTO vlob_atom (organization_id, vlob_id, encryption_revision, version, realm_id, blob, author,
                           created_on)
    SELECT %(org)s::text, %(vlob)s::uuid, encryption_revision, %(version)s::integer, realm_id, %(blob)s::bytea,
           %(author)s::text, %(ts)s::timestamptz
    FROM new_version
), bump AS (
    UPDATE realm SET checkpoint = realm.checkpoint + 1, vlobs_size = realm.vlobs_size + %(size)s::integer
    FROM new_version
    WHERE realm.organization_id = %(org)s::text AND realm.realm_id = new_version.realm_id
    RETURNING realm.realm_id, realm.checkpoint
), change AS (
    INSERT INTO realm_vlob_update (organization_id, realm_id, checkpoint, vlob_id, version)
    SELECT %(org)s::text, realm_id, checkpoint, %(vlob)s::uuid, %(version)s::integer FROM bump
), writer AS (
    UPDATE realm_user SET last_vlob_update = greatest(last_vlob_update, %(ts)s::timestamptz)
    FROM new_version
    WHERE realm_user.organization_id = %(org)s::text AND realm_user.realm_id = new_version.realm_id
      AND realm_user.user_id = %(user)s::text
)
SELECT facts.*, (SELECT checkpoint FROM bump)
FROM facts
""")

# The realm facts of a vlob and its readable revision (realm_rules.readable_revision).
_VLOB_FACTS = """
facts AS MATERIALIZED (
    SELECT v.realm_id, r.encryption_revision, r.maintenance_type, ru.role,
           CASE WHEN r.maintenance_type = %(reencryption)s::text THEN r.encryption_revision - 1
                ELSE r.encryption_revision END AS readable_revision
    FROM (VALUES (1)) AS one
    LEFT JOIN vlob AS v ON v.organization_id = %(org)s::text AND v.vlob_id = %(vlob)s::uuid
    LEFT JOIN realm AS r ON r.organization_id = v.organization_id AND r.realm_id = v.realm_id
    LEFT JOIN realm_user AS ru
        ON ru.organization_id = v.organization_id AND ru.realm_id = v.realm_id AND ru.user_id = %(user)s::text
)
"""

# realm_rules.select_vlob_version in SQL: `version` wins, else the latest at or before `at`,
# else the latest. Blobs are only fetched for a member.
_VLOB_READ = PreparedStatement("WITH " + _VLOB_FACTS + """
SELECT f.realm_id, f.encryption_revision, f.maintenance_type, f.role,
       a.version, a.blob, a.author, a.created_on, coalesce(author_ru.role_certified_on, a.created_on)
FROM facts AS f
LEFT JOIN LATERAL (
    SELECT atom.version, atom.blob, atom.author, atom.created_on FROM vlob_atom AS atom
    WHERE f.role IS NOT NULL
      AND atom.organization_id = %(org)s::text AND atom.vlob_id = %(vlob)s::uuid
      AND atom.encryption_revision = f.readable_revision
      AND CASE WHEN %(version)s::integer IS NOT NULL THEN atom.version = %(version)s::integer
               WHEN %(at)s::timestamptz IS NOT NULL THEN atom.created_on <= %(at)s::timestamptz
               ELSE true END
    ORDER BY atom.version DESC
    LIMIT 1
) AS a ON true
LEFT JOIN realm_user AS author_ru
    ON author_ru.organization_id = %(org)s::text AND author_ru.realm_id = f.realm_id
   AND author_ru.user_id = split_part(a.author, '@', 1)
""")

_VLOB_LIST_VERSIONS = PreparedStatement("WITH " + _VLOB_FACTS + """
SELECT f.realm_id, f.encryption_revision, f.maintenance_type, f.role, a.version, a.created_on, a.author
FROM facts AS f
LEFT JOIN LATERAL (
    SELECT atom.version, atom.created_on, atom.author FROM vlob_atom AS atom
    WHERE f.role IS NOT NULL
      AND atom.organization_id = %(org)s::text AND atom.vlob_id = %(vlob)s::uuid
      AND atom.encryption_revision = f.readable_revision
) AS a ON true
ORDER BY a.version
""")

_POLL_CHANGES = PreparedStatement("""
WITH facts AS MATERIALIZED (
    SELECT r.encryption_revision, r.maintenance_type, ru.role, r.checkpoint
    FROM (VALUES (1)) AS one
    LEFT JOIN realm AS r ON r.organization_id = %(org)s::text AND r.realm_id = %(realm)s::uuid
    LEFT JOIN realm_user AS ru
        ON ru.organization_id = r.organization_id AND ru.realm_id = r.realm_id AND ru.user_id = %(user)s::text
)
SELECT f.encryption_revision, f.maintenance_type, f.role, f.checkpoint, c.vlob_id, c.version
FROM facts AS f
LEFT JOIN LATERAL (
    SELECT u.vlob_id, max(u.version) AS version FROM realm_vlob_update AS u
    WHERE f.role IS NOT NULL
      AND u.organization_id = %(org)s::text AND u.realm_id = %(realm)s::uuid
      AND u.checkpoint > %(last_checkpoint)s::bigint
    GROUP BY u.vlob_id
) AS c ON true
""")

# The realm facts of a re-encryption batch request, and whether realm_rules.
# check_reencryption_batch accepts them (maintenance, revision N, OWNER).
_MAINTENANCE_FACTS = """
facts AS MATERIALIZED (
    SELECT r.encryption_revision, r.maintenance_type, ru.role,
           coalesce(r.maintenance_type IS NOT NULL AND r.encryption_revision = %(revision)s::integer
                    AND ru.role = %(owner)s::text, false) AS allowed
    FROM (VALUES (1)) AS one
    LEFT JOIN realm AS r ON r.organization_id = %(org)s::text AND r.realm_id = %(realm)s::uuid
    LEFT JOIN realm_user AS ru
        ON ru.organization_id = r.organization_id AND ru.realm_id = r.realm_id AND ru.user_id = %(user)s::text
)
"""

# Versions of revision N-1 without their copy at N, in (vlob id, version) order.
_GET_REENCRYPTION_BATCH = PreparedStatement("WITH " + _MAINTENANCE_FACTS + """
SELECT f.encryption_revision, f.maintenance_type, f.role, b.vlob_id, b.version, b.blob
FROM facts AS f
LEFT JOIN LATERAL (
    SELECT old.vlob_id, old.version, old.blob FROM vlob_atom AS old
    WHERE f.allowed
      AND old.organization_id = %(org)s::text AND old.realm_id = %(realm)s::uuid
      AND old.encryption_revision = %(revision)s::integer - 1
      AND NOT EXISTS (
          SELECT 1 FROM vlob_atom AS new
          WHERE new.organization_id = old.organization_id AND new.vlob_id = old.vlob_id
            AND new.encryption_revision = %(revision)s::integer AND new.version = old.version
      )
    ORDER BY old.vlob_id, old.version
    LIMIT %(size)s::integer
) AS b ON true
ORDER BY b.vlob_id, b.version
""")

# Under the realm lock, so the counts include every earlier batch; this statement's own
# copies are invisible to its snapshot, hence `+ copies`. Within the batch, the first entry of
# a (vlob, version) wins; against earlier batches, ON CONFLICT keeps the stored copy.
_SAVE_REENCRYPTION_BATCH = _LOCK_REALM + "WITH " + _MAINTENANCE_FACTS + """
, entries AS (
    SELECT DISTINCT ON (e.vlob_id, e.version) e.vlob_id, e.version, e.blob
    FROM unnest(%(vlob_ids)s::uuid[], %(versions)s::integer[], %(blobs)s::bytea[])
         WITH ORDINALITY AS e (vlob_id, version, blob, position)
    ORDER BY e.vlob_id, e.version, e.position
), copies AS (
    INSERT INTO vlob_atom (organization_id, vlob_id, encryption_revision, version, realm_id, blob, author,
                           created_on)
    SELECT old.organization_id, old.vlob_id, %(revision)s, old.version, old.realm_id, entries.blob, old.author,
           old.created_on
    FROM facts, entries
    JOIN vlob_atom AS old
        ON old.organization_id = %(org)s AND old.vlob_id = entries.vlob_id
       AND old.encryption_revision = %(revision)s - 1 AND old.version = entries.version
    WHERE facts.allowed AND old.realm_id = %(realm)s
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT f.encryption_revision, f.maintenance_type, f.role, f.allowed,
       CASE WHEN f.allowed THEN (
           SELECT count(*) FROM vlob_atom
           WHERE organization_id = %(org)s AND realm_id = %(realm)s AND encryption_revision = %(revision)s - 1
       ) END,
       CASE WHEN f.allowed THEN (
           SELECT count(*) FROM vlob_atom
           WHERE organization_id = %(org)s AND realm_id = %(realm)s AND encryption_revision = %(revision)s
       ) + (SELECT count(*) FROM copies) END
FROM facts AS f
"""


class PgVlobStorage(_PgBase):
    async def create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        encryption_revision: int,
        vlob_id: UUID,
        timestamp: datetime,
        blob: bytes,
    ) -> VlobWrite:
        row = await self._row(
            _VLOB_CREATE,
            {
                "org": organization_id,
                "realm": realm_id,
                "user": user_of(author),
                "author": author,
                "revision": _int4(encryption_revision),
                "vlob": vlob_id,
                "ts": timestamp,
                "blob": blob,
                "size": len(blob),
            },
        )
        revision, maintenance_type, role, role_granted_on, vlob_used, allowed, checkpoint = row
        if checkpoint is not None:
            return VlobWrite(realm_id=realm_id, checkpoint=int(checkpoint))
        rules.check_vlob_create(
            _state(revision, maintenance_type),
            role,
            role_granted_on,
            encryption_revision,
            timestamp,
            # Allowed yet not written: the id was taken meanwhile (in another realm).
            bool(vlob_used) or bool(allowed),
        )
        raise RuleMismatchError("vlob_create")

    async def update(
        self,
        organization_id: str,
        author: str,
        encryption_revision: int,
        vlob_id: UUID,
        version: int,
        timestamp: datetime,
        blob: bytes,
    ) -> VlobWrite:
        row = await self._row(
            _VLOB_UPDATE,
            {
                "org": organization_id,
                "user": user_of(author),
                "author": author,
                "revision": _int4(encryption_revision),
                "vlob": vlob_id,
                "version": _int4(version),
                "ts": timestamp,
                "blob": blob,
                "size": len(blob),
            },
        )
        vlob_realm, revision, maintenance_type, role, role_granted_on, latest_version, latest_ts, checkpoint = row
        if checkpoint is not None:
            return VlobWrite(realm_id=vlob_realm, checkpoint=int(checkpoint))
        rules.check_vlob_update(
            _state(revision, maintenance_type),
            role,
            role_granted_on,
            encryption_revision,
            timestamp,
            latest_version or 0,
            latest_ts,
            version,
        )
        raise RuleMismatchError("vlob_update")

    async def read(
        self,
        organization_id: str,
        user_id: str,
        encryption_revision: int,
        vlob_id: UUID,
        version: int | None,
        timestamp: datetime | None,
    ) -> VlobVersion:
        row = await self._row(
            _VLOB_READ,
            {
                "org": organization_id,
                "user": user_id,
                "vlob": vlob_id,
                "version": None if version is None else _int4(version),
                "at": timestamp,
            },
        )
        _, revision, maintenance_type, role, found, blob, author, created_on, author_granted_on = row
        rules.check_vlob_read(_state(revision, maintenance_type), role, encryption_revision)
        if found is None:
            raise BadVersionError()
        return VlobVersion(
            version=found,
            blob=blob,
            author=author,
            timestamp=created_on,
            author_last_role_granted_on=author_granted_on,
        )

    async def poll_changes(
        self, organization_id: str, user_id: str, realm_id: UUID, last_checkpoint: int
    ) -> VlobChanges:
        rows = await self._rows(
            _POLL_CHANGES,
            {
                "org": organization_id,
                "user": user_id,
                "realm": realm_id,
                "last_checkpoint": _clamp(last_checkpoint, -1, 2**63 - 1),
            },
        )
        revision, maintenance_type, role, checkpoint, *_ = rows[0]
        rules.check_poll_changes(_state(revision, maintenance_type), role)
        changes = {vlob_id: int(version) for *_, vlob_id, version in rows if vlob_id is not None}
        return VlobChanges(current_checkpoint=int(checkpoint), changes=changes)

    async def list_versions(
        self, organization_id: str, user_id: str, vlob_id: UUID
    ) -> dict[int, tuple[datetime, str]]:
        rows = await self._rows(_VLOB_LIST_VERSIONS, {"org": organization_id, "user": user_id, "vlob": vlob_id})
        _, revision, maintenance_type, role, *_ = rows[0]
        rules.check_vlob_read(_state(revision, maintenance_type), role, None)
        return {
            int(version): (created_on, author)
            for *_, version, created_on, author in rows
            if version is not None
        }

    async def get_reencryption_batch(
        self, organization_id: str, user_id: str, realm_id: UUID, encryption_revision: int, size: int
    ) -> list[ReencryptionBatchEntry]:
        rows = await self._rows(
            _GET_REENCRYPTION_BATCH,
            {
                "org": organization_id,
                "user": user_id,
                "realm": realm_id,
                "revision": _int4(encryption_revision),
                "size": _clamp(size, 0, _INT4_MAX),
            },
        )
        revision, maintenance_type, role, *_ = rows[0]
        rules.check_reencryption_batch(_state(revision, maintenance_type), role, encryption_revision)
        return [
            ReencryptionBatchEntry(vlob_id, int(version), blob)
            for *_, vlob_id, version, blob in rows
            if vlob_id is not None
        ]

    async def save_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: UUID,
        encryption_revision: int,
        batch: list[ReencryptionBatchEntry],
    ) -> tuple[int, int]:
        # Versions outside the column's range cannot exist at N-1: ignored like unknown ones.
        entries = [e for e in batch if 1 <= e.version <= _INT4_MAX]
        row = await self._row(
            _SAVE_REENCRYPTION_BATCH,
            {
                "org": organization_id,
                "user": user_id,
                "realm": realm_id,
                "revision": _int4(encryption_revision),
                "vlob_ids": [e.vlob_id for e in entries],
                "versions": [e.version for e in entries],
                "blobs": [e.blob for e in entries],
            },
        )
        revision, maintenance_type, role, allowed, total, done = row
        rules.check_reencryption_batch(_state(revision, maintenance_type), role, encryption_revision)
        if not allowed:
            raise RuleMismatchError("vlob_maintenance_save_reencryption_batch")
        return int(total), int(done)


# ---- blocks ------------------------------------------------------------------------------------

_BLOCK_CHECK_CREATE = PreparedStatement("""
SELECT r.encryption_revision, r.maintenance_type, ru.role,
       EXISTS (SELECT 1 FROM block WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid)
FROM (VALUES (1)) AS one
LEFT JOIN realm AS r ON r.organization_id = %(org)s::text AND r.realm_id = %(realm)s::uuid
LEFT JOIN realm_user AS ru
    ON ru.organization_id = r.organization_id AND ru.realm_id = r.realm_id AND ru.user_id = %(user)s::text
""")

_BLOCK_RECORD_CREATE = PreparedStatement("""
WITH target AS (
    SELECT realm_id FROM realm WHERE organization_id = %(org)s::text AND realm_id = %(realm)s::uuid
), new_block AS (
    INSERT INTO block (organization_id, block_id, realm_id, author, size, created_on)
    SELECT %(org)s::text, %(block)s::uuid, realm_id, %(author)s::text, %(size)s::integer,
           %(created_on)s::timestamptz
    FROM target
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM target), EXISTS (SELECT 1 FROM new_block)
""")

_BLOCK_CHECK_READ = PreparedStatement("""
SELECT r.encryption_revision, r.maintenance_type, ru.role
FROM (VALUES (1)) AS one
LEFT JOIN block AS b ON b.organization_id = %(org)s::text AND b.block_id = %(block)s::uuid
LEFT JOIN realm AS r ON r.organization_id = b.organization_id AND r.realm_id = b.realm_id
LEFT JOIN realm_user AS ru
    ON ru.organization_id = b.organization_id AND ru.realm_id = b.realm_id AND ru.user_id = %(user)s::text
""")


class PgBlockStorage(_PgBase):
    async def check_create(self, organization_id: str, author: str, realm_id: UUID, block_id: UUID) -> None:
        revision, maintenance_type, role, used = await self._row(
            _BLOCK_CHECK_CREATE,
            {"org": organization_id, "realm": realm_id, "user": user_of(author), "block": block_id},
        )
        rules.check_block_create(_state(revision, maintenance_type), role, bool(used))

    async def record_create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        block_id: UUID,
        size: int,
        created_on: datetime,
    ) -> None:
        realm_found, created = await self._row(
            _BLOCK_RECORD_CREATE,
            {
                "org": organization_id,
                "realm": realm_id,
                "block": block_id,
                "author": author,
                "size": size,
                "created_on": created_on,
            },
        )
        if not realm_found:
            raise RealmNotFoundError()
        if not created:
            raise AlreadyExistsError()

    async def check_read(self, organization_id: str, user_id: str, block_id: UUID) -> None:
        revision, maintenance_type, role = await self._row(
            _BLOCK_CHECK_READ, {"org": organization_id, "user": user_id, "block": block_id}
        )
        rules.check_block_read(_state(revision, maintenance_type), role)


# ---- messages ----------------------------------------------------------------------------------

_MESSAGE_GET = PreparedStatement("""
SELECT message_index, sender, sent_on, body FROM message
WHERE organization_id = %(org)s::text AND recipient = %(user)s::text AND message_index > %(offset)s::integer
ORDER BY message_index
""")


class PgMessageStorage(_PgBase):
    async def get(self, organization_id: str, user_id: str, offset: int) -> list[Message]:
        rows = await self._pool.fetch(
            _MESSAGE_GET, {"org": organization_id, "user": user_id, "offset": _clamp(offset, -1, _INT4_MAX)}
        )
        return [
            Message(index=index, sender=sender, timestamp=sent_on, body=body)
            for index, sender, sent_on, body in rows
        ]
