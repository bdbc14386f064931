"""Fixtures of the PostgreSQL tests. The cluster and its databases are the run's (tests/conftest.py:
`pg_dsn` shared and migrated, `empty_pg_dsn`, `restartable_pg_cluster`, the reactor-clean check).

* `unique_org`, `unique_table`: identifiers of the test's own in the shared database.
* `pool`: a started PostgreSQLPool (min 2, max 4) on `pg_dsn`, closed after the test.
* `captured_logs`: twisted.logger events emitted during the test.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from parsec.storage.postgresql.pool import PostgreSQLPool
from tests.support import new_name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/postgresql/" in item.nodeid:
            item.add_marker(pytest.mark.postgresql)


@pytest.fixture
def unique_org() -> str:
    return new_name("Org")


@pytest.fixture
def unique_table() -> str:
    return new_name("tbl")


@pytest_twisted.async_yield_fixture
async def pool(pg_dsn: str) -> Any:
    pool = PostgreSQLPool(pg_dsn, min_connections=2, max_connections=4, max_connection_attempts=1)
    await pool.start()
    yield pool
    await pool.close()


