"""Behind Debian's nginx, configured with etc/nginx/parsec.conf (tests/ops/nginx.py).

* websockets close cleanly through nginx: a client that disconnects, a connection drained at
  SIGTERM while its client waits for an event, and a pooled one its client does not read
  (what Parsec 2.x clients do) leave nothing in nginx's error log (a TCP reset from the server
  would be `recv() failed (104: Connection reset by peer) while proxying upgraded
  connection`), and the SIGTERM does not wait for the unread ones. The access log names the
  client behind nginx and says who closed each websocket, with which code.

The end-to-end test with the real client, two instances and PostgreSQL is in
tests/ops/test_nginx_client.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest_twisted
from twisted.internet import ssl

from tests.ops.conftest import MOCKED_ARGS, free_port
from tests.ops.nginx import Nginx, TlsFiles, make_tls_files, shipped_map, shipped_server_options, site_config
from tests.orgs import Org, bootstrap_organization
from tests.tools import curl
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred


def nginx_in_front(directory: Path, tls: TlsFiles, instances: list[int]) -> tuple[Nginx, int]:
    """nginx on a free port, the shipped site in front of the `instances` (ports)."""
    port = free_port()
    options = shipped_server_options()
    servers = "".join(f"    server 127.0.0.1:{instance} {options};\n" for instance in instances)
    http = f"{shipped_map()}\nupstream parsec {{\n{servers}}}\n{site_config(port, tls, 'parsec')}\n"
    nginx = Nginx(directory, http, [port])
    nginx.start()
    return nginx, port


def client_options(tls: TlsFiles) -> ssl.IOpenSSLClientConnectionCreator:
    return ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(tls.ca.read_bytes()))


async def connect_through(port: int, tls: TlsFiles, org: Org, device: str) -> WsClient:
    client = await WsClient.connect(port, host="localhost", tls_options=client_options(tls))
    local = org.devices[device]
    result = await client.handshake_authenticated(
        org.organization_id, local.device_id, local.signing_key, org.root_verify_key
    )
    assert result == {"handshake": "result", "result": "ok"}, result
    return client


@ok
async def test_websockets_close_cleanly_behind_nginx(daemons, tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    port = free_port()
    server = daemons.twistd(
        *MOCKED_ARGS, "--port", str(port), "--trusted-proxy", "127.0.0.1", "--log-level", "INFO", "--log-format", "JSON",
        "--forward-proto-enforce-https", "X-Forwarded-Proto:https",
    )  # fmt: skip
    await server.wait_ready(f"http://127.0.0.1:{port}")
    nginx, nginx_port = nginx_in_front(tmp_path / "nginx", tls, [port])
    try:
        org = await bootstrap_organization(SimpleNamespace(port=port))
        # nginx appends the address it sees (127.0.0.1, a trusted proxy here) to the header.
        health = await curl(
            f"https://localhost:{nginx_port}/health", "--cacert", str(tls.ca), "-H", "X-Forwarded-For: 192.0.2.7"
        )
        assert health.status == 200
        # nginx tells the server the client used https (a plain http request would be redirected).
        landing = await curl(f"https://localhost:{nginx_port}/", "--cacert", str(tls.ca))
        assert landing.status == 200
        assert (await curl(f"http://127.0.0.1:{port}/", "-H", "X-Forwarded-Proto: http")).status == 301

        leaving = await connect_through(nginx_port, tls, org, "alice@dev1")
        assert await leaving.cmd("ping", ping="bye") == {"status": "ok", "pong": "bye"}
        await leaving.close()  # a client that just disconnects

        listening = await connect_through(nginx_port, tls, org, "alice@dev1")
        assert await listening.cmd("events_subscribe") == {"status": "ok"}
        listening.send({"cmd": "events_listen", "wait": True})
        pooled = await connect_through(nginx_port, tls, org, "alice@dev1")
        assert await pooled.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}
        pooled.proto.transport.pauseProducing()  # kept in a pool, never read

        assert await server.stop() == 0  # SIGTERM: drained
        assert (await listening.wait_closed())[0] == 1001
        pooled.proto.transport.resumeProducing()
        assert (await pooled.wait_closed())[0] == 1001
    finally:
        nginx.stop()
    assert nginx.error_lines() == []
    logged = json_lines(server.output())
    assert [line for line in logged if line["level"] not in ("debug", "info")] == []
    access = [line for line in logged if line["namespace"] == "parsec.access"]
    (health_line,) = [line for line in access if line["path"] == "/health" and line["client"] == "192.0.2.7"]
    assert health_line["status"] == 200
    websockets = [
        (line["device_id"], line["close_code"], line["closed_by"]) for line in access if line["path"] == "/ws"
    ]
    assert sorted(websockets) == [("alice@dev1", 1000, "client"), ("alice@dev1", 1001, "server"), ("alice@dev1", 1001, "server")]


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
