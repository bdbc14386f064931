"""Fixtures for the real-client interoperability tests (marker `client`).

Server under test (see harness.py for every variable):
* default: OUR server, `<venv of sys.executable>/bin/twistd -n --pidfile= parsec --dev --port P
  --host 127.0.0.1`;
* PARSEC_INTEROP_SERVER=reference: the reference server of the client venv,
  `parsec backend run --dev --port P --host 127.0.0.1` (plus JSON request logs);
* PARSEC_INTEROP_SERVER_ARGS="--db postgresql://... --blockstore ...": appended to either
  command line; environment variables (PARSEC_DB, ...) are inherited by the server process.

One server process is shared by the tests of a session (each test uses its own
organizations); it is restarted if it died, and PARSEC_INTEROP_ISOLATE=1 gives every test a
fresh one. Tests that need a differently configured server use `server_factory`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    ENV_ISOLATE,
    ENV_REQUIRED,
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

_wire_report: dict[str, Any] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # Lets fixtures know at teardown whether the test body failed (to print server logs).
    setattr(item, f"_interop_rep_{report.when}", report)
    return report


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


# ----------------------------------------------------------------------------- servers
class _ServerPool:
    """The session's shared server, restarted when it has died."""

    def __init__(self, root: Path, client_venv: Path) -> None:
        self.root = root
        self.client_venv = client_venv
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
            extra_args=[*self.extra_args, *extra_args],
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
def _server_pool(tmp_path_factory: pytest.TempPathFactory, client_venv: Path) -> Iterator[_ServerPool]:
    pool = _ServerPool(tmp_path_factory.mktemp("interop-servers"), client_venv)
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
