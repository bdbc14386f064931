"""What the PostgreSQL realm, vlob, block and message storages share (tables of migration 0001).

The storages live in `realm.py`, `vlob.py`, `block.py` and `message.py`; this module holds how
they apply the rules and the helpers they all use.

Every method of these storages is ONE round trip (plus, for PREPAREd statements, one PREPARE per connection
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
Realm creation (the realm's primary key) takes no realm lock; recording a block takes a share
lock on the realm row and the author's realm_user row (it waits for a role change or a
maintenance start and sees its result, without serializing block creations among
themselves); a block id's uniqueness is its primary key and its claim (`block.py`).

Reads (status, stats, certificates, vlob_read, poll, list, batches, block checks, messages) are
one PREPAREd statement without locks: its snapshot is consistent because every write is atomic.
"""

from __future__ import annotations

from typing import Any

from parsec.backend import realm_rules as rules
from parsec.backend.realm_rules import RealmState
from parsec.storage.postgresql.connection import Query
from parsec.storage.postgresql.pool import PostgreSQLPool

__all__ = [
    "INT4_MAX",
    "LOCK_REALM",
    "RULE_PARAMS",
    "PgRealmScopedStorage",
    "RuleMismatchError",
    "clamp",
    "int4",
    "realm_state",
]

INT4_MAX = 2**31 - 1


def int4(value: int) -> int:
    """A request integer (revision, version) for the SQL side. A value beyond the integer
    columns cannot match any row, yet PostgreSQL refuses it as soon as it meets such a column
    (even where no row is written): it becomes 0, which matches nothing either (revisions and
    versions start at 1). The rules are always applied to the real value, in Python."""
    return value if -INT4_MAX <= value <= INT4_MAX else 0


def clamp(value: int, low: int, high: int) -> int:
    """A bound (checkpoint, offset) within the column's range: same rows selected."""
    return max(low, min(value, high))


class RuleMismatchError(RuntimeError):
    """The SQL refused an operation that `realm_rules` accepts on the same facts (a bug)."""

    def __init__(self, operation: str) -> None:
        super().__init__(f"{operation}: the SQL conditions and realm_rules disagree on the facts")


# Values the SQL conditions take from `realm_rules` rather than spelling them out.
RULE_PARAMS: dict[str, Any] = {
    "owner": rules.OWNER,
    "write_roles": sorted(rules.WRITE_ROLES),
    "management_roles": sorted(rules.MANAGEMENT_ROLES),
    "reencryption": rules.REENCRYPTION,
}

# First statement of the "lock, then check with a fresh snapshot" round trips: the realm's
# write lock (nothing is locked when the realm does not exist: the next statement reports it).
LOCK_REALM = """
SELECT 1 FROM realm WHERE organization_id = %(org)s AND realm_id = %(realm)s FOR NO KEY UPDATE;
"""


def realm_state(encryption_revision: int | None, maintenance_type: str | None) -> RealmState | None:
    """The realm's state from nullable columns (NULL revision = no such realm)."""
    if encryption_revision is None:
        return None
    return RealmState(encryption_revision, maintenance_type)


class PgRealmScopedStorage:
    """Base of the four storages: statements run on the pool with `RULE_PARAMS` bound."""

    def __init__(self, pool: PostgreSQLPool) -> None:
        self._pool = pool

    async def _row(self, sql: Query, params: dict[str, Any]) -> tuple[Any, ...]:
        """The single row every statement of these storages returns (one round trip)."""
        row = await self._pool.fetchrow(sql, {**RULE_PARAMS, **params})
        assert row is not None, "the statement must return its facts row"
        return row

    async def _rows(self, sql: Query, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        rows = await self._pool.fetch(sql, {**RULE_PARAMS, **params})
        assert rows, "the statement must return at least its facts row"
        return rows
