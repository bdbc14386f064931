"""Where the server listens, and what it tells systemd, with the real tools.

* repeatable `--listen` (and PARSEC_LISTEN) with Twisted endpoint strings: TCP and a unix
  socket at once (curl --unix-socket), TLS from --ssl-* on each of them;
* socket activation: Debian's `systemd-socket-activate` binds the socket and starts our twistd
  on the first connection, which adopts it (`systemd:domain=INET:index=0` or `name=`);
* `Type=notify`: the test plays systemd's notify socket and receives READY=1 once the server
  serves, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM;
* mistakes in `--listen` are one line naming the option.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor

from tests.ops.conftest import DEADLINE, MOCKED_ARGS, PARSEC, TWISTD, clean_environ, free_port
from tests.tlsutil import TestCA
from tests.tools import curl, ready_becomes, sleep

ok = pytest_twisted.ensureDeferred

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


@pytest.mark.parametrize("front_end", ["twistd", "parsec"])
@ok
async def test_several_listen_endpoints(daemons, tmp_path: Path, front_end: str) -> None:
    port = free_port()
    sock = tmp_path / "parsec.sock"
    start = daemons.twistd if front_end == "twistd" else daemons.parsec
    daemon = start(*MOCKED_ARGS, "--listen", f"tcp:{port}:interface=127.0.0.1", "--listen", f"unix:{sock}")
    await ready_becomes(f"http://127.0.0.1:{port}", 200)
    assert (await curl("http://localhost/ready", "--unix-socket", str(sock))).status == 200
    assert "Starting Parsec Backend on tcp:" in daemon.output()
    assert await daemon.stop() == 0
    assert not sock.exists() or (await curl("http://localhost/health", "--unix-socket", str(sock))).status == 0


@ok
async def test_listen_from_environment_with_tls(daemons, tmp_path: Path) -> None:
    chain = TestCA(tmp_path / "tls").issue("env")
    port = free_port()
    sock = tmp_path / "tls.sock"
    daemon = daemons.twistd(
        *MOCKED_ARGS,
        env={
            "PARSEC_LISTEN": f"tcp:{port}:interface=127.0.0.1 unix:{sock}",
            "PARSEC_SSL_CERTFILE": str(chain.fullchain),
            "PARSEC_SSL_KEYFILE": str(chain.key),
        },
    )
    tls = ["--cacert", str(chain.root), "--resolve", f"localhost:{port}:127.0.0.1"]
    await ready_becomes(f"https://localhost:{port}", 200, *tls)
    over_unix = await curl("https://localhost/ready", "--unix-socket", str(sock), "--cacert", str(chain.root))
    assert (over_unix.status, over_unix.body) == (200, "ready\n")
    assert await daemon.stop() == 0


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=clean_environ(env)
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--listen", "http:80"],
            "Error: Invalid value for '--listen': unsupported endpoint type 'http' "
            "(use tcp:, tcp6:, ssl:, unix:, systemd:)",
        ),
        (
            ["--listen", "tcp:6777", "--port", "7000"],
            "Error: Option '--listen' replaces '--port' (both on the command line): give the "
            "address in the endpoint instead (e.g. --listen tcp:6777:interface=127.0.0.1)",
        ),
        (
            ["--listen", "ssl:443"],
            "Error: Invalid value for '--listen': an ssl: endpoint needs privateKey=<file> (and "
            "certKey=<file> with the certificate chain, unless the key file holds it too)",
        ),
        (
            ["--listen", "tcp:6777:bogus=1"],
            "Error: Invalid value for '--listen': unknown argument 'bogus' for a tcp: endpoint "
            "(allowed: backlog, interface, port)",
        ),
        (
            ["--listen", "systemd:domain=INET:index=0"],
            "Error: Invalid value for '--listen' (systemd:domain=INET:index=0): systemd passed no "
            "socket #0 (LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES; systemd-socket-activate sets the "
            "names only with --fdname)",
        ),
    ],
)
def test_listen_mistakes(args: list[str], message: str) -> None:
    result = _run([PARSEC, "backend", "run", *MOCKED_ARGS, *args])
    assert result.returncode == 1, result
    assert result.stderr.splitlines()[-1] == message
    assert "Traceback" not in result.stderr


# ---- systemd --------------------------------------------------------------------------------


class _NotifySocket(protocol.DatagramProtocol):
    """systemd's side of sd_notify: every datagram, as {KEY: value}."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        lines = datagram.decode().split("\n")
        self.messages.append(dict(line.split("=", 1) for line in lines if line))

    async def wait_for(self, key: str, count: int = 1) -> list[dict[str, str]]:
        deadline = reactor.seconds() + DEADLINE
        while sum(1 for message in self.messages if key in message) < count:
            assert reactor.seconds() < deadline, f"no {key} from the server: {self.messages}"
            await sleep(0.05)
        return self.messages


