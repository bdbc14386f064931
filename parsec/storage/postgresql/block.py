"""PostgreSQL block metadata (the blocks themselves are in the blockstore).

How every statement applies `parsec.backend.realm_rules`: `parsec.storage.postgresql.realm_common`.

A creation claims its block id (`block_claim`, migration 0002) before the bytes are written,
and records the block with the statement that ends the claim (see `BlockStorage`):

* the claim is one round trip of two prepared statements (one implicit transaction). The
  first checks the rules and inserts the claim, or takes over one of the same device or an
  expired one. Its snapshot may predate the commit of a creation that just recorded this id
  (and ended its claim): the second statement, whose snapshot follows the first's insert,
  sees that block and withdraws the claim (AlreadyExistsError). Two claims of one id never
  coexist: the primary key serializes them;
* the record locks the realm row and the author's realm_user row (`FOR SHARE`: it waits for
  a role change or a maintenance start in progress and reads their result, without
  serializing the realm's other block creations), re-checks maintenance and role, ends the
  claim and inserts the block only if the claim was still this creation's and the rules
  hold.

With the POSTGRESQL blockstore the bytes live in this same database (`block_data`), and the
whole creation is one statement instead (`create_with_data`: one round trip, one commit, where
the claim, the bytes and the record took three of each): the transaction is the claim. It
locks the realm and author rows as the record does, checks the rules, inserts the metadata
and, only if that insert happened, the bytes. Of two racing creations of one id the primary key
of `block` makes the second wait for the first's commit and then insert nothing
(AlreadyExistsError): its bytes are never written, so every `ok` is given on the bytes its own
writer sent. A claim standing from a three-step creation (another instance's, or a blockstore
wrapped by a test) is respected: BlockClaimedError. A read is one statement too
(`read_with_data`): the rules' facts and the bytes, fetched only when the reader may read.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid4

from parsec.api.ids import user_of
from parsec.backend import realm_rules as rules
from parsec.backend.storage import AlreadyExistsError, BlockClaimedError
from parsec.storage.postgresql.binary import BinaryPool
from parsec.storage.postgresql.connection import PreparedStatement
from parsec.storage.postgresql.realm_common import (
    RULE_PARAMS,
    PgRealmScopedStorage,
    RuleMismatchError,
    realm_state,
)

__all__ = ["BlockBytesMissingError", "PgBlockBytes", "PgBlockStorage"]

_BLOCK_FACTS = """
SELECT r.encryption_revision, r.maintenance_type, ru.role,
       EXISTS (SELECT 1 FROM block WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid)
           AS used
FROM (VALUES (1)) AS one
LEFT JOIN realm AS r ON r.organization_id = %(org)s::text AND r.realm_id = %(realm)s::uuid
LEFT JOIN realm_user AS ru
    ON ru.organization_id = r.organization_id AND ru.realm_id = r.realm_id AND ru.user_id = %(user)s::text
"""

# A block creation's share locks (it waits for a role change or a maintenance start and sees
# its result, without serializing the realm's block creations), as the first CTEs.
_SHARE_LOCKED_ROWS = """realm_row AS (
    SELECT encryption_revision, maintenance_type FROM realm
    WHERE organization_id = %(org)s::text AND realm_id = %(realm)s::uuid
    FOR SHARE
), author_row AS (
    SELECT role FROM realm_user
    WHERE organization_id = %(org)s::text AND realm_id = %(realm)s::uuid AND user_id = %(user)s::text
    FOR SHARE
)"""

# A read's facts: the block's realm and the reader's role there (NULLs when either is missing).
_BLOCK_OF_READER = """FROM (VALUES (1)) AS one
LEFT JOIN block AS b ON b.organization_id = %(org)s::text AND b.block_id = %(block)s::uuid
LEFT JOIN realm AS r ON r.organization_id = b.organization_id AND r.realm_id = b.realm_id
LEFT JOIN realm_user AS ru
    ON ru.organization_id = b.organization_id AND ru.realm_id = b.realm_id AND ru.user_id = %(user)s::text
"""

# realm_rules.check_block_create on a creation's facts (encryption_revision, maintenance_type,
# role), but for the block id's use, which each statement checks its own way.
_MAY_CREATE = """encryption_revision IS NOT NULL
      AND maintenance_type IS NULL
      AND coalesce(role = ANY(%(write_roles)s::text[]), false)"""

# The creation's `block` row, if its `allowed` CTE has a row (nothing if the id is taken).
_NEW_BLOCK = """INSERT INTO block (organization_id, block_id, realm_id, author, size, created_on)
    SELECT %(org)s::text, %(block)s::uuid, %(realm)s::uuid, %(author)s::text, %(size)s::integer,
           %(created_on)s::timestamptz
    FROM allowed
    ON CONFLICT DO NOTHING
    RETURNING 1"""

# Sent together, one round trip (`fetchrow_batch`).
_BLOCK_CLAIM = PreparedStatement(f"""
WITH facts AS ({_BLOCK_FACTS}
), allowed AS MATERIALIZED (
    -- realm_rules.check_block_create.
    SELECT 1 FROM facts
    WHERE {_MAY_CREATE}
      AND NOT used
)
INSERT INTO block_claim (organization_id, block_id, claim, author, claimed_on)
SELECT %(org)s::text, %(block)s::uuid, %(claim)s::uuid, %(author)s::text, %(now)s::timestamptz
FROM allowed
ON CONFLICT (organization_id, block_id) DO UPDATE
    SET claim = excluded.claim, author = excluded.author, claimed_on = excluded.claimed_on
    WHERE block_claim.author = excluded.author OR block_claim.claimed_on <= %(expired)s::timestamptz
