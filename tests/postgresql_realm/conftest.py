"""PostgreSQL-only tests of the realm, vlob, block and message storages: round trips and
concurrency (what every storage must do is tests/storage_contract/, whose `World` and
`make_world` these tests use).

* `pg_backend`: the PostgreSQL storage (tests/storage_contract/conftest.py `Backend`) on a
  `CountingPool` of 24 connections over the run's shared migrated database; `pg_world`: a
  fresh organization on it.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from tests.storage_contract.conftest import (
    Backend,
    World,
    make_world,
    new_pool,
    running_postgresql_backend,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/postgresql_realm/" in item.nodeid:
            item.add_marker(pytest.mark.postgresql)


@pytest_twisted.async_yield_fixture
async def pg_backend(pg_dsn: str) -> Any:
    """PostgreSQL, with a pool big enough for the concurrency tests."""
    async with running_postgresql_backend(new_pool(pg_dsn, max_connections=24)) as backend:
        yield backend


@pytest_twisted.async_fixture
async def pg_world(pg_backend: Backend) -> World:
    return await make_world(pg_backend)
