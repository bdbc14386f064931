"""The two schemas a transfer meets, and the checks made before any row moves.

Upstream: the database of the reference server, parsec-cloud 2.10.x, as its own
`parsec backend migrate` builds it (docs/protocol/storage.md §3 gives the logical model).
Every table has a serial `_id` key that the other tables reference; identifiers
(organization_id, user_id, device_id, realm_id, ...) are columns. Its `migration` table
(`_id`, `name`, `applied`) lists the applied revisions from 0002 on (the table is created by
0002, so 0001 never has a row). A database with any other set of revisions is refused.

Ours: parsec/storage/postgresql/migrations/*.sql, with natural keys everywhere.

Helpers here also handle what both directions do to the target inside the transfer's
transaction: the emptiness check (or the wipe, when told to overwrite), and dropping the
foreign keys before the load and adding them back after it (PostgreSQL's advice for bulk
loads: one validation pass per key instead of one trigger call per row, and the circular
user <-> device references of both schemas need no insertion order).
"""

from __future__ import annotations

import attrs
import psycopg2.extensions

from parsec.storage.postgresql.migrations import Migration, list_migrations
from parsec.transfer.pgcopy import TransferError, quote_ident

Connection = psycopg2.extensions.connection

# (number, name) of every revision of parsec-cloud 2.10.x, in order.
UPSTREAM_REVISIONS: tuple[tuple[int, str], ...] = (
    (1, "initial"),
    (2, "add_migration_table"),
    (3, "human_handle"),
    (4, "invite"),
    (5, "redacted_certificates"),
    (6, "outsider_enabled"),
    (7, "users_limit"),
    (8, "apvi1_removal"),
    (9, "add_realm_user_change_table"),
    (10, "add_pki_certificate_table"),
)
UPSTREAM_VERSION = "parsec-cloud 2.10"

# Every upstream table holding data (`migration` aside).
UPSTREAM_TABLES: tuple[str, ...] = (
    "organization",
    "human",
    "user_",
    "device",
    "invitation",
    "pki_enrollment",
    "message",
    "realm",
    "realm_user_role",
    "realm_user_change",
    "vlob_encryption_revision",
    "vlob_atom",
    "realm_vlob_update",
    "block",
    "block_data",
)


def revision_label(number: int, name: str) -> str:
    return f"{number:04d}_{name}"