""")
_BLOCK_CLAIM_CHECK = PreparedStatement(f"""
WITH facts AS ({_BLOCK_FACTS}
), withdrawn AS (
    DELETE FROM block_claim
    WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid AND claim = %(claim)s::uuid
      AND (SELECT used FROM facts)
    RETURNING 1
)
SELECT facts.*,
       EXISTS (SELECT 1 FROM block_claim
               WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid
                 AND claim = %(claim)s::uuid)
       AND NOT EXISTS (SELECT 1 FROM withdrawn)
FROM facts
""")

_BLOCK_RECORD_CREATE = PreparedStatement(f"""
WITH {_SHARE_LOCKED_ROWS}, facts AS (
    SELECT r.encryption_revision, r.maintenance_type, a.role
    FROM (VALUES (1)) AS one
    LEFT JOIN realm_row AS r ON true
    LEFT JOIN author_row AS a ON true
), ended AS (
    -- The claim ends whatever the outcome.
    DELETE FROM block_claim
    WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid AND claim = %(claim)s::uuid
    RETURNING 1
), allowed AS MATERIALIZED (
    -- realm_rules.check_block_create, again, on the current role and realm state.
    SELECT 1 FROM facts
    WHERE {_MAY_CREATE}
      AND EXISTS (SELECT 1 FROM ended)
), new_block AS (
    {_NEW_BLOCK}
)
SELECT facts.*, EXISTS (SELECT 1 FROM ended), EXISTS (SELECT 1 FROM new_block),
       EXISTS (SELECT 1 FROM block WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid)
