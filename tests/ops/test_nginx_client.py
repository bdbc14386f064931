"""The real client through Debian's nginx (etc/nginx/parsec.conf) in front of two instances.

Two `twistd parsec` processes share one throwaway PostgreSQL (database and blockstore); nginx
terminates TLS (a certificate made by openssl) on two ports, each in front of one instance with
the other as `backup` (so that which instance serves which client is known): alice uses port
A (instance 1), bob port B (instance 2). tests/interop/scripts/proxy_scenario.py drives both
real parsec-cloud 2.10.0 clients:

* alice's changes (a share, file writes) reach bob's core as events across instances, and bob
  reads the files; the access logs show alice on instance 1 and bob on instance 2;
* SIGTERM to instance 1: it exits at once, cleanly; alice's core reconnects by itself through
  nginx to instance 2, writes again, bob is notified, and the other way round; bob's core
  never notices anything;
* nginx's error log holds nothing but its report of the stopped instance refusing the first
  reconnection (`connect() failed (111: Connection refused) while connecting to upstream`,
  once per fail_timeout of etc/nginx/parsec.conf): no reset, nothing about the websockets the
  stop closed; neither instance logs a warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.interop.harness import (
    ENV_REQUIRED,
    SCRIPTS_DIR,
    ClientHome,
    ProcessRegistry,
    find_client_venv,
    popen,
    truthy,
)
from tests.ops.conftest import free_port
from tests.ops.nginx import Nginx, make_tls_files, shipped_map, shipped_server_options, site_config
from tests.pg_cluster import start_cluster
from tests.tools import curl, sleep

pytestmark = [pytest.mark.client, pytest.mark.postgresql, pytest.mark.slow]
ok = pytest_twisted.ensureDeferred

SCENARIO_TIMEOUT = 240.0
PARSEC = str(Path(sys.executable).parent / "parsec")


@pytest.fixture
def client_venv() -> Path:
    venv = find_client_venv()
    if venv is None:
        message = "parsec-cloud 2.10.0 client venv not found (tests/interop/install-client-venv.sh)"
        if truthy(os.environ.get(ENV_REQUIRED)):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return venv


@pytest.fixture
def database(tmp_path: Path) -> Any:
    cluster = start_cluster(tmp_path / "pg")
    try:
        migrated = subprocess.run(
            [PARSEC, "backend", "migrate", "--db", cluster.dsn], capture_output=True, text=True, timeout=120
        )
        assert migrated.returncode == 0, migrated.stderr
        yield cluster.dsn
    finally:
        cluster.destroy()


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def websocket_devices(output: str) -> set[str]:
    return {
        line["device_id"]
        for line in json_lines(output)
        if line.get("namespace") == "parsec.access" and line.get("path") == "/ws" and line["device_id"] != "-"
    }


@ok
async def test_real_clients_through_nginx_two_instances(daemons, tmp_path: Path, database: str, client_venv: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    port_a, port_b = free_port(), free_port()
    instances, metrics = [free_port(), free_port()], [free_port(), free_port()]
    common = [
        "--db", database, "--blockstore", "POSTGRESQL", "--administration-token", "s3cr3t",
        "--email-host", "MOCKED", "--backend-addr", f"parsec://127.0.0.1:{port_a}",
        "--trusted-proxy", "127.0.0.1", "--log-level", "INFO", "--log-format", "JSON",
    ]  # fmt: skip
    servers = [
        daemons.twistd(*common, "--port", str(port), "--metrics-listen", f"tcp:{metric}:interface=127.0.0.1")
        for port, metric in zip(instances, metrics, strict=True)
    ]
    for server, port in zip(servers, instances, strict=True):
        await server.wait_ready(f"http://127.0.0.1:{port}")

    options = shipped_server_options()
    one, two = (f"127.0.0.1:{port}" for port in instances)
    http = (
        f"{shipped_map()}\n"
        f"upstream parsec_a {{\n    server {one} {options};\n    server {two} backup;\n}}\n"
        f"upstream parsec_b {{\n    server {two} {options};\n    server {one} backup;\n}}\n"
        f"{site_config(port_a, tls, 'parsec_a')}\n{site_config(port_b, tls, 'parsec_b')}\n"
    )
    nginx = Nginx(tmp_path / "nginx", http, [port_a, port_b])
    nginx.start()
    registry = ProcessRegistry()
    try:
        home = ClientHome(tmp_path / "clients", client_venv, registry)
        workdir = tmp_path / "scenario"
        workdir.mkdir()
        result_path = tmp_path / "result.json"
        output = tmp_path / "client.log"
        with open(output, "wb") as log:
            client = popen(
                [
                    home.python, str(SCRIPTS_DIR / "proxy_scenario.py"),
                    "--addr", f"parsec://127.0.0.1:{port_a}", "--addr-b", f"parsec://127.0.0.1:{port_b}",
                    "--org", "ProxiedOrg", "--workdir", str(workdir), "--result", str(result_path),
                ],  # fmt: skip
                env={**home.env, "SSL_CAFILE": str(tls.ca)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=home.root,
            )
        registry.add(client)

        async def wait_for(predicate: Any, what: str) -> None:
            deadline = reactor.seconds() + SCENARIO_TIMEOUT
            while not predicate():
                assert reactor.seconds() < deadline, f"{what}: timeout\n{output.read_text()}"
                await sleep(0.1)

        await wait_for(lambda: (workdir / "ready-for-stop").exists() or client.poll() is not None, "first half")
        assert client.poll() is None, output.read_text()
        errors_before_stop = nginx.error_lines()
        assert await servers[0].stop() == 0  # SIGTERM
        (workdir / "stopped").write_text("1")
        await wait_for(lambda: client.poll() is not None, "second half")
        result = json.loads(result_path.read_text())
        assert result["ok"], f"{result.get('error')}\n{result.get('traceback')}\n{output.read_text()}"

        scraped = await curl(f"http://127.0.0.1:{metrics[1]}/metrics")
    finally:
        registry.stop_all()
        nginx.stop()

    # Each change crossed instances, and was read on the other side.
    assert (result["bob_read_first"], result["bob_read_second"]) == (True, True)
    assert (result["bob_read_third"], result["alice_read_fourth"]) == (True, True)
    # Alice's core was cut off by the stop and came back by itself; bob's never noticed.
    assert "LOST" in result["alice_statuses"] and result["alice_statuses"][-1] == "READY", result
    assert not {"REFUSED", "CRASHED"} & set(result["alice_statuses"]), result
    assert result["bob_statuses"] == [], result

    # Who was served where (access logs, behind the trusted proxy).
    first, second = (server.output() for server in servers)
    alice, bob = result["alice_device"], result["bob_device"]
    assert websocket_devices(first) == {alice}
    assert websocket_devices(second) == {alice, bob}  # alice: after the stop
    for output_text in (first, second):
        assert [line for line in json_lines(output_text) if line["level"] not in ("debug", "info")] == []
    # Instance 2 heard instance 1's events through PostgreSQL and delivered them to bob.
    assert scraped.status == 200
    assert 'parsec_events_delivered_total{event="realm.vlobs_updated"}' in scraped.body

    # nginx: nothing but the stopped instance refusing connections, after the stop.
    assert errors_before_stop == []
    unexpected = [
        line
        for line in nginx.error_lines()
        if "connect() failed (111: Connection refused) while connecting to upstream" not in line
        or f'upstream: "http://{one}/' not in line
    ]
    assert unexpected == []
