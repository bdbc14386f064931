"""PostgreSQL block metadata (the blocks themselves are in the blockstore).

How every statement applies `parsec.backend.realm_rules`: `parsec.storage.postgresql.realm_common`.
Block metadata takes no realm lock: a block id's primary key guards its creation.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from parsec.api.ids import user_of
from parsec.backend import realm_rules as rules
from parsec.backend.storage import AlreadyExistsError, RealmNotFoundError
from parsec.storage.postgresql.connection import PreparedStatement
from parsec.storage.postgresql.realm_common import PgRealmScopedStorage, realm_state

__all__ = ["PgBlockStorage"]

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


class PgBlockStorage(PgRealmScopedStorage):
    async def check_create(self, organization_id: str, author: str, realm_id: UUID, block_id: UUID) -> None:
        revision, maintenance_type, role, used = await self._row(
            _BLOCK_CHECK_CREATE,
            {"org": organization_id, "realm": realm_id, "user": user_of(author), "block": block_id},
        )
        rules.check_block_create(realm_state(revision, maintenance_type), role, bool(used))

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
        rules.check_block_read(realm_state(revision, maintenance_type), role)

