"""What every test sub-suite shares: ports, the PostgreSQL test databases, a counting pool.

The fixtures that use these live in tests/conftest.py (one PostgreSQL cluster for the whole
run, with one migrated template database; the reactor-clean check of every test).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from typing import Any

import attrs
import pytest_twisted
from twisted.internet import defer

from parsec.config import BackendAddr, BackendConfig
from parsec.limits import DEFAULT as DEFAULT_LIMITS
from parsec.storage.postgresql.binary import PqConnection
from parsec.storage.postgresql.connection import PgConnection, PreparedStatement
from parsec.storage.postgresql.migrations import migrate_command
from parsec.storage.postgresql.pool import PostgreSQLPool
from tests.pg_cluster import PgCluster, free_port

__all__ = [
    "SHARED_DATABASE",
    "TEMPLATE_DATABASE",
    "CountingPool",
    "DatabaseSupply",
    "free_port",
    "limited_config",
    "migrate_template",
    "new_name",
    "statement_count",
]

# The database `parsec backend migrate` brought up to date once per run; every test database
# that needs our schema is a copy of it (CREATE DATABASE ... TEMPLATE: a file copy).
TEMPLATE_DATABASE = "parsec_template"
# The migrated database shared by the storage-level tests of the run (they use their own
# identifiers: unique organization ids, random UUIDs, unique table names).
SHARED_DATABASE = "parsec_shared"

_names = itertools.count(1)


def new_name(prefix: str) -> str:
    """A database/organization/table name unique in this run (and process)."""
    return f"{prefix}_{os.getpid()}_{next(_names)}"


# ---- PostgreSQL ---------------------------------------------------------------------------------


def limited_config(**limits: Any) -> BackendConfig:
    """The tests' server configuration with some of `parsec.limits` changed."""
    return BackendConfig(
        backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False), limits=attrs.evolve(DEFAULT_LIMITS, **limits)
    )


def migrate_template(cluster: PgCluster) -> None:
    """Create TEMPLATE_DATABASE with our schema (the migrations, as `parsec backend migrate`)."""
    lines: list[str] = []
    dsn = cluster.create_database(TEMPLATE_DATABASE)
    migrated = pytest_twisted.blockon(defer.ensureDeferred(migrate_command(dsn, False, lines.append)))
    assert migrated, lines


class DatabaseSupply:
    """Fresh copies of the migrated template, made ahead of need by a worker thread, so that a
    test never waits for `CREATE DATABASE`; dropped after use by the same thread.

    Tests may stop, kill and restart the cluster: each job opens its own connection and is
    retried until the cluster is back (bounded).
    """

    AHEAD = 2
    RETRY_FOR = 60.0  # seconds

    def __init__(self, cluster: PgCluster) -> None:
        self.cluster = cluster
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="pg-database-supply", daemon=True)
        self._thread.start()
        for _ in range(self.AHEAD):
            self._jobs.put(("create", ""))

    def _run(self, sql: str) -> None:
        import psycopg2

        deadline = time.monotonic() + self.RETRY_FOR
        while True:
            try:
                conn = psycopg2.connect(self.cluster.dsn_for("postgres"), connect_timeout=10)
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # the cluster is restarting
                continue
            try:
                conn.autocommit = True
                with conn.cursor() as cursor:
                    cursor.execute(sql)
                return
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            finally:
                conn.close()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            action, name = job
            try:
                if action == "create":
                    name = new_name("test")
                    self._run(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DATABASE}" STRATEGY FILE_COPY')
                    self._ready.put(name)
                else:
                    self._run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                if action == "create":
                    self._ready.put(exc)

    def take(self) -> str:
        """A fresh migrated database (its name); `give_back` it after the test."""
        self._jobs.put(("create", ""))
        item = self._ready.get(timeout=self.RETRY_FOR + 30)
        if isinstance(item, BaseException):
            raise item
        return item

    def give_back(self, name: str) -> None:
        self._jobs.put(("drop", name))

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)


class CountingPool(PostgreSQLPool):
    """Records the SQL text of every round trip (each `_send`) of its connections, PREPAREs
    (sent once per connection and statement) included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    async def acquire(self, *, nested_ok: bool = False) -> PgConnection:
        conn = await super().acquire(nested_ok=nested_ok)
        if not getattr(conn, "_counted", False):
            if isinstance(conn, PqConnection):
                # Every round trip of these goes through `_round_trip`, named by its text,
                # except a statement's preparation, recorded as its PREPARE form.
                trip, prepare = conn._round_trip, conn._ensure_prepared

                async def counting_trip(text: str, start: Any = None) -> Any:
                    self.sent.append(text)
                    return await trip(text, start)

                async def counting_prepare(query: Any) -> None:
                    if isinstance(query, PreparedStatement) and query.name not in conn._prepared:
                        self.sent.append(query.prepare_sql)
                    await prepare(query)

                conn._round_trip = counting_trip  # type: ignore[method-assign]
                conn._ensure_prepared = counting_prepare  # type: ignore[method-assign]
            else:
                send = conn._send

                async def counting_send(sql: str, params: Any, **options: Any) -> Any:
                    self.sent.append(sql)
                    return await send(sql, params, **options)

                conn._send = counting_send  # type: ignore[method-assign]
            conn._counted = True  # type: ignore[attr-defined]
        return conn

    async def trips(self, coro: Any) -> tuple[int, Any]:
        """(round trips made by `coro`, its result or the exception it raised)."""
        before = len(self.sent)
        try:
            result: Any = await coro
        except Exception as exc:
            result = exc
        return len(self.sent) - before, result


def statement_count(sql: str) -> int:
    """Top-level statements of one round trip (our SQL has no ';' inside literals/comments)."""
    return sql.strip().rstrip(";").count(";") + 1