FROM facts
""")

_BLOCK_CHECK_READ = PreparedStatement(f"""
SELECT r.encryption_revision, r.maintenance_type, ru.role
{_BLOCK_OF_READER}""")

# `create_with_data`: claim, bytes and record in one statement (see the module doc). The bytes
# are a binary parameter (parsec.storage.postgresql.binary).
_BLOCK_CREATE_WITH_DATA = PreparedStatement(f"""
WITH {_SHARE_LOCKED_ROWS}, facts AS (
    SELECT r.encryption_revision, r.maintenance_type, a.role,
           EXISTS (SELECT 1 FROM block WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid)
               AS used,
           EXISTS (SELECT 1 FROM block_claim
                   WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid
                     AND author <> %(author)s::text AND claimed_on > %(expired)s::timestamptz)
               AS claimed
    FROM (VALUES (1)) AS one
    LEFT JOIN realm_row AS r ON true
    LEFT JOIN author_row AS a ON true
), allowed AS MATERIALIZED (
    -- realm_rules.check_block_create, and no other device's claim standing.
    SELECT 1 FROM facts
    WHERE {_MAY_CREATE}
      AND NOT used
      AND NOT claimed
), new_block AS (
    {_NEW_BLOCK}
), new_data AS (
    -- Bytes already there belong to no block (a three-step write refused or failed after
    -- its bytes landed): this creation's replace them.
    INSERT INTO block_data (organization_id, block_id, data)
    SELECT %(org)s::text, %(block)s::uuid, %(data)s::bytea
    FROM new_block
    ON CONFLICT (organization_id, block_id) DO UPDATE SET data = excluded.data
    RETURNING 1
)
SELECT facts.*, EXISTS (SELECT 1 FROM new_data) FROM facts
""")

_BLOCK_READ_WITH_DATA = PreparedStatement(f"""
SELECT r.encryption_revision, r.maintenance_type, ru.role,
       CASE WHEN ru.role IS NOT NULL
                 AND (r.maintenance_type IS NULL OR r.maintenance_type = %(reencryption)s::text)
            -- realm_rules.check_block_read holds: the bytes.
            THEN (SELECT data FROM block_data
                  WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid)
       END
{_BLOCK_OF_READER}""")


class BlockBytesMissingError(Exception):
    """The metadata of a block exists, not its bytes (a damaged database)."""


class PgBlockStorage(PgRealmScopedStorage):
    async def claim_create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        block_id: UUID,
        now: datetime,
        claim_seconds: float,
    ) -> UUID:
        claim = uuid4()
        params = {
            **RULE_PARAMS,
            "org": organization_id,
            "realm": realm_id,
            "user": user_of(author),
            "block": block_id,
            "claim": claim,
            "author": author,
            "now": now,
            "expired": now - timedelta(seconds=claim_seconds),
        }
        row = await self._pool.fetchrow_batch([_BLOCK_CLAIM, _BLOCK_CLAIM_CHECK], params)
        assert row is not None, "the check statement returns its facts row"
        revision, maintenance_type, role, used, claimed = row
        if claimed:
            return claim
        rules.check_block_create(realm_state(revision, maintenance_type), role, bool(used))
        # The rules hold on the second statement's facts: the claim of another device stood
        # (or the rules changed between the two statements: refused all the same).
        raise BlockClaimedError()

    async def record_create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        block_id: UUID,
        size: int,
        created_on: datetime,
        claim: UUID,
    ) -> None:
        revision, maintenance_type, role, ended, created, exists = await self._row(
            _BLOCK_RECORD_CREATE,
            {
                "org": organization_id,
                "realm": realm_id,
                "user": user_of(author),
                "block": block_id,
                "author": author,
                "size": size,
                "created_on": created_on,
                "claim": claim,
            },
        )
        if created:
            return
        if not ended:
            if exists:
                raise AlreadyExistsError()
            raise BlockClaimedError()
        rules.check_block_create(realm_state(revision, maintenance_type), role, bool(exists))
        raise RuleMismatchError("block record_create")

    async def check_read(self, organization_id: str, user_id: str, block_id: UUID) -> None:
        revision, maintenance_type, role = await self._row(
            _BLOCK_CHECK_READ, {"org": organization_id, "user": user_id, "block": block_id}
        )
        rules.check_block_read(realm_state(revision, maintenance_type), role)


# The POSTGRESQL blockstore's bytes alone, no rules (a node of a RAID). A block id always
# carries the same bytes: the first copy stays.
_READ = PreparedStatement("""
SELECT data FROM block_data WHERE organization_id = %(org)s::text AND block_id = %(block)s::uuid
""")
_CREATE = PreparedStatement("""
INSERT INTO block_data (organization_id, block_id, data)
VALUES (%(org)s::text, %(block)s::uuid, %(data)s::bytea)
ON CONFLICT (organization_id, block_id) DO NOTHING
""")
_CHECK = PreparedStatement("SELECT 1 FROM block_data LIMIT 0")


class PgBlockBytes:
    """The statements of the POSTGRESQL blockstore (the bytes in `block_data`), on a pool of
    binary sessions: the block is a binary parameter and comes back as binary."""

    def __init__(self, pool: BinaryPool) -> None:
        self._pool = pool

    async def create_with_data(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        block_id: UUID,
        block: bytes,
        created_on: datetime,
        claim_seconds: float,
    ) -> None:
        """Check the rules and store the block, metadata and bytes, in one statement (the
        bytes in `block_data`, the POSTGRESQL blockstore's table). Raises RealmNotFoundError,
        InMaintenanceError, NotAllowedError, AlreadyExistsError, BlockClaimedError (another
        device's three-step creation of this id claimed it less than `claim_seconds` ago)."""
        row = await self._pool.fetchrow(
            _BLOCK_CREATE_WITH_DATA,
            {
                **RULE_PARAMS,
                "org": organization_id,
                "realm": realm_id,
                "user": user_of(author),
                "block": block_id,
                "author": author,
                "size": len(block),
                "created_on": created_on,
                "expired": created_on - timedelta(seconds=claim_seconds),
                "data": block,
            },
        )
        assert row is not None, "the statement returns its facts row"
        revision, maintenance_type, role, used, claimed, created = row
        if created:
            return
        rules.check_block_create(realm_state(revision, maintenance_type), role, bool(used))
        if claimed:
            raise BlockClaimedError()
        # The rules held and no claim stood: a racing creation of the id committed first.
        raise AlreadyExistsError()

    async def read_with_data(self, organization_id: str, user_id: str, block_id: UUID) -> bytes:
        """The rules of `check_read`, then the bytes from `block_data`. Raises
        BlockNotFoundError, InMaintenanceError, NotAllowedError, BlockBytesMissingError."""
        row = await self._pool.fetchrow(
            _BLOCK_READ_WITH_DATA, {**RULE_PARAMS, "org": organization_id, "user": user_id, "block": block_id}
        )
        assert row is not None, "the statement returns its facts row"
        revision, maintenance_type, role, data = row
        rules.check_block_read(realm_state(revision, maintenance_type), role)
        if data is None:
            raise BlockBytesMissingError()
        block: bytes = data
        return block

    async def read(self, organization_id: str, block_id: UUID) -> bytes | None:
        """The bytes alone, no rules (a node of a RAID): None if there are none."""
        row = await self._pool.fetchrow(_READ, {"org": organization_id, "block": block_id})
        if row is None:
            return None
        block: bytes = row[0]
        return block

    async def create(self, organization_id: str, block_id: UUID, block: bytes) -> None:
        """Store the bytes alone (a node of a RAID); a block id keeps its first bytes."""
        await self._pool.execute(_CREATE, {"org": organization_id, "block": block_id, "data": block})

    async def check(self) -> None:
        """The table exists and the database answers (no row read)."""
        await self._pool.execute(_CHECK)
