"""Fixtures of the import/export tests: one throwaway cluster, upstream databases built by the
upstream server's own `parsec backend migrate` (parsec-cloud 2.10.0 from the client
virtualenv, tests/interop/install-client-venv.sh), empty databases for our side.

* `transfer_cluster` (session): the cluster (tests/pg_cluster.py), with one template database
  migrated by the upstream server and one by ours.
* `new_db(kind)`: a new database: "upstream" (upstream schema, no rows), "ours" (our schema, no
  rows) or "empty" (nothing at all); dropped after the test.
* `populated_upstream` (session): the name of a template database filled by
  tests/transfer/upstream_data.py (blocks in `block_data`, as the upstream POSTGRESQL
  blockstore leaves them); tests copy it with `new_db("populated")`, never write it.

Without the client virtualenv the tests are skipped, unless PARSEC_INTEROP_REQUIRED is set
(CI), which makes that an error.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import fast_directory
from tests.interop.harness import ENV_REQUIRED, client_base_env, find_client_venv, truthy
from tests.pg_cluster import PgCluster, start_cluster
from tests.transfer.upstream_data import Scale, populate_upstream

_UPSTREAM_TEMPLATE = "transfer_upstream_template"
_POPULATED_TEMPLATE = "transfer_upstream_populated"
_OURS_TEMPLATE = "transfer_ours_template"
_names = itertools.count(1)

NewDb = Callable[[str], str]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/transfer/" in item.nodeid:
            item.add_marker(pytest.mark.postgresql)


def upstream_migrate(client_venv: Path, dsn: str) -> None:
    """The upstream server's own `parsec backend migrate` (2.10.0, from the client venv)."""
    result = subprocess.run(
        [str(client_venv / "bin" / "parsec"), "backend", "migrate", "--db", dsn],
        capture_output=True, text=True, timeout=120, env=client_base_env(), stdin=subprocess.DEVNULL, cwd="/",
    )
    assert result.returncode == 0, f"upstream migrate failed\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def our_migrate(dsn: str) -> None:
    """Our own `parsec backend migrate` (the console script of the test venv)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "parsec"), "backend", "migrate", "--db", dsn],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"migrate failed\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="session")
def client_venv_path() -> Path:
    venv = find_client_venv()
    if venv is None:
        message = "parsec-cloud 2.10.0 venv not found (tests/interop/install-client-venv.sh): no upstream schema"
        if truthy(os.environ.get(ENV_REQUIRED)):
            pytest.fail(f"{message}; {ENV_REQUIRED} is set", pytrace=False)
        pytest.skip(message)
    return venv


@pytest.fixture(scope="session")
def transfer_cluster(tmp_path_factory: pytest.TempPathFactory, client_venv_path: Path) -> Iterator[PgCluster]:
    base = fast_directory(tmp_path_factory, "transfer-postgresql")
    cluster = start_cluster(base)
    try:
        upstream_migrate(client_venv_path, cluster.create_database(_UPSTREAM_TEMPLATE))
        our_migrate(cluster.create_database(_OURS_TEMPLATE))
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def populated_upstream(transfer_cluster: PgCluster) -> dict[str, int]:
    """Row counts of the populated upstream template (see module doc)."""
    dsn = transfer_cluster.create_database(_POPULATED_TEMPLATE, template=_UPSTREAM_TEMPLATE)
    conn = psycopg2.connect(dsn)
    try:
        return populate_upstream(conn, Scale(), block_data=True)
    finally:
        conn.close()


@pytest.fixture
def new_db(transfer_cluster: PgCluster, request: pytest.FixtureRequest) -> Iterator[NewDb]:
    created: list[str] = []
    templates = {"upstream": _UPSTREAM_TEMPLATE, "ours": _OURS_TEMPLATE, "empty": None}

    def make(kind: str) -> str:
        if kind == "populated":
            request.getfixturevalue("populated_upstream")
            template: str | None = _POPULATED_TEMPLATE
        else:
            template = templates[kind]
        name = f"transfer_{kind}_{os.getpid()}_{next(_names)}"
        created.append(name)
        return transfer_cluster.create_database(name, template=template)

    yield make
    for name in created:
        transfer_cluster.drop_database(name)