@pytest.fixture
def notify_socket(tmp_path: Path, request: pytest.FixtureRequest):
    """(NOTIFY_SOCKET value, receiver): a path, or an abstract socket (`@name`)."""
    listener = _NotifySocket()
    if getattr(request, "param", "path") == "abstract":
        name = f"parsec-test-{uuid.uuid4().hex}"
        port = reactor.listenUNIXDatagram("\0" + name, listener)
        value = "@" + name
    else:
        path = tmp_path / "notify.sock"
        port = reactor.listenUNIXDatagram(str(path), listener)
        value = str(path)
    yield value, listener
    port.stopListening()


@pytest.mark.parametrize("notify_socket", ["path", "abstract"], indirect=True)
@ok
async def test_sd_notify_ready_reloading_stopping(daemons, server_storage, notify_socket) -> None:
    address, listener = notify_socket
    port = free_port()
    daemon = daemons.twistd(
        "--dev", "--port", str(port), *server_storage.twistd_args(), env={"NOTIFY_SOCKET": address}
    )
    await listener.wait_for("READY")
    ready = listener.messages[0]
    assert ready["READY"] == "1" and ready["STATUS"] == f"Serving on 127.0.0.1:{port}"
    # READY=1 means serving: no poll needed.
    assert (await curl(f"http://127.0.0.1:{port}/ready")).status == 200

    daemon.send(signal.SIGHUP)
    await listener.wait_for("READY", count=2)
    reloading = next(message for message in listener.messages if "RELOADING" in message)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert [list(m) for m in listener.messages if "RELOADING" in m or "READY" in m][1:] == [
        ["RELOADING", "MONOTONIC_USEC", "STATUS"],
        ["READY", "STATUS"],
    ]

    daemon.send(signal.SIGTERM)
    await listener.wait_for("STOPPING")
    assert await daemon.wait_exit() == 0


@pytest.mark.skipif(not os.path.exists(SOCKET_ACTIVATE), reason="needs systemd-socket-activate (Debian: systemd)")
@pytest.mark.parametrize("selector", ["index=0", "name=parsec"])
@ok
async def test_socket_activation(daemons, server_storage, selector: str) -> None:
    port = free_port()
    daemon = daemons.spawn(
        [
            SOCKET_ACTIVATE,
            "--listen", f"127.0.0.1:{port}",
            "--fdname=parsec",
            TWISTD, "-n", "--pidfile=", "parsec",
            "--dev", *server_storage.twistd_args(), "-l", "INFO",
            "--listen", f"systemd:domain=INET:{selector}",
        ]
    )
    await daemon.wait_output(f"Listening on 127.0.0.1:{port}")
    # The first connection starts the server, which then accepts it on the socket it adopted.
    first = await curl(f"http://127.0.0.1:{port}/health")
    assert (first.status, first.body) == (200, "ok\n"), (first, daemon.output())
    await ready_becomes(f"http://127.0.0.1:{port}", 200)
    assert f"Listening on systemd:domain=INET:{selector} (plain)" in daemon.output()
    # systemd-socket-activate exec'd twistd: the same process stops cleanly.
    assert await daemon.stop() == 0
    assert "Traceback" not in daemon.output()
