"""Fixtures of the import/export tests: on the run's cluster (tests/conftest.py), upstream
databases built by the upstream server's own `parsec backend migrate` (parsec-cloud 2.10.0 from
the client virtualenv, tests/interop/install-client-venv.sh), databases of our schema.

* `transfer_cluster` (session): the run's cluster, with a template database migrated by the
  upstream server beside ours (tests/support.py TEMPLATE_DATABASE).
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
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest

from tests.interop.harness import ENV_REQUIRED, client_base_env, find_client_venv, truthy
from tests.pg_cluster import PgCluster
from tests.support import TEMPLATE_DATABASE
from tests.transfer.upstream_data import Scale, populate_upstream

_UPSTREAM_TEMPLATE = "transfer_upstream_template"
_POPULATED_TEMPLATE = "transfer_upstream_populated"
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
def transfer_cluster(pg_cluster: PgCluster, client_venv_path: Path) -> PgCluster:
    """The run's cluster, with the upstream template added (once)."""
    upstream_migrate(client_venv_path, pg_cluster.create_database(_UPSTREAM_TEMPLATE))
    return pg_cluster


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
    templates = {"upstream": _UPSTREAM_TEMPLATE, "ours": TEMPLATE_DATABASE, "empty": None}

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
