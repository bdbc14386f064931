"""Fixtures for the real-client interoperability tests (marker `client`).

Server under test (see harness.py for every variable):
* default: OUR server, `<venv of sys.executable>/bin/twistd -n --pidfile= parsec --dev --port P
  --host 127.0.0.1`;
* PARSEC_INTEROP_SERVER=reference: the reference server of the client venv,
  `parsec backend run --dev --port P --host 127.0.0.1` (plus JSON request logs);
* PARSEC_INTEROP_SERVER_ARGS="--db postgresql://... --blockstore ...": appended to either
  command line; environment variables (PARSEC_DB, ...) are inherited by the server process.

Storage variants (variants.py): every test using a server runs once per variant it allows,
with ids like `test_x[pg-s3]`: `memory` (plain `--dev`), `pg` (fresh migrated PostgreSQL
database, POSTGRESQL blockstore), `pg-s3`, `pg-swift`, `pg-raid5` (PostgreSQL + blocks in the
session's loopback Swift/S3). Tests allow `memory` and `pg` unless marked
`@pytest.mark.interop_variants(...)`; PARSEC_INTEROP_VARIANTS=memory,pg-s3 (or `all`) narrows
the run. The variant is a session-scoped parameter, so pytest runs the tests variant by
variant: one PostgreSQL cluster and one object store serve the whole session, started only
if a selected variant needs them. With PARSEC_INTEROP_SERVER_ARGS set (and no
PARSEC_INTEROP_VARIANTS) every test runs once, as `[custom]`, on exactly those options.
PostgreSQL variants carry the `postgresql` marker, object-store ones `objectstore` too.

One server process is shared by the tests of a session and variant (each test uses its own
organizations); it is restarted if it died, and PARSEC_INTEROP_ISOLATE=1 gives every test a
fresh one. Tests that need a differently configured server use `server_factory`. Every
server of a PostgreSQL variant gets its own fresh database.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.objectstore import ObjectStore, shared_objectstore
from tests.pg_cluster import PgCluster

from .harness import (
    ENV_ISOLATE,
    ENV_REQUIRED,
    ENV_VARIANTS,
    ENV_WIRE_LOG,
    ENV_WIRE_REPORT,
    ClientHome,
    HarnessError,
    ProcessRegistry,
    ServerProcess,
    find_client_venv,
    server_args_from_env,
    server_kind_from_env,
    truthy,
)
from .variants import (
    CUSTOM,
    DEFAULT_VARIANTS,
    MEMORY,
    PgDatabases,
    ServerVariant,
    make_variant,
    selected_variants,
    variant_marks,
)

_wire_report: dict[str, Any] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Lets fixtures know at teardown whether the test body failed (to print server logs).
    setattr(item, f"_interop_rep_{report.when}", report)
    return report


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interop_variants(*names): server storage variants a real-client test runs on "
        f"(default: {', '.join(DEFAULT_VARIANTS)})",
    )
    try:
        selected_variants(os.environ.get(ENV_VARIANTS), bool(server_args_from_env()))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize every test that uses a server (through `interop_variant`) by variant."""
    if "interop_variant" not in metafunc.fixturenames:
        return
    selected = selected_variants(os.environ.get(ENV_VARIANTS), bool(server_args_from_env()))
    marker = metafunc.definition.get_closest_marker("interop_variants")
    allowed = marker.args if marker is not None else DEFAULT_VARIANTS
    names = [name for name in selected if name == CUSTOM or name in allowed]
    metafunc.parametrize(
        "interop_variant",
        [
            pytest.param(name, id=name, marks=[getattr(pytest.mark, mark) for mark in variant_marks(name)])
            for name in names
        ],
        indirect=True,
        # Session scope: pytest groups the tests by variant and tears a variant's servers
        # down before the next variant starts.
        scope="session",
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get(ENV_WIRE_REPORT)
    if path and _wire_report:
        Path(path).write_text(json.dumps(_wire_report, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- client venv
@pytest.fixture(scope="session")
def client_venv() -> Path:
    venv = find_client_venv()
    if venv is None:
        message = (
            "parsec-cloud 2.10.0 client venv not found (set PARSEC_CLIENT_VENV or run "
            "tests/interop/install-client-venv.sh)"
        )
        if truthy(os.environ.get(ENV_REQUIRED)):
            pytest.fail(f"{message}; {ENV_REQUIRED} is set, so this is an error", pytrace=False)
        pytest.skip(message)
    return venv


# ----------------------------------------------------------------------------- storages
@pytest.fixture(scope="session")
def objectstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """The session's loopback Swift + S3 (tests/objectstore.py), shared with tests/blockstore."""
    with shared_objectstore(tmp_path_factory) as store:
        yield store


@pytest.fixture(scope="session")
def interop_pg(pg_cluster: PgCluster) -> PgDatabases:
    """The run's PostgreSQL cluster, a fresh migrated database per server."""
    return PgDatabases(pg_cluster, find_client_venv())


@pytest.fixture(scope="session")
def interop_variant(request: pytest.FixtureRequest) -> ServerVariant:
    """The storage variant of the servers of this test (parametrized, see module doc)."""
    default = CUSTOM if server_args_from_env() else MEMORY
    name = str(getattr(request, "param", default))
    return make_variant(
        name,
        pg=lambda: request.getfixturevalue("interop_pg"),
        objectstore=lambda: request.getfixturevalue("objectstore"),
    )


# ----------------------------------------------------------------------------- servers
class _ServerPool:
    """The shared server of a session and variant, restarted when it has died."""

    def __init__(self, root: Path, client_venv: Path, variant: ServerVariant) -> None:
        self.root = root
        self.client_venv = client_venv
        self.variant = variant
        self.kind = server_kind_from_env()
        self.extra_args = server_args_from_env()
        self.current: ServerProcess | None = None
        self.count = 0

    def new_server(
        self, extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None
    ) -> ServerProcess:
        self.count += 1
        server = ServerProcess(
            self.kind,
            self.root / f"server-{self.count}",
            self.client_venv,
            # storage options of the variant first: PARSEC_INTEROP_SERVER_ARGS and the test's
            # own options come after them (and win, for single-valued options)
            extra_args=[*self.variant.server_args(self.kind), *self.extra_args, *extra_args],
            extra_env=extra_env,
            wire_log=True if truthy(os.environ.get(ENV_WIRE_LOG)) else None,
        )
        server.start()
        return server

    def shared(self) -> ServerProcess:
        if self.current is None or not self.current.alive():
            self.current = self.new_server()
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def _server_pool(
    tmp_path_factory: pytest.TempPathFactory, client_venv: Path, interop_variant: ServerVariant
) -> Iterator[_ServerPool]:
    pool = _ServerPool(
        tmp_path_factory.mktemp(f"interop-servers-{interop_variant.name}"), client_venv, interop_variant
    )
    try:
        yield pool
    finally:
        pool.close()


def _check_server_after_test(request: pytest.FixtureRequest, server: ServerProcess, offset: int) -> None:
    summary = server.wire_summary_since(offset)
    if server.wire_log:
        _wire_report[request.node.nodeid] = summary.as_dict()
    failed = getattr(request.node, "_interop_rep_call", None)
    if failed is not None and failed.failed:
        print(f"--- {server.describe()} output (tail) ---\n{server.output_tail()}")
    if not server.alive():
        pytest.fail(
            f"{server.describe()} died during the test (exit {server.proc.returncode if server.proc else None})\n"
            f"{server.output_tail()}",
            pytrace=False,
        )


@pytest.fixture
def parsec_server(request: pytest.FixtureRequest, _server_pool: _ServerPool) -> Iterator[ServerProcess]:
    """A running server (shared by the session unless PARSEC_INTEROP_ISOLATE is set)."""
    isolate = truthy(os.environ.get(ENV_ISOLATE))
    server = _server_pool.new_server() if isolate else _server_pool.shared()
    offset = server.wire_log_offset()
    try:
        yield server
        _check_server_after_test(request, server, offset)
    finally:
        if isolate:
            server.stop()


@pytest.fixture
def server_factory(
    request: pytest.FixtureRequest, _server_pool: _ServerPool
) -> Iterator[Callable[..., ServerProcess]]:
    """Start a dedicated server with extra command-line args / environment variables;
    stopped at teardown. `server_factory(extra_args=[...], extra_env={...})`."""
    started: list[ServerProcess] = []

    def start(extra_args: Sequence[str] = (), extra_env: Mapping[str, str] | None = None) -> ServerProcess:
        server = _server_pool.new_server(extra_args, extra_env)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


# ----------------------------------------------------------------------------- clients
@pytest.fixture
def client_processes() -> Iterator[ProcessRegistry]:
    registry = ProcessRegistry()
    yield registry
    leftovers = registry.stop_all()
    if leftovers:
        # Not an error by itself (a failing test may leave its peer waiting), but visible.
        print("stopped leftover client processes:\n" + "\n".join(leftovers))


@pytest.fixture
def client_factory(
    tmp_path: Path, client_venv: Path, client_processes: ProcessRegistry
) -> Callable[[str], ClientHome]:
    """`client_factory("alice")` -> a ClientHome with its own HOME/XDG dirs under tmp_path."""

    def make(name: str) -> ClientHome:
        root = tmp_path / name
        if root.exists():
            raise HarnessError(f"client home {name!r} already exists in this test")
        root.mkdir(parents=True)
        return ClientHome(root, client_venv, client_processes)

    return make


@pytest.fixture
def client(client_factory: Callable[[str], ClientHome]) -> ClientHome:
    """The default client machine of a test."""
    return client_factory("client")


@pytest.fixture
def org_id(request: pytest.FixtureRequest) -> str:
    """An organization id unique to this test (OrganizationID: <= 32 chars of [\\w-])."""
    return f"T{uuid.uuid4().hex[:20]}"
