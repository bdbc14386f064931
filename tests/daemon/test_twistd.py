"""The real `twistd parsec` process: start, serve, SIGTERM (exit 0, websockets closed with 1001).

Runs on every storage (`server_storage`): `--dev` plus the storage's `--db`/`--blockstore`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests import httpclient
from tests.support import free_port
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred
BIN = Path(sys.executable).parent


async def wait_for(predicate, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("condition not met in time")


def accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Until the server answers (the port is bound before the storage is started: 503 until then)."""
    for _ in range(int(timeout / 0.05)):
        assert proc.poll() is None, proc.stdout.read().decode()
        if accepting(port) and (await httpclient.request(port, "GET", "/")).status != 503:
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("server not ready in time")


@pytest.fixture
def twistd(tmp_path, server_storage):
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "parsec", *args, *server_storage.twistd_args()],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


@ok
async def test_serve_and_sigterm(twistd):
    port = free_port()
    proc = twistd("--dev", "--port", str(port), "--host", "127.0.0.1")
    await wait_ready(port, proc)

    rep = await httpclient.request(port, "GET", "/")
    # --dev implies --debug: the verbose server header.
    assert rep.status == 200 and rep.headers["server"].startswith("parsec/")
    rep = await httpclient.admin(port, "POST", "/administration/organizations", {"organization_id": "CoolOrg"})
    assert rep.status == 200
    client = await WsClient.connect(port)
    assert (await client.handshake_anonymous_v1("CoolOrg"))["result"] == "ok"
    assert await client.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}

    proc.send_signal(signal.SIGTERM)
    code, _ = await client.wait_closed()
    assert code == 1001
    await wait_for(lambda: proc.poll() is not None)
    output = proc.stdout.read().decode()
    assert proc.returncode == 0, output
    assert "Starting Parsec Backend on 127.0.0.1:" in output
    assert not accepting(port)


@ok
async def test_busy_port_fails_startup(twistd):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = twistd("--dev", "--port", str(port), "--host", "127.0.0.1")
        await wait_for(lambda: proc.poll() is not None)
    assert proc.returncode == 1
