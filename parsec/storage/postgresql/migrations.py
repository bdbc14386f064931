"""Schema migrations: the packaged `migrations/NNNN_<name>.sql` files, applied in order.

`parsec backend migrate` runs `migrate_command`; the server only checks, at start-up, that the
schema is up to date (`check_schema_up_to_date`) and never migrates by itself.

* Applied migrations are rows of the `migration` table (id, name, applied), created by
  0001_initial.sql; no such table = empty database.
* Each file runs in its own transaction together with the insertion of its `migration` row,
  under a transaction-level advisory lock, so two concurrent runs cannot apply a file twice.
* A migration file must not contain transaction control (BEGIN/COMMIT) nor statements that
  refuse to run in a transaction (CREATE INDEX CONCURRENTLY, VACUUM).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources

import attrs
import psycopg2

from parsec.storage.postgresql.connection import DatabaseUnavailable, PgConnection, error_summary
from parsec.storage.postgresql.pool import PostgreSQLPool

__all__ = [
    "Migration",
    "SchemaError",
    "check_schema_up_to_date",
    "list_migrations",
    "migrate_command",
]

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
_LOCK_KEY = 0x70617273_6563  # "parsec": advisory lock of the migration runner


class SchemaError(Exception):
    """The database schema cannot serve this server version (message: one line)."""


@attrs.frozen
class Migration:
    id: int
    name: str
    file_name: str
    sql: str = attrs.field(repr=False)


def list_migrations() -> list[Migration]:
    """The packaged migrations, in order."""
    folder = resources.files("parsec.storage.postgresql").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(
            Migration(
                id=int(match.group(1)),
                name=match.group(2),
                file_name=entry.name,
                sql=entry.read_text(encoding="utf-8"),
            )
        )
    found.sort(key=lambda migration: migration.id)
    ids = [migration.id for migration in found]
    if len(set(ids)) != len(ids):
        raise SchemaError("two migration files share a number")
    return found


async def _applied(conn: PgConnection) -> dict[int, str]:
    """{id: name} of the applied migrations (empty for an empty database)."""
    row = await conn.fetchrow(
        "SELECT to_regclass('migration') IS NOT NULL,"
        " EXISTS (SELECT 1 FROM information_schema.columns"
        "  WHERE table_schema = current_schema() AND table_name = 'migration' AND column_name = 'id')"
    )
    assert row is not None
    table_exists, has_id = row
    if not table_exists:
        return {}
    if not has_id:
        raise SchemaError(
            "this database holds a schema made by another program (its `migration` table has no "
            "`id` column); use an empty database"
        )
    rows = await conn.fetch("SELECT id, name FROM migration ORDER BY id")
    return {int(migration_id): str(name) for migration_id, name in rows}


async def migrate_command(db_url: str, dry_run: bool, out: Callable[[str], None]) -> bool:
    """Apply the missing migrations (or, with `dry_run`, list them); one line per file on `out`:
    `<file> (already applied)`, `<file> (dry run)`, `<file> ✔` or `<file> ✘: <error>`.
    Stops at the first failure. Returns True on success. Raises DatabaseUnavailable if the
    database cannot be reached, SchemaError if it holds a foreign schema."""
    pool = PostgreSQLPool(
        db_url, min_connections=1, max_connections=1, max_connection_attempts=1, application_name="parsec-migrate"
    )
    await pool.start()
    try:
        async with pool.connection() as conn:
            return await _migrate(conn, dry_run, out)
    finally:
        await pool.close()


async def _migrate(conn: PgConnection, dry_run: bool, out: Callable[[str], None]) -> bool:
    migrations = list_migrations()
    applied = await _applied(conn)
    for migration in migrations:
        if migration.id in applied:
            out(f"{migration.file_name} (already applied)")
            continue
        if dry_run:
            out(f"{migration.file_name} (dry run)")
            continue
        try:
            done = await _apply(conn, migration)
        except DatabaseUnavailable:
            raise
        except (psycopg2.Error, SchemaError) as exc:
            out(f"{migration.file_name} ✘: {error_summary(exc)}")
            return False
        out(f"{migration.file_name} {'✔' if done else '(already applied)'}")
    return True


async def _apply(conn: PgConnection, migration: Migration) -> bool:
    """Apply one migration in its own transaction; False if a concurrent run applied it."""
    await conn.execute("BEGIN; SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    try:
        if migration.id in await _applied(conn):
            await conn.execute("ROLLBACK")
            return False
        await conn.execute(migration.sql)  # no parameters: `%` in the file is left alone
        await conn.execute(
            "INSERT INTO migration (id, name, applied) VALUES (%s, %s, now()); COMMIT",
            (migration.id, migration.name),
        )
    except BaseException:
        if not conn.broken:
            await conn.execute("ROLLBACK")
        raise
    return True


async def check_schema_up_to_date(pool: PostgreSQLPool) -> None:
    """Raise SchemaError (one line, telling what to do) unless every packaged migration, and
    nothing else, has been applied (start-up check, two round trips)."""
    migrations = list_migrations()
    async with pool.connection() as conn:
        try:
            applied = await _applied(conn)
        except SchemaError as exc:
            raise SchemaError(f"Database schema not usable: {exc}") from None
    known = {migration.id for migration in migrations}
    missing = [migration.file_name for migration in migrations if migration.id not in applied]
    unknown = sorted(f"{migration_id:04d}_{name}" for migration_id, name in applied.items() if migration_id not in known)
    if unknown:
        raise SchemaError(
            f"Database schema is newer than this server (unknown migrations: {', '.join(unknown)}): "
            "upgrade the server"
        )
    if missing:
        raise SchemaError(
            f"Database schema is not up to date (missing migrations: {', '.join(missing)}): "
            "run `parsec backend migrate` first"
        )
