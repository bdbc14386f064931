"""One transfer, start to end: checks, load, verification, commit (or nothing at all).

Source: one REPEATABLE READ, READ ONLY transaction (a consistent snapshot for every table
and for the verification; PostgreSQL itself refuses any write). Target: one transaction;
nothing is visible to anyone until the final COMMIT, and any failure, refusal or verification
difference rolls everything back, the schema creation of an empty import target included.

Steps on the target, in that transaction:
1. schema check (and, for an import into an empty database, our schema's creation);
2. every target table locked (ACCESS EXCLUSIVE: a server still using the target makes the
   transfer wait at most `LOCK_TIMEOUT`, then fail), then the emptiness check (`overwrite`:
   TRUNCATE instead);
3. foreign keys dropped;
4. the tables, one by one, with a progress display;
5. foreign keys added back (checking every reference), serial sequences moved past the
   copied `_id`s (export), statistics (ANALYZE);
6. verification against the source; COMMIT only if every check agrees.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

import attrs
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from parsec.storage.postgresql.pool import describe_dsn
from parsec.transfer import schema
from parsec.transfer.exporter import EXPORT_PLANS, SERIAL_TABLES
from parsec.transfer.importer import IMPORT_PLANS
from parsec.transfer.pgcopy import TransferError, batch_table, connect, pipe_table
from parsec.transfer.plans import TablePlan
from parsec.transfer.progress import Progress
from parsec.transfer.verify import CHECKS, Check, CheckResult, header_line, name_width, result_line, verify

LOCK_TIMEOUT = "10s"

Connection = psycopg2.extensions.connection


@attrs.frozen
class TableStats:
    table: str
    rows: int
    seconds: float


@attrs.frozen
class TransferResult:
    ok: bool
    tables: tuple[TableStats, ...]
    checks: tuple[CheckResult, ...]
    copy_seconds: float  # the tables' copy alone
    total_seconds: float  # connection to commit

    @property
    def rows(self) -> int:
        return sum(stats.rows for stats in self.tables)


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(exc).__name__


def _count(conn: Connection, sql: str) -> int:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    return int(row[0]) if row is not None else 0


def _connect(dsn: str, side: str, application_name: str) -> Connection:
    try:
        return connect(dsn, application_name)
    except psycopg2.Error as exc:
        raise TransferError(f"cannot connect to the {side} database {describe_dsn(dsn)}: {_first_line(exc)}") from None


def _copy(source: Connection, target: Connection, plan: TablePlan, progress: Progress) -> TableStats:
    progress.start(plan.table, _count(source, plan.count))
    try:
        if plan.transform is None:
            rows = pipe_table(source, target, plan.select, plan.table, plan.columns, progress.update)
        else:
            rows = batch_table(source, target, plan.select, plan.table, plan.columns, plan.transform, progress.update)
    except psycopg2.Error as exc:
        progress.line("")
        raise TransferError(f"table {plan.table}: {_first_line(exc)}") from exc
    except TransferError:
        progress.line("")
        raise
    return TableStats(plan.table, rows, progress.finish(rows))


def _transfer(
    *,
    direction: str,
    source_dsn: str,
    target_dsn: str,
    overwrite: bool,
    out: TextIO,
    tty: bool | None,
    plans: Sequence[TablePlan],
    checks: Sequence[Check],
    lock_timeout: str,
) -> TransferResult:
    started = time.monotonic()
    progress = Progress(out, tty)
    importing = direction == "import"
    progress.line(
        f"{'Importing' if importing else 'Exporting'} from {describe_dsn(source_dsn)} "
        f"({'upstream' if importing else 'parsec-twisted'} schema) into {describe_dsn(target_dsn)} "
        f"({'parsec-twisted' if importing else 'upstream'} schema)"
    )
    source = _connect(source_dsn, "source", f"parsec-{direction}-source")
    try:
        target = _connect(target_dsn, "target", f"parsec-{direction}-target")
    except BaseException:
        source.close()
        raise
    try:
        source.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        with target.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, false)", (lock_timeout,))
        target.commit()

        # 1. schemas
        if importing:
            schema.check_upstream_schema(source, "source")
            ours = schema.check_our_schema(target, "target")
            if ours.create:
                progress.line("The target database is empty: creating this server's schema")
                schema.create_our_schema(target, ours.migrations)
            tables = schema.our_tables(target)
        else:
            schema.check_our_schema(source, "source")
            schema.check_upstream_schema(target, "target")
            tables = list(schema.UPSTREAM_TABLES)
        planned = [plan.table for plan in plans]
        unknown = sorted(set(tables) - set(planned))
        if unknown:
            raise TransferError(f"the target schema has tables this tool does not fill: {', '.join(unknown)}")
        missing = sorted(set(planned) - set(tables))
        if missing:
            raise TransferError(f"the target schema lacks tables: {', '.join(missing)}")

        # 2. emptiness (under lock: no server may write meanwhile)
        schema.lock_tables(target, tables)
        filled = schema.non_empty_tables(target, tables)
        if filled:
            if not overwrite:
                raise TransferError(
                    f"The target database is not empty (rows in {', '.join(filled)}): give --overwrite to "
                    "replace its content"
                )
            progress.line(f"--overwrite: deleting the target's rows ({', '.join(filled)})")
            schema.clear_tables(target, tables)

        # 3. - 5. load
        keys = schema.drop_foreign_keys(target, tables)
        copy_started = time.monotonic()
        stats = tuple(_copy(source, target, plan, progress) for plan in plans)
        copy_seconds = time.monotonic() - copy_started
        progress.line("Checking references between rows")
        schema.restore_foreign_keys(target, keys)
        if not importing:
            schema.reset_serial_sequences(target, list(SERIAL_TABLES))
        schema.analyze(target, tables)

        # 6. verification
        progress.line("Verifying (row counts and checksums, on both sides):")
        width = name_width(checks)
        progress.line(header_line(width))
        results = tuple(
            verify(source, target, source_is_upstream=importing, checks=checks,
                   on_check=lambda result: progress.line(result_line(result, width)))
        )
        ok = all(result.ok for result in results)
        rows = sum(item.rows for item in stats)
        if not ok:
            target.rollback()
            progress.line(
                f"Verification FAILED: the {direction} is cancelled, the target database is left as it was"
            )
        else:
            target.commit()
            rate = rows / copy_seconds if copy_seconds > 0 else 0.0
            progress.line(
                f"{'Import' if importing else 'Export'} done: {rows:,} rows in {copy_seconds:.1f} s "
                f"({rate:,.0f} rows/s), verified, committed"
            )
        return TransferResult(ok, stats, results, copy_seconds, time.monotonic() - started)
    except psycopg2.errors.LockNotAvailable:
        raise TransferError(
            f"The target database's tables stayed in use for {lock_timeout}: stop the server using it first"
        ) from None
    except psycopg2.Error as exc:
        raise TransferError(_first_line(exc)) from exc
    finally:
        # Closing without COMMIT rolls back whatever is left (the source only ever read).
        target.close()
        source.close()


def run_import(
    from_dsn: str,
    db_dsn: str,
    *,
    overwrite: bool = False,
    out: TextIO,
    tty: bool | None = None,
    plans: Sequence[TablePlan] = IMPORT_PLANS,
    checks: Sequence[Check] = CHECKS,
    lock_timeout: str = LOCK_TIMEOUT,
) -> TransferResult:
    """Upstream database `from_dsn` -> our database `db_dsn`. Raises TransferError."""
    return _transfer(
        direction="import", source_dsn=from_dsn, target_dsn=db_dsn, overwrite=overwrite, out=out, tty=tty,
        plans=plans, checks=checks, lock_timeout=lock_timeout,
    )


def run_export(
    db_dsn: str,
    to_dsn: str,
    *,
    overwrite: bool = False,
    out: TextIO,
    tty: bool | None = None,
    plans: Sequence[TablePlan] = EXPORT_PLANS,
    checks: Sequence[Check] = CHECKS,
    lock_timeout: str = LOCK_TIMEOUT,
) -> TransferResult:
    """Our database `db_dsn` -> upstream database `to_dsn`. Raises TransferError."""
    return _transfer(
        direction="export", source_dsn=db_dsn, target_dsn=to_dsn, overwrite=overwrite, out=out, tty=tty,
        plans=plans, checks=checks, lock_timeout=lock_timeout,
    )