def _fetchall(conn: Connection, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def _tables(conn: Connection) -> set[str]:
    return {
        str(name)
        for (name,) in _fetchall(conn, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    }


def _migration_columns(conn: Connection) -> set[str]:
    return {
        str(name)
        for (name,) in _fetchall(
            conn,
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'migration'",
        )
    }


def _schema_kind(conn: Connection) -> str:
    """"empty", "upstream", "ours" or "other"."""
    tables = _tables(conn)
    if not tables:
        return "empty"
    if "migration" not in tables:
        return "other"
    columns = _migration_columns(conn)
    if "_id" in columns:
        return "upstream"
    if "id" in columns:
        return "ours"
    return "other"


# ---------------------------------------------------------------------------------------------
# Upstream side


def check_upstream_schema(conn: Connection, role: str) -> None:
    """Refuse (TransferError, one line) unless `conn` holds exactly the 2.10 revisions.
    `role` says which side it is ("source", "target") in the messages."""
    kind = _schema_kind(conn)
    if kind == "ours":
        raise TransferError(
            f"The {role} database holds this server's schema, not the upstream server's"
            + (" (use `parsec backend export` to go the other way)" if role == "source" else "")
        )
    if kind == "empty":
        raise TransferError(
            f"The {role} database is empty: create the upstream schema in it first with the upstream "
            f"server's own `parsec backend migrate` ({UPSTREAM_VERSION})"
            if role == "target"
            else f"The {role} database is empty: it is not a database of the upstream server"
        )
    if kind == "other":
        raise TransferError(
            f"The {role} database has no upstream `migration` table: it is not a database of the upstream "
            f"server ({UPSTREAM_VERSION})"
        )
    applied = {
        (int(number), str(name))  # type: ignore[call-overload]
        for number, name in _fetchall(conn, "SELECT _id, name FROM migration")
    }
    known = set(UPSTREAM_REVISIONS[1:])  # 0001 has no row (it precedes the table)
    unknown = sorted(applied - known)
    if unknown:
        labels = ", ".join(revision_label(number, name) for number, name in unknown)
        raise TransferError(
            f"The {role} database is at upstream schema revision {labels}, unknown to this tool (it knows "
            f"{revision_label(*UPSTREAM_REVISIONS[0])} to {revision_label(*UPSTREAM_REVISIONS[-1])}, "
            f"{UPSTREAM_VERSION})"
        )
    missing = sorted(known - applied)
    if missing:
        labels = ", ".join(revision_label(number, name) for number, name in missing)
        raise TransferError(
            f"The {role} database lacks upstream schema revision {labels}: upgrade it with the upstream "
            f"server's own `parsec backend migrate` ({UPSTREAM_VERSION}) first"
        )


# ---------------------------------------------------------------------------------------------
# Our side


@attrs.frozen
class OurSchema:
    """What the import found in its target: whether it must create our schema first."""

    create: bool
    migrations: tuple[Migration, ...]


def check_our_schema(conn: Connection, role: str) -> OurSchema:
    """Our schema, exactly up to date; or, for the import's target, an empty database (the
    schema is then created in the transfer's transaction)."""
    migrations = tuple(list_migrations())
    kind = _schema_kind(conn)
    if kind == "empty":
        if role == "target":
            return OurSchema(create=True, migrations=migrations)
        raise TransferError(f"The {role} database is empty")
    if kind == "upstream":
        raise TransferError(
            f"The {role} database holds the upstream server's schema, not this server's"
            + (" (use `parsec backend import` to go the other way)" if role == "source" else "")
        )
    if kind == "other":
        raise TransferError(
            f"The {role} database holds tables of another program (no `migration` table of this server)"
        )
    applied = {int(number) for (number,) in _fetchall(conn, "SELECT id FROM migration")}  # type: ignore[call-overload]
    known = {migration.id for migration in migrations}
    unknown = sorted(applied - known)
    if unknown:
        raise TransferError(
            f"The {role} database schema is newer than this program (unknown migrations: "
            f"{', '.join(f'{number:04d}' for number in unknown)}): upgrade parsec-twisted"
        )
    missing = [migration.file_name for migration in migrations if migration.id not in applied]
    if missing:
        raise TransferError(
            f"The {role} database schema is not up to date (missing migrations: {', '.join(missing)}): "
            "run `parsec backend migrate` on it first"
        )
    return OurSchema(create=False, migrations=migrations)


def create_our_schema(conn: Connection, migrations: tuple[Migration, ...]) -> None:
    """Apply every migration in the current transaction, with its `migration` row (what
    `parsec backend migrate` does, one transaction per file, here all in the transfer's)."""
    with conn.cursor() as cur:
        for migration in migrations:
            cur.execute(migration.sql)
            cur.execute(
                "INSERT INTO migration (id, name, applied) VALUES (%s, %s, now())", (migration.id, migration.name)
            )


def our_tables(conn: Connection) -> list[str]:
    """Every table of our schema holding data (`migration` aside)."""
    return sorted(_tables(conn) - {"migration"})


# ---------------------------------------------------------------------------------------------
# Target preparation (both directions)


def lock_tables(conn: Connection, tables: list[str]) -> None:
    """Nobody else reads or writes these tables until the transfer's transaction ends (so the
    emptiness check still holds when the rows arrive); waits at most the session's
    lock_timeout for a server still using them."""
    with conn.cursor() as cur:
        cur.execute(f"LOCK TABLE {', '.join(quote_ident(table) for table in tables)} IN ACCESS EXCLUSIVE MODE")


def non_empty_tables(conn: Connection, tables: list[str]) -> list[str]:
    found = []
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {quote_ident(table)})")
            row = cur.fetchone()
            if row is not None and row[0]:
                found.append(table)
    return found


def clear_tables(conn: Connection, tables: list[str]) -> None:
    """Delete every row of `tables` (TRUNCATE: transactional, undone by a rollback)."""
    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(quote_ident(table) for table in tables)} RESTART IDENTITY")


@attrs.frozen
class ForeignKey:
    table: str
    name: str
    definition: str  # pg_get_constraintdef: `FOREIGN KEY (...) REFERENCES ...`


def drop_foreign_keys(conn: Connection, tables: list[str]) -> list[ForeignKey]:
    """Drop the foreign keys of `tables`; returns them, for `restore_foreign_keys`."""
    rows = _fetchall(
        conn,
        """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
        WHERE c.contype = 'f' AND t.relnamespace = current_schema()::regnamespace
          AND t.relname = ANY(%s)
        ORDER BY c.conrelid::regclass::text, c.conname
        """,
        (tables,),
    )
    keys = [ForeignKey(str(table), str(name), str(definition)) for table, name, definition in rows]
    with conn.cursor() as cur:
        for key in keys:
            cur.execute(f"ALTER TABLE {key.table} DROP CONSTRAINT {quote_ident(key.name)}")
    return keys


def restore_foreign_keys(conn: Connection, keys: list[ForeignKey]) -> None:
    """Add the keys back (each checks every row at once: a dangling reference fails here)."""
    with conn.cursor() as cur:
        for key in keys:
            try:
                cur.execute(f"ALTER TABLE {key.table} ADD CONSTRAINT {quote_ident(key.name)} {key.definition}")
            except psycopg2.Error as exc:
                raise TransferError(
                    f"table {key.table}: a row references nothing ({key.definition}): "
                    f"{_first_line(exc)}"
                ) from exc


def reset_serial_sequences(conn: Connection, tables: list[str]) -> None:
    """After rows were written with explicit `_id` values: make each table's serial sequence
    continue after its largest `_id` (the upstream server inserts with the sequence)."""
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, '_id'), coalesce(max(_id), 0) + 1, false)"
                f" FROM {quote_ident(table)}",
                (table,),
            )


def analyze(conn: Connection, tables: list[str]) -> None:
    """Fresh planner statistics for the loaded tables (ANALYZE runs inside a transaction)."""
    with conn.cursor() as cur:
        for table in tables:
            cur.execute(f"ANALYZE {quote_ident(table)}")


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(exc).__name__
