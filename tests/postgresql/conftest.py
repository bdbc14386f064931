"""Fixtures of the PostgreSQL tests (a throwaway cluster, see tests/pg_cluster.py).

* `pg_cluster` (session): one cluster for the whole run.
* `pg_dsn` (session): its database, migrated once. Tests share it, so they use their own
  identifiers (`unique_org` organization ids, random UUIDs, `unique_table` names).
* `pg_db` (function): a fresh empty database, for migration tests (creating one costs
  ~0.1-0.5 s).
* `own_cluster`: a second cluster for tests that stop, kill or restart it; it is running
  again after each test.
* `pool`: a started PostgreSQLPool (min 2, max 4) on `pg_dsn`, closed after the test.
* `captured_logs`: twisted.logger events emitted during the test.
* An autouse check that no database connection, reader or timer of ours outlives a test
  (pytest-twisted does not check for a dirty reactor by itself).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

from parsec.storage.postgresql.connection import TxConnection
from parsec.storage.postgresql.migrations import migrate_command
from parsec.storage.postgresql.pool import PostgreSQLPool
from tests.pg_cluster import PgCluster, start_cluster

_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/postgresql/" in item.nodeid:
            item.add_marker(pytest.mark.postgresql)


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("postgresql"))
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def pg_dsn(pg_cluster: PgCluster) -> str:
    lines: list[str] = []
    ok = pytest_twisted.blockon(defer.ensureDeferred(migrate_command(pg_cluster.dsn, False, lines.append)))
    assert ok, lines
    return pg_cluster.dsn


def _new_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


@pytest.fixture
def unique_org() -> str:
    return _new_name("Org")


@pytest.fixture
def unique_table() -> str:
    return _new_name("tbl")


@pytest.fixture
def pg_db(pg_cluster: PgCluster) -> Iterator[str]:
    name = _new_name("db")
    dsn = pg_cluster.create_database(name)
    yield dsn
    pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def _disposable_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("own-postgresql"))
    yield cluster
    cluster.destroy()


@pytest.fixture
def own_cluster(_disposable_cluster: PgCluster) -> Iterator[PgCluster]:
    """A second cluster that the test may stop, kill and restart (shared by such tests: it is
    running again before and after each of them; tests use their own tables/identifiers)."""
    _disposable_cluster.start()
    yield _disposable_cluster
    _disposable_cluster.start()


@pytest_twisted.async_yield_fixture
async def pool(pg_dsn: str) -> Any:
    pool = PostgreSQLPool(pg_dsn, min_connections=2, max_connections=4, max_connection_attempts=1)
    await pool.start()
    yield pool
    await pool.close()


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _ours(obj: Any) -> bool:
    return isinstance(obj, TxConnection)


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    before = set(reactor.getDelayedCalls())
    yield
    # Let callLater(0) work scheduled by the teardown run first.
    pytest_twisted.blockon(defer.ensureDeferred(_settle()))
    readers = [r for r in reactor.getReaders() + reactor.getWriters() if _ours(r)]
    timers = [c for c in reactor.getDelayedCalls() if c.active() and c not in before]
    assert not readers, f"database connections left open: {readers}"
    assert not timers, f"timers left behind: {timers}"


async def _settle() -> None:
    from twisted.internet import task

    for _ in range(3):
        await task.deferLater(reactor, 0, lambda: None)
