"""PostgreSQL vlobs: create, update, read, versions, changes, re-encryption batches.

How every statement applies `parsec.backend.realm_rules` and locks the realm row:
`parsec.storage.postgresql.realm_common`.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from parsec.api.ids import user_of
from parsec.backend import bus as events
from parsec.backend import realm_rules as rules
from parsec.backend.models import ReencryptionBatchEntry, VlobChanges, VlobVersion, VlobWrite
from parsec.backend.storage import BadVersionError
from parsec.storage.postgresql.connection import PreparedStatement
from parsec.storage.postgresql.events import Notify, sql_bigint, sql_uuid
from parsec.storage.postgresql.realm_common import (
    INT4_MAX,
    LOCK_REALM,
    PgRealmScopedStorage,
    RuleMismatchError,
    clamp,
    int4,
    realm_state,
)

__all__ = ["PgVlobStorage"]

# `realm.vlobs_updated`, published by the write statement itself with the checkpoint it
# allocated (and, for an update, the vlob's realm it found).
_CREATED = Notify("ev", {"checkpoint": sql_bigint("checkpoint")})
_UPDATED = Notify("ev", {"checkpoint": sql_bigint("checkpoint"), "realm_id": sql_uuid("realm_id")})

# The write lock of vlob writes, as the first CTEs of their statement: the realm row, then
# the rows gated on it (a one-time EXISTS / scalar subquery on `realm_row` is evaluated before
# their scan starts), each returned in its newest committed version.
_VLOB_CREATE = PreparedStatement(f"""
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
SELECT facts.*, EXISTS (SELECT 1 FROM allowed), (SELECT checkpoint FROM bump), (SELECT {_CREATED.sql} FROM bump)
FROM facts
""")

_VLOB_UPDATE = PreparedStatement(f"""
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
SELECT facts.*, (SELECT checkpoint FROM bump), (SELECT {_UPDATED.sql} FROM bump)
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
_SAVE_REENCRYPTION_BATCH = LOCK_REALM + "WITH " + _MAINTENANCE_FACTS + """
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


_ANY_REALM = UUID(int=0)  # placeholder: the statement fills in the vlob's realm


class PgVlobStorage(PgRealmScopedStorage):
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
                **_CREATED.params(events.realm_vlobs_updated(organization_id, author, realm_id, 0, vlob_id, 1)),
                "org": organization_id,
                "realm": realm_id,
                "user": user_of(author),
                "author": author,
                "revision": int4(encryption_revision),
                "vlob": vlob_id,
                "ts": timestamp,
                "blob": blob,
                "size": len(blob),
            },
        )
        revision, maintenance_type, role, role_granted_on, vlob_used, allowed, checkpoint, _ = row
        if checkpoint is not None:
            return VlobWrite(realm_id=realm_id, checkpoint=int(checkpoint))
        rules.check_vlob_create(
            realm_state(revision, maintenance_type),
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
                **_UPDATED.params(
                    events.realm_vlobs_updated(organization_id, author, _ANY_REALM, 0, vlob_id, version)
                ),
                "org": organization_id,
                "user": user_of(author),
                "author": author,
                "revision": int4(encryption_revision),
                "vlob": vlob_id,
                "version": int4(version),
                "ts": timestamp,
                "blob": blob,
                "size": len(blob),
            },
        )
        vlob_realm, revision, maintenance_type, role, role_granted_on, latest_version, latest_ts, checkpoint, _ = row
        if checkpoint is not None:
            return VlobWrite(realm_id=vlob_realm, checkpoint=int(checkpoint))
        rules.check_vlob_update(
            realm_state(revision, maintenance_type),
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
                "version": None if version is None else int4(version),
                "at": timestamp,
            },
        )
        _, revision, maintenance_type, role, found, blob, author, created_on, author_granted_on = row
        rules.check_vlob_read(realm_state(revision, maintenance_type), role, encryption_revision)
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
                "last_checkpoint": clamp(last_checkpoint, -1, 2**63 - 1),
            },
        )
        revision, maintenance_type, role, checkpoint, *_ = rows[0]
        rules.check_poll_changes(realm_state(revision, maintenance_type), role)
        changes = {vlob_id: int(version) for *_, vlob_id, version in rows if vlob_id is not None}
        return VlobChanges(current_checkpoint=int(checkpoint), changes=changes)

    async def list_versions(
        self, organization_id: str, user_id: str, vlob_id: UUID
    ) -> dict[int, tuple[datetime, str]]:
        rows = await self._rows(_VLOB_LIST_VERSIONS, {"org": organization_id, "user": user_id, "vlob": vlob_id})
        _, revision, maintenance_type, role, *_ = rows[0]
        rules.check_vlob_read(realm_state(revision, maintenance_type), role, None)
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
                "revision": int4(encryption_revision),
                "size": clamp(size, 0, INT4_MAX),
            },
        )
        revision, maintenance_type, role, *_ = rows[0]
        rules.check_reencryption_batch(realm_state(revision, maintenance_type), role, encryption_revision)
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
        entries = [e for e in batch if 1 <= e.version <= INT4_MAX]
        row = await self._row(
            _SAVE_REENCRYPTION_BATCH,
            {
                "org": organization_id,
                "user": user_id,
                "realm": realm_id,
                "revision": int4(encryption_revision),
                "vlob_ids": [e.vlob_id for e in entries],
                "versions": [e.version for e in entries],
                "blobs": [e.blob for e in entries],
            },
        )
        revision, maintenance_type, role, allowed, total, done = row
        rules.check_reencryption_batch(realm_state(revision, maintenance_type), role, encryption_revision)
        if not allowed:
            raise RuleMismatchError("vlob_maintenance_save_reencryption_batch")
        return int(total), int(done)

